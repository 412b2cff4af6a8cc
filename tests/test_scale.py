"""Clothing1M-scale code paths on small data: chunked weights, features shared by concurrent ranks, and
the scale benchmark itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from curvenet_dist.curves.features import normalized_curves, features_path
from curvenet_dist.curves.store import CurveStore
from curvenet_dist.engine.batched import weights_by_chunks
from curvenet_dist.engine.launch import torchrun_command
from curvenet_dist.models.weighting import CurveNet, MetaWeightNet
from tests.conftest import REPO


def test_weights_by_chunks_equal_one_batch():
    torch.manual_seed(0)
    curves, labels, losses = torch.randn(1000, 6), torch.randint(0, 4, (1000,)), torch.rand(1000) * 3
    curvenet, mwnet = CurveNet(6, 4), MetaWeightNet()
    with torch.no_grad():
        torch.testing.assert_close(weights_by_chunks(curvenet, labels, curves, chunk=128), curvenet(curves, labels))
        torch.testing.assert_close(weights_by_chunks(mwnet, labels, losses=losses, chunk=300), mwnet(None, labels, losses))


@pytest.mark.slow
def test_concurrent_ranks_build_the_features_once_and_read_the_same(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 4000)
    store = CurveStore.open_or_create(tmp_path / "curves.zarr", fingerprint="f", dataset_fingerprint="d",
                                      labels=labels, true_labels=labels, num_epochs=4)
    for epoch in range(4):
        store.write_epoch(epoch, rng.gamma(2.0, 1.0, 4000).astype(np.float32), lr=0.1)
    command = torchrun_command(3, REPO / "tests" / "distributed" / "features_worker.py", [str(tmp_path)])
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    expected = normalized_curves(store, 1, "dataset")
    for rank in range(3):
        np.testing.assert_array_equal(np.load(tmp_path / f"rank{rank}.npy"), expected)
    saved = features_path(store, 1, "dataset")
    assert [path.name for path in saved.parent.iterdir()] == [saved.name], "one file, no temporary left"


@pytest.mark.slow
def test_scale_benchmark_reports_every_figure_on_a_small_store():
    result = subprocess.run([sys.executable, "-m", "curvenet_dist.bench", "scale", "--samples", "20000"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("features_s", "features_peak_mb", "features_saved_load_s", "gather_write_s", "allocate_startup_s",
                "allocate_startup_saved_features_s", "lowest_loss_s", "curvenet_weights_s", "curvenet_weights_peak_mb",
                "dali_paths_s", "suspects_csv_s", "sample_table_read_s"):
        assert figures[key] > 0, key
    assert figures["samples"] == 20000 and figures["features_dtype"] == "float32"
    assert figures["gather_world_size"] == figures["startup_world_size"] == 2
    assert figures["lowest_loss_rows"] == 14 * 10 and figures["dali_epoch_files"] == 20000 // 8
