"""`python -m curvenet_dist.bench gpu`: the GPU path in one command. Here, without a GPU, its `--device cpu --tiny`
run of the same code (decode rates, steps, the quickstart stages under torchrun, the store check), the store check
on a real curve store, and the one line it stops with where CUDA is asked for and absent."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from curvenet_dist.bench.gpu import store_check
from curvenet_dist.curves.store import CurveStore
from tests.conftest import REPO
from tests.test_curve_store import flip_bytes


def bench_gpu(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curvenet_dist.bench", "gpu", *arguments], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_tiny_cpu_run_reports_every_figure_and_a_store_holding_each_probe_epoch_once():
    completed = bench_gpu("--device", "cpu", "--tiny")
    assert completed.returncode == 0, completed.stderr[-3000:]
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    assert figures["device"] == "cpu" and figures["tiny"] is True
    decode = figures["decode"]
    assert decode["jpegs"] == 64 and decode["jpeg_mean_kb"] > 0
    assert decode["dali_mixed_images_per_s"] is None, "DALI's mixed decode needs a GPU"
    assert decode["dali_cpu_images_per_s"] > 0 and decode["torch_images_per_s"] > 0
    step = figures["step"]
    skips = [str(skip) for skip in range(4)]  # the quickstart's CIFAR ResNet has 3 stages: skip_layers 0 to 3
    assert step["model"] == "cifar_resnet" and step["plain_images_per_s"] > 0 and step["peak_memory_gb"] is None
    for key in ("allocate_images_per_s", "allocate_step_s", "time_ratio", "flop_ratio"):
        assert sorted(step[key]) == skips, key
    # The full meta step does more arithmetic than a plain step, and each skipped stage does less.
    assert all(step["flop_ratio"][a] > step["flop_ratio"][b] > 1 for a, b in zip(skips, skips[1:]))
    assert step["reference_a100_amp_images_per_s"] == 2470
    stages = figures["stages"]
    assert stages["nproc"] == 1 and stages["process_group"] is None
    assert stages["store"] == {"probe_epochs": 3, "store_epochs": 3, "complete_epochs": 3, "damage": None,
                               "every_epoch_once": True}
    assert 0 <= stages["allocate_test_acc"] <= 1 and 0 <= stages["noise_auroc"] <= 1
    assert figures["wall_s"] > 0


def test_the_store_check_names_a_missing_or_damaged_epoch(tmp_path):
    labels = np.arange(6) % 3
    store = CurveStore.open_or_create(tmp_path / "curves.zarr", fingerprint="f", dataset_fingerprint="d",
                                      labels=labels, true_labels=labels, num_epochs=3)
    for epoch in range(2):
        store.write_epoch(epoch, np.full(6, 0.5, np.float32), lr=0.1)
    assert store_check(store.path, 3)["every_epoch_once"] is False, "the third epoch was never recorded"
    store.write_epoch(2, np.full(6, 0.5, np.float32), lr=0.1)
    assert store_check(store.path, 3) == {"probe_epochs": 3, "store_epochs": 3, "complete_epochs": 3,
                                          "damage": None, "every_epoch_once": True}
    assert store_check(store.path, 4)["every_epoch_once"] is False, "a store of another probe length"
    flip_bytes(store.path / "loss" / "c" / "0" / "1")
    damaged = store_check(store.path, 3)
    assert damaged["every_epoch_once"] is False
    assert damaged["damage"] == "probe epochs [2] are damaged (epoch 2: chunk loss/c/0/1 fails its checksum)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_without_cuda_it_says_so_in_one_line_and_exits_2():
    completed = bench_gpu()
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.strip().splitlines() == [
        "error: bench gpu: no CUDA device is visible (torch.cuda.is_available() is False); run it on a GPU "
        "machine, or with --device cpu --tiny to run the same code on the CPU"]


def test_a_bad_override_stops_with_one_line_before_any_work():
    completed = bench_gpu("--device", "cpu", "--tiny", "data.bogus=1")
    assert completed.returncode == 2
    assert completed.stdout == ""
    [line] = completed.stderr.strip().splitlines()
    assert line.startswith("error: command line: unknown key 'data.bogus'"), line
