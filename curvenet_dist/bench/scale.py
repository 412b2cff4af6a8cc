"""Clothing1M scale: the per-sample steps of the pipeline on a synthetic curve store and sample table of
N samples (default 1,000,000 x 60 epochs, 14 classes).

Each figure is measured in a fresh process, so a peak memory figure (`*_peak_mb`, the growth of the process's
peak RSS during the step) is that step's alone. The epoch gather and the allocate start-up run under torchrun
with `--nproc` gloo ranks, as they do in training. The load average is recorded at the start and the end: on a
shared machine it explains most of the spread between runs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CLASSES = 14
SKIP_EPOCHS = 5
META_PER_CLASS = 10
BATCH_SIZE = 32
GATHER_ROUNDS = 3
ROUNDS = 3
"""Rounds of the steps cheap enough to repeat (lowest_loss, weights); their figure is the median."""


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_data(folder: Path, samples: int, epochs: int, seed: int = 0) -> None:
    """A prepared-dataset train.csv of `samples` Clothing1M-like paths over a long-tailed label distribution,
    and a complete curve store of `epochs` loss and margin columns recorded on it, as the probe writes it."""
    from curvenet_dist.curves.store import CurveStore
    from curvenet_dist.data.sample_table import SampleTable

    rng = np.random.default_rng(seed)
    shares = 10.0 ** (-np.arange(CLASSES) / (CLASSES - 1))
    labels = rng.choice(CLASSES, size=samples, p=shares / shares.sum())
    paths = [f"images/{i % 10}/{i // 10 % 100:02d}/{i}.jpg" for i in range(samples)]
    table = SampleTable(folder, paths, labels, labels, CLASSES, origin=str(folder / "train.csv"))
    table.write_csv(folder / "train.csv")
    store = CurveStore.open_or_create(folder / "curves.zarr", fingerprint="scale-bench",
                                      dataset_fingerprint=table.fingerprint(), labels=labels, true_labels=labels,
                                      num_epochs=epochs, with_margins=True)
    difficulty = rng.gamma(2.0, 0.5, samples).astype(np.float32)
    for epoch in range(epochs):
        decay = np.float32(np.exp(-epoch / 20))
        losses = difficulty * decay + rng.exponential(0.1, samples).astype(np.float32)
        store.write_epoch(epoch, losses, lr=0.01, margins=1.0 - losses)
    CurveStore.open_or_create(folder / "gather.zarr", fingerprint="scale-bench",
                              dataset_fingerprint=table.fingerprint(), labels=labels, true_labels=labels,
                              num_epochs=GATHER_ROUNDS)


def _read_table(folder: Path):
    from curvenet_dist.data.sample_table import SampleTable

    return SampleTable.read_csv(folder / "train.csv", folder, CLASSES)


def part_features(folder: Path) -> dict:
    """The rank that builds the curve features and saves them beside the store, then a rank that finds them saved."""
    from curvenet_dist.config import CurveNetConfig
    from curvenet_dist.curves.features import curve_features
    from curvenet_dist.curves.store import CurveStore

    store = CurveStore.open(folder / "curves.zarr", mode="r")
    before = _peak_rss_mb()
    start = time.perf_counter()
    features = curve_features(store, SKIP_EPOCHS, CurveNetConfig.curve_normalization)
    seconds = time.perf_counter() - start
    peak_mb = _peak_rss_mb() - before
    start = time.perf_counter()
    saved = curve_features(store, SKIP_EPOCHS, CurveNetConfig.curve_normalization)
    saved_s = time.perf_counter() - start
    assert saved.shape == features.shape
    store.forget_features()
    return {"features_s": seconds, "features_peak_mb": peak_mb, "features_dtype": str(features.dtype),
            "features_saved_load_s": saved_s}


def part_lowest_loss(folder: Path) -> dict:
    from curvenet_dist.curves.features import lowest_loss_rows
    from curvenet_dist.curves.store import CurveStore

    store = CurveStore.open(folder / "curves.zarr", mode="r")
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        rows = lowest_loss_rows(store, META_PER_CLASS)
        times.append(time.perf_counter() - start)
    return {"lowest_loss_s": statistics.median(times), "lowest_loss_rows": len(rows)}


def part_weights(folder: Path, samples: int, epochs: int) -> dict:
    """CurveNet's weight for every sample after the freeze (the curves' values do not change the cost)."""
    import torch

    from curvenet_dist.curves.features import curve_input_length
    from curvenet_dist.engine.batched import weights_by_chunks
    from curvenet_dist.models.weighting import CurveNet

    # One thread, as setup_distributed gives each of 2 ranks on a 2-core machine.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    curves = torch.randn(samples, curve_input_length(epochs, SKIP_EPOCHS))
    labels = torch.randint(0, CLASSES, (samples,))
    net = CurveNet(curves.shape[1], CLASSES)
    before = _peak_rss_mb()
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        weights_by_chunks(net, labels, curves)
        times.append(time.perf_counter() - start)
    return {"curvenet_weights_s": statistics.median(times), "curvenet_weights_peak_mb": _peak_rss_mb() - before}


def _dali_loader(table, rank: int, world_size: int):
    # Imported by the caller before its clock starts: DALI's import (seconds, hundreds of MB) does not grow with N.
    from curvenet_dist.data.dali_loader import build_dali_loader

    return build_dali_loader(table, train=True, batch_size=BATCH_SIZE, image_size=224, mean=[0.5] * 3,
                             std=[0.5] * 3, augment="resized_crop", rank=rank, world_size=world_size, seed=0,
                             num_threads=1, device_id=None)


def part_dali_paths(folder: Path) -> dict:
    """The DALI loader of one of 8 ranks: its construction and one epoch's file list."""
    import curvenet_dist.data.dali_loader  # noqa: F401

    table = _read_table(folder)
    before = _peak_rss_mb()
    start = time.perf_counter()
    loader = _dali_loader(table, rank=0, world_size=8)
    files = loader.epoch_files()
    return {"dali_paths_s": time.perf_counter() - start, "dali_paths_peak_mb": _peak_rss_mb() - before,
            "dali_epoch_files": len(files)}


