"""Clothing1M's official layout -> data_prep -> probe and allocate through DALI under torchrun, with ResNet-50."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from curvenet_dist.curves.store import CurveStore
from tests.conftest import REPO, torchrun
from tests.official_layouts import build_clothing1m

pytestmark = pytest.mark.slow
CONFIG = str(REPO / "configs" / "clothing1m_r50.yaml")
# The paper's protocol at toy scale: 32x32 images, tiny batches, a few epochs, CPU DALI pipelines.
SMALL = ["data.image_size=32", "data.batch_size=8", "data.eval_batch_size=16", "data.num_workers=1",
         "probe.epochs=3", "probe.cycle_epochs=1", "curvenet.skip_epochs=1", "allocate.epochs=2",
         "allocate.milestones=[1]", "meta.batch_size=14", "tracking.enabled=false"]


def test_clothing1m_layout_runs_probe_and_allocate_through_dali(tmp_path):
    root = build_clothing1m(tmp_path / "clothing1m")
    prepared = tmp_path / "prepared"
    subprocess.run([sys.executable, "-m", "data_prep", "clothing1m", "--root", str(root), "--out", str(prepared)],
                   cwd=REPO, check=True, capture_output=True, text=True)
    data = [f"data.path={prepared}", "data.loader=dali"]
    probe_dir, allocate_dir = tmp_path / "probe", tmp_path / "allocate"
    torchrun("probe.py", 2, ["--config", CONFIG, f"run.dir={probe_dir}", *data, *SMALL])
    store = CurveStore.open(probe_dir / "curves.zarr", mode="r")
    assert np.isfinite(store.loss[:]).all() and store.complete_epochs().tolist() == [0, 1, 2]
    train_rows = (prepared / "train.csv").read_text().strip().splitlines()[1:]
    assert store.num_samples == len(train_rows)

    torchrun("allocate.py", 2, ["--config", CONFIG, f"allocate.probe_dir={probe_dir}", f"run.dir={allocate_dir}",
                                "method=curvenet", *data, *SMALL])
    metrics = json.loads((allocate_dir / "metrics.json").read_text())
    assert metrics["method"] == "curvenet" and metrics["world_size"] == 2 and metrics["skip_layers"] == 4
    assert len(np.load(allocate_dir / "weights.npy")) == store.num_samples
