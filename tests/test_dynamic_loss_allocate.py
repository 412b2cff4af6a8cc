"""Dynamic Loss in the allocate stage, through real torchrun processes with gloo: the same buckets and meta sample
on every rank, 1- and 2-rank runs without a probe, and resume after a kill."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import QUICKSTART, REPO, TINY, kill_allocate_after_epoch, torchrun

pytestmark = pytest.mark.slow
DYNAMIC = [*TINY, "method=dynamic_loss", "allocate.epochs=3", "allocate.milestones=[3]",
           "dynamic_loss.warmup_epochs=1", "dynamic_loss.buckets=10", "meta.batch_size=20"]


def allocate(run_dir, nproc, extra=(), **kwargs):
    return torchrun("allocate.py", nproc, ["--config", str(QUICKSTART), f"run.dir={run_dir}", *DYNAMIC, *extra],
                    **kwargs)


def test_every_rank_has_the_same_buckets_and_hierarchical_sample(tmp_path):
    results = {}
    for nproc in (1, 2):
        out = tmp_path / str(nproc)
        out.mkdir()
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   str(REPO / "tests/distributed/hierarchical_worker.py"), "--config", str(QUICKSTART), "--out", str(out)]
        completed = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                                   text=True, timeout=300)
        assert completed.returncode == 0, completed.stderr[-3000:]
        results[nproc] = [np.load(out / f"rank{rank}.npz") for rank in range(nproc)]
    one, (rank0, rank1) = results[1][0], results[2]
    for key in ("buckets", "sample"):
        np.testing.assert_array_equal(rank0[key], rank1[key])
        np.testing.assert_array_equal(rank0[key], one[key])
    counts = np.bincount(one["labels"][one["sample"]])
    assert (counts == counts[0]).all() and counts[0] == np.bincount(one["labels"]).min() // 2 // 2


@pytest.mark.parametrize("nproc", [1, 2])
def test_dynamic_loss_runs_without_a_probe_and_writes_its_outputs(tmp_path, nproc):
    run_dir = tmp_path / "run"
    # CurveNet's SLMO depth and meta interval are not Dynamic Loss's: it runs with its own.
    result = allocate(run_dir, nproc, ["curvenet.skip_layers=1", "curvenet.meta_interval=5"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == "dynamic_loss" and metrics["world_size"] == nproc
    for key in ("test_acc", "many_acc", "medium_acc", "few_acc"):
        assert 0 <= metrics[key] <= 1
    assert len(metrics["margins"]) == 10
    weights = np.load(run_dir / "weights.npy")
    with open(run_dir / "suspects.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(weights) == metrics["num_samples"]
    assert ((weights > 0) & (weights < 1)).all() and 0 <= metrics["noise_auroc"] <= 1
    assert "meta set: each epoch's hierarchical sample," in result.stdout and "done: test accuracy" in result.stdout
    assert "dynamic_loss.skip_layers 3, a meta update every 2 batch(es)" in result.stdout
    assert metrics["skip_layers"] == 3


def test_killed_dynamic_loss_run_resumes_and_finishes(tmp_path):
    run_dir = tmp_path / "run"
    # With the reference's warm-up corrector updates, so that the Adam state exists from the first epoch on.
    longer = ["allocate.epochs=4", "allocate.milestones=[4]", "dynamic_loss.warmup_corrector_steps=2000"]
    checkpoint = kill_allocate_after_epoch(["--config", str(QUICKSTART), f"run.dir={run_dir}", *DYNAMIC, *longer],
                                           run_dir)
    assert {"weighting_net", "weighting_optimizer", "sample_losses", "predicted"} <= checkpoint.keys()
    assert checkpoint["weighting_optimizer"]["state"], "the corrector's Adam state is checkpointed"
    result = allocate(run_dir, 2, longer)
    resumed = re.search(r"resuming at epoch (\d+)", result.stdout)
    assert resumed and int(resumed.group(1)) >= 3, result.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 4
