"""`python -m curvenet_dist.bench detect`: mislabel detectors scored against the true labels, on a tiny probe run
under torchrun, real K-fold trainings, real cleanlab and a real allocate run."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from curvenet_dist.curves.store import CurveStore
from tests.conftest import QUICKSTART, TINY, run_bench, torchrun

pytestmark = pytest.mark.slow

STORE_DETECTORS = ("mean_loss", "aum")
CLEANLAB_DETECTORS = ("cl_self_confidence", "cl_self_confidence_adjusted", "cl_find_label_issues")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The bench's own probe run (2 ranks under torchrun) and 2 folds, at 8x8 for 3 epochs: its stdout, its folder."""
    run_dir = tmp_path_factory.mktemp("detect")
    return run_bench("detect", "--folds", "2", "--run-dir", str(run_dir), *TINY).stdout, run_dir


def test_every_detector_gets_a_line_and_its_auroc_in_the_json_line(tiny_run):
    output, run_dir = tiny_run
    lines = output.strip().splitlines()
    figures = json.loads(lines[-1])
    for detector in (*STORE_DETECTORS, *CLEANLAB_DETECTORS):
        assert 0.0 <= figures[f"{detector}_auroc_mean"] <= 1.0 and figures[f"{detector}_auroc_std"] == 0.0
        assert 0.0 < figures[f"{detector}_ap_mean"] <= 1.0 and figures[f"{detector}_wall_s_mean"] > 0
        assert sum(line.startswith(f"{detector} ") for line in lines) == 1, output
    assert {"cl_find_label_issues_precision_mean", "cl_find_label_issues_recall_mean",
            "cl_find_label_issues_f1_mean"} <= figures.keys()
    assert figures["folds"] == 2 and figures["seeds"] == [0]
    assert "fold 2/2" in output


def test_a_reused_probe_and_an_allocate_run_are_scored_on_the_same_samples(tiny_run, tmp_path):
    output, run_dir = tiny_run
    probe_dir = run_dir / "seed0" / "probe"
    allocate_dir = tmp_path / "curvenet"
    torchrun("allocate.py", 2, ["--config", str(QUICKSTART), f"allocate.probe_dir={probe_dir}", f"run.dir={allocate_dir}",
                                *TINY, "allocate.epochs=2", "allocate.milestones=[1]", "curvenet.skip_epochs=1",
                                "method=curvenet"])
    again = json.loads(run_bench("detect", "--folds", "2", "--probe-dir", str(probe_dir), "--allocate-dir",
                             str(allocate_dir)).stdout.strip().splitlines()[-1])
    first = json.loads(output.strip().splitlines()[-1])
    # Same store, same folds and seed: every score is the same as the first time.
    for detector in (*STORE_DETECTORS, *CLEANLAB_DETECTORS):
        assert again[f"{detector}_auroc_mean"] == first[f"{detector}_auroc_mean"], detector
    # The allocate run's suspects.csv, most suspect first, against the true labels the probe's store holds.
    store = CurveStore.open(probe_dir / "curves.zarr", mode="r")
    with open(allocate_dir / "suspects.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    order = [int(row["sample_id"]) for row in rows]
    mislabeled = (store.labels != store.true_labels)[order]
    expected = roc_auc_score(mislabeled, -np.arange(len(order)))
    assert again["curvenet_auroc_mean"] == pytest.approx(expected) and 0 < again["curvenet_ap_mean"] <= 1
    # Its flagged set, the `flagged` column, scored as find_label_issues' is.
    flagged = np.array([row["flagged"] == "true" for row in rows])
    assert again["curvenet_flagged_mean"] == flagged.sum()
    assert again["curvenet_recall_mean"] == pytest.approx((flagged & mislabeled).sum() / mislabeled.sum())


def test_a_store_recorded_before_margins_is_named_in_one_line(tiny_run, tmp_path):
    _, run_dir = tiny_run
    probe_dir = tmp_path / "probe"
    shutil.copytree(run_dir / "seed0" / "probe", probe_dir)
    shutil.rmtree(probe_dir / "curves.zarr" / "margin")  # the layout of a store written before margins
    result = run_bench("detect", "--probe-dir", str(probe_dir), check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {probe_dir / 'curves.zarr'} holds no logit margins (it was recorded before the probe kept them) and "
        f"bench detect needs a store with margins: run the probe again into a new run.dir")
    assert "Traceback" not in result.stderr and "fold 1" not in result.stdout
