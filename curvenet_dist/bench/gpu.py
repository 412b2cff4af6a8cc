"""The `gpu` benchmark: the GPU path in one command, on one GPU, in a few minutes.

1. Decode: JPEG files written from the quickstart's training images (the embedded digits unless an override sets
   data.source), upscaled with Pillow to 256-500 px a side, read with ImageNet-style training transforms at
   224x224 by DALI decoding on the GPU (`mixed`), DALI's CPU pipeline and the torch DataLoader (bench/loaders.py's
   timing): images/s of each.
2. Step: ResNet-50 of configs/clothing1m_r50.yaml (bf16 autocast, channels_last) at 224x224, batch and meta batch
   128: a plain step and an allocate step at every skip_layers, built and timed by bench/slmo.py (rotating rounds,
   medians, torch's FLOP counter); images/s, time and FLOP ratios, and the peak memory of each step beside the
   public reference, NVIDIA's ResNet-50 example at 2,470 images/s on one A100 with AMP.
3. Stages: the quickstart's probe and CurveNet allocate under torchrun on the device (`--nproc` processes; NCCL
   between them on GPUs, gloo on the CPU; one process forms no process group), then a check that the curve store
   holds every probe epoch once: each column complete and every loss finite.

`--device cpu --tiny` runs the same code on the CPU at a size an idle 2-core machine runs in under a minute: small
JPEGs and batches, DALI's CPU pipeline and the torch DataLoader, the quickstart's CIFAR ResNet-8 for the step, and
stages of 3 probe and 2 allocate epochs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
from PIL import Image

from curvenet_dist.bench.loaders import MEAN, STD, images_per_second
from curvenet_dist.bench.slmo import CLOTHING1M, QUICKSTART, Step, measure_step_variants
from curvenet_dist.config import ConfigError, load_config
from curvenet_dist.curves.store import CurveStore, describe_damage
from curvenet_dist.data.dali_loader import build_dali_loader
from curvenet_dist.data.datasets import load_source
from curvenet_dist.data.sample_table import DataError, SampleTable
from curvenet_dist.data.torch_loader import build_torch_loader
from curvenet_dist.engine.launch import USER_ERROR_EXIT_CODE, error_line, torchrun_stage
from curvenet_dist.engine.probe import CURVE_STORE

# NVIDIA DeepLearningExamples, PyTorch ResNet-50 v1.5, one A100 80GB, mixed precision, batch 256, DALI.
REFERENCE_A100_AMP_IMAGES_PER_S = 2470


@dataclass(frozen=True)
class Size:
    jpegs: int
    jpeg_sides: tuple[int, int]
    """Each JPEG's width and height are drawn from this range (inclusive)."""
    loader_batch_size: int
    loader_image_size: int
    step_config: Path
    step_overrides: list[str]
    rounds: int
    warmup: int
    stage_overrides: list[str] = field(default_factory=list)


FULL = Size(jpegs=4096, jpeg_sides=(256, 500), loader_batch_size=128, loader_image_size=224,
            step_config=CLOTHING1M, step_overrides=["data.batch_size=128", "meta.batch_size=128"], rounds=20,
            warmup=3)