def part_suspects(folder: Path) -> dict:
    from curvenet_dist.data.datasets import Splits
    from curvenet_dist.tracking.report import write_suspects

    table = _read_table(folder)
    rng = np.random.default_rng(0)
    splits = Splits([f"class{c}" for c in range(CLASSES)], table, table.select([]), None, table.select([]))
    start = time.perf_counter()
    write_suspects(folder / "suspects.csv", splits, rng.random(len(table), dtype=np.float32),
                   rng.integers(0, CLASSES, len(table)), rng.random(len(table)), rng.random(len(table)) < 0.1)
    return {"suspects_csv_s": time.perf_counter() - start}


def worker_gather(folder: Path) -> dict:
    """Each rank's (id, loss) share of an epoch (padding repeats included) gathered and written as one column."""
    import torch

    from curvenet_dist.curves.gather import gather_by_id
    from curvenet_dist.curves.store import CurveStore
    from curvenet_dist.data.sharding import epoch_order, rank_share
    from curvenet_dist.engine.distributed import barrier, setup_distributed

    context = setup_distributed("cpu")
    store = CurveStore.open(folder / "gather.zarr") if context.is_main else None
    samples = int(np.load(folder / "samples.npy"))
    times = []
    for epoch in range(GATHER_ROUNDS):
        order = epoch_order(samples, shuffle=True, seed=0, epoch=epoch)
        ids = torch.from_numpy(rank_share(order, context.rank, context.world_size, BATCH_SIZE))
        losses = torch.rand(len(ids))
        barrier()
        start = time.perf_counter()
        epoch_losses = gather_by_id(ids, losses, samples, dst=0)
        if store is not None:
            store.write_epoch(epoch, epoch_losses, lr=0.01)
        barrier()
        times.append(time.perf_counter() - start)
    return {"gather_write_s": statistics.median(times), "gather_write_s_all": times,
            "gather_world_size": context.world_size}


