"""`python -m curvenet_dist.bench own_data` on a tiny digits set: the image set is written as a user's list files
(given and true labels), prepared by data_prep, and trained with no synthetic bias on top."""
from __future__ import annotations

import argparse
import json

import numpy as np

from curvenet_dist.bench.__main__ import main as bench
from curvenet_dist.bench.own_data import prepare_image_set
from curvenet_dist.curves.store import CurveStore
from curvenet_dist.data.sample_table import PreparedDataset

TINY = ["--seeds", "0", "--methods", "curvenet", "--nproc", "1", "--imbalance-factor", "10", "--noise-rate",
        "0.3", "data.image_size=8", "model.width=8", "probe.epochs=3", "probe.cycle_epochs=1", "allocate.epochs=2",
        "allocate.milestones=[1]", "curvenet.skip_epochs=0", "meta.batch_size=20", "data.num_workers=0"]


def test_a_noisy_long_tailed_image_set_goes_through_data_prep_and_both_stages(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    bench(["own_data", "--run-dir", str(tmp_path), *TINY])
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])

    train_list = [line.split() for line in (tmp_path / "seed0" / "images" / "train.txt").read_text().splitlines()]
    given, true = (np.array([int(fields[i]) for fields in train_list]) for i in (1, 2))
    counts = np.bincount(true, minlength=10)
    assert round(counts[0] / counts[9]) == 10 and list(counts) == sorted(counts, reverse=True), "the long tail"
    assert 0.2 < np.mean(given != true) < 0.4, "the label noise"
    prepared = PreparedDataset.read(tmp_path / "seed0" / "images" / "prepared")
    assert prepared.splits["train"].labels.tolist() == given.tolist()
    assert len(prepared.splits["meta"]) == 100 and (prepared.splits["meta"].true_labels >= 0).all()
    # The runs train on the prepared set as it is: the same given labels, the audited truth scored.
    store = CurveStore.open(tmp_path / "seed0" / "probe" / "curves.zarr", mode="r")
    assert store.labels.tolist() == given.tolist() and store.true_labels.tolist() == true.tolist()
    metrics = json.loads((tmp_path / "seed0" / "curvenet" / "metrics.json").read_text())
    assert metrics["noise_scored_samples"] == len(given)
    assert summary["train_samples"] == [len(given)] and summary["image_set"]["noise_rate"] == 0.3
    assert summary["curvenet_noise_auroc_mean"] == metrics["noise_auroc"]
    assert 0 <= summary["detector_auroc_mean"] <= 1 and "ce_test_acc_mean" not in summary


def test_without_a_meta_list_the_prepared_set_has_no_meta_split(tmp_path):
    arguments = argparse.Namespace(source="digits", train_per_class=0, test_per_class=0, meta_per_class=0,
                                   imbalance_factor=10, noise_type="proportional", noise_rate=0.4)
    prepared = PreparedDataset.read(prepare_image_set(tmp_path / "images", arguments, seed=0))
    assert "meta" not in prepared.splits and not (tmp_path / "images" / "meta.txt").exists()
    assert len(prepared.splits["train"]) > 0 and len(prepared.splits["test"]) > 0