TINY = Size(jpegs=64, jpeg_sides=(32, 64), loader_batch_size=16, loader_image_size=32, step_config=QUICKSTART,
            step_overrides=[], rounds=2, warmup=1,
            stage_overrides=["data.image_size=8", "model.width=8", "probe.epochs=3", "probe.cycle_epochs=1",
                             "allocate.epochs=2", "allocate.milestones=[1]", "curvenet.skip_epochs=0",
                             "meta.batch_size=20"])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m curvenet_dist.bench gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="small images, batches and stages (CPU tests)")
    parser.add_argument("--nproc", type=int, default=1, help="torchrun processes of each stage, one per GPU")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="DALI threads and torch DataLoader workers")
    parser.add_argument("overrides", nargs="*",
                        help="config overrides for the quickstart stages and the images the JPEGs are written from")
    arguments = parser.parse_args(argv)
    for name in ("nproc", "threads"):
        if getattr(arguments, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return arguments


def write_upscaled_jpegs(source: SampleTable, folder: Path, count: int, sides: tuple[int, int],
                         seed: int = 0) -> SampleTable:
    """`count` RGB JPEG files of `source`'s images in turn, each upscaled (bicubic) to a width and height drawn
    from `sides`, and a table over them with the source's labels."""
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    for i in range(count):
        sample = i % len(source)
        width, height = rng.integers(sides[0], sides[1] + 1, size=2)
        with Image.open(source.image_path(sample)) as image:
            upscaled = image.convert("RGB").resize((int(width), int(height)), Image.BICUBIC)
        name = f"image{i:05d}.jpg"
        upscaled.save(folder / name, quality=90)
        paths.append(name)
        labels.append(source.labels[sample])
    return SampleTable(folder, paths, labels, labels, source.num_classes, origin=str(folder))


def decode_rates(table: SampleTable, size: Size, device: torch.device, threads: int) -> dict:
    """Images/s of each loader on `table` at the size's batch and crop: DALI `mixed` (on CUDA only), DALI's CPU
    pipeline and the torch DataLoader; two timed epochs after a warm-up one."""
    common = dict(train=True, batch_size=size.loader_batch_size, image_size=size.loader_image_size, mean=MEAN,
                  std=STD, augment="resized_crop", rank=0, world_size=1, seed=0, num_threads=threads)
    # The DataLoader forks its worker processes at each pass: it goes first, before any GPU work in this process.
    loaders = {"torch_images_per_s": (build_torch_loader, None), "dali_cpu_images_per_s": (build_dali_loader, None)}
    rates: dict = {"dali_mixed_images_per_s": None}
    if device.type == "cuda":
        loaders["dali_mixed_images_per_s"] = (build_dali_loader, device.index)
    for key, (build, device_id) in loaders.items():
        loader = build(table, device_id=device_id, **common)
        rates[key] = round(images_per_second(loader, epochs=2, synchronize=device_id is not None), 1)
    jpeg_bytes = [(table.image_root / path).stat().st_size for path in table.paths]
    return {"jpegs": len(table), "jpeg_sides": list(size.jpeg_sides),
            "jpeg_mean_kb": round(float(np.mean(jpeg_bytes)) / 1e3, 1), "threads": threads,
            "batch_size": size.loader_batch_size, "image_size": size.loader_image_size, **rates}


def peak_memory_gb(step: Step, device: torch.device) -> dict[str, float] | None:
    """torch.cuda.max_memory_allocated during one run of each variant (the model, its optimizer state and the
    batches included), in GiB; None on the CPU."""
    if device.type != "cuda":
        return None
    peaks = {}
    for name, run in step.variants.items():
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        peaks[name] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return peaks


def step_rates(size: Size, device: torch.device) -> dict:
    """bench/slmo.py's plain and allocate steps for the size's model, on one device without DDP, as images/s."""
    config = load_config(str(size.step_config), ["method=curvenet", *size.step_overrides])
    step = Step(config, device, world_size=1)
    measured = measure_step_variants(step, size.rounds, size.warmup)
    batch, plain_s = measured["batch_size"], measured["plain_step_s"]["median"]
    plain_images_per_s = batch / plain_s
    return {"model": config.model.name, "default_skip_layers": config.curvenet.skip_layers, "rounds": size.rounds,
            "plain_images_per_s": round(plain_images_per_s, 1),
            "allocate_images_per_s": {skip: round(batch / seconds["median"], 1)
                                      for skip, seconds in measured["allocate_step_s"].items()},
            "peak_memory_gb": peak_memory_gb(step, device),
            "reference_a100_amp_images_per_s": REFERENCE_A100_AMP_IMAGES_PER_S,
            "plain_vs_reference": round(plain_images_per_s / REFERENCE_A100_AMP_IMAGES_PER_S, 3), **measured}


def store_check(path: Path, epochs: int) -> dict:
    """Whether the curve store at `path` holds each of the probe's `epochs` once: a column per epoch, each marked
    complete, every chunk present, passing its checksum and finite."""
    store = CurveStore.open(path, mode="r")
    complete = store.complete_epochs().tolist()
    damage = store.damage(complete)
    return {"probe_epochs": epochs, "store_epochs": store.num_epochs, "complete_epochs": len(complete),
            "damage": describe_damage(damage) if damage else None,
            "every_epoch_once": store.num_epochs == epochs == len(complete) and not damage}


def run_stages(root: Path, device: torch.device, nproc: int, overrides: list[str]) -> dict:
    """The quickstart's probe and CurveNet allocate under torchrun, each with `overrides`, then the store check."""
    base = ["--config", str(QUICKSTART), f"run.device={device.type}", "tracking.enabled=false", *overrides]
    probe_dir, allocate_dir = root / "probe", root / "curvenet"
    seconds = {}
    for stage, arguments in (("probe", [f"run.dir={probe_dir}"]),
                             ("allocate", [f"allocate.probe_dir={probe_dir}", f"run.dir={allocate_dir}",
                                           "method=curvenet"])):
        start = time.perf_counter()
        torchrun_stage(nproc, stage, [*base, *arguments], quiet=True)
        seconds[stage] = round(time.perf_counter() - start, 1)
    probe = json.loads((probe_dir / "metrics.json").read_text())
    allocate = json.loads((allocate_dir / "metrics.json").read_text())
    epochs = load_config(str(QUICKSTART), overrides).probe.epochs
    return {"nproc": nproc, "process_group": ("nccl" if device.type == "cuda" else "gloo") if nproc > 1 else None,
            "probe_s": seconds["probe"], "allocate_s": seconds["allocate"], "probe_test_acc": probe["test_acc"],
            "allocate_test_acc": allocate["test_acc"], "noise_auroc": allocate.get("noise_auroc"),
            "store": store_check(probe_dir / CURVE_STORE, epochs)}


def stop(line: str) -> NoReturn:
    print(line, file=sys.stderr, flush=True)
    sys.exit(USER_ERROR_EXIT_CODE)


def main(argv: list[str]) -> dict:
    start = time.perf_counter()
    arguments = parse_args(argv)
    if arguments.device == "cuda" and not torch.cuda.is_available():
        stop("error: bench gpu: no CUDA device is visible (torch.cuda.is_available() is False); run it on a GPU "
             "machine, or with --device cpu --tiny to run the same code on the CPU")
    size = TINY if arguments.tiny else FULL
    device = torch.device("cuda", 0) if arguments.device == "cuda" else torch.device("cpu")
    stage_overrides = [*size.stage_overrides, *arguments.overrides]
    try:
        source = load_source(load_config(str(QUICKSTART), stage_overrides).data).splits["train"]
    except (ConfigError, DataError) as error:
        stop(error_line(error))
    with tempfile.TemporaryDirectory(prefix="curvenet-gpu-bench-") as folder:
        root = Path(folder)
        (root / "jpegs").mkdir()
        table = write_upscaled_jpegs(source, root / "jpegs", size.jpegs, size.jpeg_sides)
        decode = decode_rates(table, size, device, arguments.threads)
        figures = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   "tiny": arguments.tiny, "torch": torch.__version__, "decode": decode,
                   "step": step_rates(size, device),
                   "stages": run_stages(root / "runs", device, arguments.nproc, stage_overrides)}
    figures["wall_s"] = round(time.perf_counter() - start, 1)
    store = figures["stages"]["store"]
    if not store["every_epoch_once"]:
        print(json.dumps(figures), flush=True)
        sys.exit(f"error: bench gpu: the probe's curve store does not hold each of its {store['probe_epochs']} "
                 f"epochs once: {store['store_epochs']} columns, {store['complete_epochs']} complete"
                 + (f", {store['damage']}" if store["damage"] else ""))
    return figures
