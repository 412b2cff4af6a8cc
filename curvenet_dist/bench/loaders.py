"""Loader throughput: images per second of the DALI and torch loaders on the same generated JPEG files.

Both loaders get the same images, thread count, batch size and ImageNet-style training transforms
(random resized crop to `image_size` + flip + normalise). One warm-up epoch, then `epochs` timed epochs.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from curvenet_dist.data.dali_loader import build_dali_loader
from curvenet_dist.data.sample_table import SampleTable
from curvenet_dist.data.torch_loader import build_torch_loader

NUM_CLASSES = 10
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def write_jpegs(folder: Path, count: int, width: int = 320, height: int = 240, seed: int = 0) -> SampleTable:
    """`count` photo-like JPEG files (smooth colour fields plus grain) and a table over them."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.float32)
        grain = rng.normal(0, 6, smooth.shape)
        name = f"image{i:05d}.jpg"
        Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(folder / name, quality=90)
        paths.append(name)
    labels = rng.integers(0, NUM_CLASSES, count)
    return SampleTable(folder, paths, labels, labels, NUM_CLASSES, origin=str(folder))


def images_per_second(loader, epochs: int, synchronize: bool) -> float:
    """Throughput over `epochs` epochs after one untimed warm-up epoch."""
    loader.set_epoch(0)
    for _ in loader:
        pass
    images = 0
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        loader.set_epoch(epoch)
        for batch_images, _, _ in loader:
            images += len(batch_images)
    if synchronize:
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m curvenet_dist.bench loaders", description=__doc__)
    parser.add_argument("--images", type=int, default=512, help="JPEG files to generate (about 320x240)")
    parser.add_argument("--threads", type=int, default=2, help="DALI threads and torch DataLoader workers")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args(argv)
    for name in ("images", "threads", "epochs", "batch_size", "image_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str]) -> dict:
    args = parse_args(argv)
    has_gpu = torch.cuda.is_available()
    result: dict = {"images": args.images, "threads": args.threads, "image_size": args.image_size,
                    "batch_size": args.batch_size, "epochs": args.epochs,
                    "device": torch.cuda.get_device_name(0) if has_gpu else "cpu"}
    with tempfile.TemporaryDirectory(prefix="curvenet-loader-bench-") as folder:
        table = write_jpegs(Path(folder), args.images)
        common = dict(train=True, batch_size=args.batch_size, image_size=args.image_size, mean=MEAN, std=STD,
                      augment="resized_crop", rank=0, world_size=1, seed=0, num_threads=args.threads)
        runs = {"dali_images_per_s": (build_dali_loader, None), "torch_images_per_s": (build_torch_loader, None)}
        if has_gpu:
            runs["dali_mixed_images_per_s"] = (build_dali_loader, 0)
        for key, (build, device_id) in runs.items():
            loader = build(table, device_id=device_id, **common)
            result[key] = round(images_per_second(loader, args.epochs, synchronize=device_id is not None), 1)
    return result