def worker_startup(folder: Path) -> dict:
    """What an allocate rank does with the N samples before its first step (curvenet, meta.source=lowest_loss,
    DALI loader): read the sample table, open and check the store, select the meta set, get the curve features,
    build the training loader's epoch file list. Image existence checks (file-system bound) and model building
    (independent of N) are left out."""
    import torch

    import curvenet_dist.data.dali_loader  # noqa: F401
    from curvenet_dist.config import CurveNetConfig
    from curvenet_dist.curves.features import curve_features, lowest_loss_rows
    from curvenet_dist.curves.store import CurveStore
    from curvenet_dist.engine.distributed import barrier, setup_distributed

    context = setup_distributed("cpu")
    barrier()
    start = time.perf_counter()
    table = _read_table(folder)
    read_s = time.perf_counter() - start
    store = CurveStore.open(folder / "curves.zarr", mode="r")
    assert store.dataset_fingerprint == table.fingerprint()
    meta = table.select(lowest_loss_rows(store, META_PER_CLASS))
    features = curve_features(store, SKIP_EPOCHS, CurveNetConfig.curve_normalization)
    curves = torch.from_numpy(features)
    loader = _dali_loader(table, context.rank, context.world_size)
    files = loader.epoch_files()
    seconds = time.perf_counter() - start
    assert len(meta) == CLASSES * META_PER_CLASS and len(curves) == len(table) and files
    barrier()
    return {"allocate_startup_s": seconds, "sample_table_read_s": read_s}


def _run_part(part: str, folder: Path, arguments: argparse.Namespace, nproc: int = 0) -> list[dict]:
    """Run one part in a fresh process (under torchrun with `nproc` ranks when nproc > 0); each rank's figures."""
    from curvenet_dist.engine.launch import torchrun_command

    module = "curvenet_dist.bench.scale"
    options = ["--part", part, "--folder", str(folder), "--samples", str(arguments.samples),
               "--epochs", str(arguments.epochs)]
    if nproc:
        command = torchrun_command(nproc, module, options, ["--module"])
    else:
        command = [sys.executable, "-m", module, *options]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return [json.loads(path.read_text()) for path in sorted(folder.glob(f"{part}-rank*.json"))]


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m curvenet_dist.bench scale", description=__doc__)
    parser.add_argument("--samples", type=int, default=1_000_000, help="N, samples in the store and table")
    parser.add_argument("--epochs", type=int, default=60, help="T, probe epochs in the store")
    parser.add_argument("--nproc", type=int, default=2, help="torchrun ranks (gloo, CPU) for gather and start-up")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.part:
        parts = {"features": lambda: part_features(arguments.folder),
                 "lowest_loss": lambda: part_lowest_loss(arguments.folder),
                 "weights": lambda: part_weights(arguments.folder, arguments.samples, arguments.epochs),
                 "dali_paths": lambda: part_dali_paths(arguments.folder),
                 "suspects": lambda: part_suspects(arguments.folder),
                 "gather": lambda: worker_gather(arguments.folder),
                 "startup": lambda: worker_startup(arguments.folder)}
        from curvenet_dist.engine.distributed import exit_without_finalization, teardown_distributed

        figures = parts[arguments.part]()
        (arguments.folder / f"{arguments.part}-rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(figures))
        teardown_distributed()
        exit_without_finalization(0)

    folder = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    try:
        start = time.perf_counter()
        make_data(folder, arguments.samples, arguments.epochs)
        np.save(folder / "samples.npy", arguments.samples)
        figures: dict = {"samples": arguments.samples, "epochs": arguments.epochs, "classes": CLASSES,
                         "skip_epochs": SKIP_EPOCHS, "setup_s": time.perf_counter() - start,
                         "load_average_at_start": os.getloadavg()[0]}
        for part in ("features", "lowest_loss", "weights", "dali_paths", "suspects"):
            figures.update(_run_part(part, folder, arguments)[0])
        figures.update(_run_part("gather", folder, arguments, arguments.nproc)[0])
        # The first allocate run on a store builds the features (rank 0) and saves them; later runs read them.
        for suffix in ("", "_saved_features"):
            ranks = _run_part("startup", folder, arguments, arguments.nproc)
            figures[f"allocate_startup{suffix}_s"] = max(rank["allocate_startup_s"] for rank in ranks)
            figures[f"allocate_startup{suffix}_s_per_rank"] = [rank["allocate_startup_s"] for rank in ranks]
        figures["sample_table_read_s"] = max(rank["sample_table_read_s"] for rank in ranks)
        figures["startup_world_size"] = len(ranks)
        figures["load_average_at_end"] = os.getloadavg()[0]
        return figures
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
