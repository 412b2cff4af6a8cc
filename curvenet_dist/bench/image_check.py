"""Image check throughput: images per second of `python -m data_prep check` on generated small PNG and JPEG files.

The files are scikit-learn's digits as 28x28 images (the size of the issue's image folder), half PNG and half
JPEG, a few of them corrupt so the ffmpeg fallback is part of the figure. Each round checks the whole dataset from
scratch (`restart`); the figure is the median over the rounds. `--ffmpeg-sample N` also times the ffmpeg-only
decode on N of the images, the check's former speed.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from curvenet_dist.data.sample_table import PreparedDataset, SampleTable
from data_prep.image_check import _input, _run_ffmpeg, check_dataset, find_ffmpeg

SIZE = 28


def write_images(folder: Path, count: int, corrupt: int) -> PreparedDataset:
    """`count` digit images (PNG and JPEG alternately), the last `corrupt` of them truncated, as a prepared dataset."""
    digits = load_digits()
    (folder / "images").mkdir(parents=True)
    paths = []
    for i in range(count):
        pixels = (digits.images[i % len(digits.images)] * 15).astype(np.uint8)
        image = Image.fromarray(pixels, "L").resize((SIZE, SIZE), Image.BILINEAR)
        path = f"images/{i:06d}.{'png' if i % 2 == 0 else 'jpg'}"
        image.save(folder / path)
        if i >= count - corrupt:
            data = (folder / path).read_bytes()
            (folder / path).write_bytes(data[: len(data) // 2])
        paths.append(path)
    labels = digits.target[np.arange(count) % len(digits.images)]
    table = SampleTable(folder, paths, labels, labels, 10, origin=str(folder / "train.csv"))
    dataset = PreparedDataset(folder, [str(c) for c in range(10)], {"train": table})
    dataset.write()
    return dataset


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m curvenet_dist.bench image_check", description=__doc__)
    parser.add_argument("--images", type=int, default=5000, help="images to generate")
    parser.add_argument("--corrupt", type=int, default=10, help="how many of them are truncated")
    parser.add_argument("--workers", type=int, default=2, help="decoding threads")
    parser.add_argument("--rounds", type=int, default=5, help="timed checks of the whole dataset")
    parser.add_argument("--ffmpeg-sample", type=int, default=50, help="images timed with ffmpeg alone (0: skip)")
    args = parser.parse_args(argv)
    for name in ("images", "workers", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.corrupt <= args.images:
        parser.error(f"--corrupt must be in [0, --images={args.images}]")
    return args


def main(argv: list[str]) -> dict:
    args = parse_args(argv)
    result: dict = {"images": args.images, "corrupt": args.corrupt, "size": SIZE, "workers": args.workers,
                    "rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="curvenet-check-bench-") as folder:
        dataset = write_images(Path(folder), args.images, args.corrupt)
        rates = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            checked = check_dataset(Path(folder), workers=args.workers, restart=True)
            rates.append(args.images / (time.perf_counter() - start))
            if len(checked.quarantined) != args.corrupt:
                raise RuntimeError(f"the check quarantined {len(checked.quarantined)} images, not {args.corrupt}")
            dataset.write()  # the check rewrote train.csv without the corrupt images: put them back
        result["images_per_s"] = round(statistics.median(rates), 1)
        result["images_per_s_rounds"] = [round(rate, 1) for rate in rates]
        if args.ffmpeg_sample:
            ffmpeg_exe = find_ffmpeg()
            sample = [Path(folder) / path for path in dataset.splits["train"].paths[: args.ffmpeg_sample]]
            start = time.perf_counter()
            for image in sample:
                _run_ffmpeg(_input(image).output("-", format="null"), ffmpeg_exe, image)
            result["ffmpeg_only_images_per_s_one_process"] = round(len(sample) / (time.perf_counter() - start), 1)
    return result
