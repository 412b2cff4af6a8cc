"""Data preparation: turn Clothing1M, Food-101N or a labelled image folder into a prepared dataset, and check it.

Run `python -m data_prep --help`. Each preparer writes a PreparedDataset folder (see
`curvenet_dist.data.sample_table`) plus `quarantine.csv` (samples left out, and why) and `quirks.txt`
(oddities of the input and how they were handled); `image_check` decodes every image with ffmpeg,
quarantines the bad ones and can re-encode the rest small.
"""
