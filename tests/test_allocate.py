"""The allocate stage end to end, through real torchrun processes with gloo, on a tiny probe run."""
from __future__ import annotations

import csv
import re
import json

import numpy as np
import pytest
import torch

from curvenet_dist.config import load_config
from curvenet_dist.curves.store import CurveStore
from curvenet_dist.data.datasets import build_splits
from curvenet_dist.data.loader import build_loader
from curvenet_dist.meta.meta_batches import MetaBatches
from curvenet_dist.tracking.report import weight_spread
from tests.conftest import QUICKSTART, TINY, assert_clean_error, kill_allocate_after_epoch, torchrun

pytestmark = pytest.mark.slow
ALLOCATE = [*TINY, "allocate.epochs=3", "allocate.milestones=[2]", "curvenet.skip_epochs=1", "meta.batch_size=20",
            "curvenet.skip_layers=2"]


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("probe") / "run"
    torchrun("probe.py", 2, ["--config", str(QUICKSTART), f"run.dir={run_dir}", *TINY, "probe.epochs=4"])
    return run_dir


def allocate(probe_run, run_dir, nproc=1, extra=(), **kwargs):
    return torchrun("allocate.py", nproc, ["--config", str(QUICKSTART), f"allocate.probe_dir={probe_run}", f"run.dir={run_dir}",
                                           *ALLOCATE, *extra], **kwargs)


@pytest.mark.parametrize("method, extra", [("curvenet", []), ("curvenet", ["curvenet.weight_scale=dataset"]),
                                           ("curvenet", ["curvenet.rebalance=logit_adjust"]),
                                           ("mwnet", ["mwnet.skip_layers=2"]), ("ce", []), ("balanced_ce", []),
                                           ("logit_adjust", [])])
def test_each_method_writes_metrics_weights_and_suspects(probe_run, tmp_path, method, extra):
    run_dir = tmp_path / method
    result = allocate(probe_run, run_dir, 2, [f"method={method}", *extra])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["world_size"] == 2
    assert metrics["skip_layers"] == (2 if method in ("curvenet", "mwnet") else 0)
    for key in ("test_acc", "many_acc", "medium_acc", "few_acc"):
        assert 0 <= metrics[key] <= 1
    weights = np.load(run_dir / "weights.npy")
    with open(run_dir / "suspects.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(weights) == metrics["num_samples"]
    # Most likely mislabeled first: the highest suspect score; the flagged count is the rows marked flagged.
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert metrics["flagged"] == sum(r["flagged"] == "true" for r in rows)
    assert {"given_label", "predicted_label", "true_label"} <= rows[0].keys()
    assert (run_dir / "confusion_matrix.png").exists() and (run_dir / "weights_by_class.png").exists()
    if method in ("ce", "logit_adjust"):
        assert (weights == 1).all() and "noise_auroc" not in metrics
    elif method == "balanced_ce":
        # Every class carries the same total weight, N / C; the mean weight stays 1.
        labels = CurveStore.open(probe_run / "curves.zarr", mode="r").labels
        totals = np.bincount(labels, weights=weights)
        np.testing.assert_allclose(totals[totals > 0], len(weights) / (totals > 0).sum(), rtol=1e-5)
        assert len(np.unique(weights)) > 1 and "noise_auroc" not in metrics
    else:
        assert ((weights > 0) & (weights < 1.03)).all()
        assert 0 <= metrics["noise_auroc"] <= 1 and 0 <= metrics["noise_ap"] <= 1
        labels = CurveStore.open(probe_run / "curves.zarr", mode="r").labels
        assert metrics["weight_spread"] == pytest.approx(weight_spread(weights, labels))
        if method == "curvenet":
            # The second meta epoch's line says how far the weights moved since the first.
            assert re.search(r"epoch 2/3 .*weight_change \d", result.stdout), result.stdout
            # The opening line names the rebalancing; only class totals estimate each class's wrong labels.
            if extra == ["curvenet.rebalance=logit_adjust"]:
                assert "logits adjusted by the class prior" in result.stdout
                assert "estimated_wrong_fraction" not in metrics
            elif not extra:
                assert "class totals for" in result.stdout and len(metrics["estimated_wrong_fraction"]) == 10
    assert "done: test accuracy" in result.stdout


def test_killed_allocate_run_resumes_and_finishes(probe_run, tmp_path):
    run_dir = tmp_path / "run"
    checkpoint = kill_allocate_after_epoch(["--config", str(QUICKSTART), f"allocate.probe_dir={probe_run}",
                                            f"run.dir={run_dir}", *ALLOCATE, "allocate.epochs=4"], run_dir)
    assert {"model", "optimizer", "weighting_net", "weighting_optimizer"} <= checkpoint.keys()
    assert checkpoint["weighting_optimizer"]["state"], "CurveNet's Adam state is checkpointed"
    result = allocate(probe_run, run_dir, 2, ["allocate.epochs=4"])
    resumed = re.search(r"resuming at epoch (\d+)", result.stdout)
    assert resumed and int(resumed.group(1)) >= 3, result.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 4


def test_weights_that_settle_end_meta_learning_before_the_first_lr_decay(probe_run, tmp_path):
    """With a tolerance every change is under, the weights settle at the first meta epoch that measures a change:
    the run meta-learns 2 epochs instead of 3 and says so; with tolerance 0 it meta-learns up to the LR decay."""
    run_dir = tmp_path / "run"
    # A high meta LR spreads the weights within the few meta steps of a tiny run (an unspread net never settles).
    settle = ["allocate.epochs=4", "allocate.milestones=[3]", "curvenet.meta_lr=0.03", "curvenet.settle_tolerance=1000",
              "curvenet.settle_epochs=1"]
    result = allocate(probe_run, run_dir, 2, settle)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["meta_epochs"] == 2
    assert "the weights settled after epoch 2 (curvenet.settle_tolerance): 2 meta epochs, 1 fewer" in result.stdout
    assert re.search(r"epoch 3/4 (?!.*weight_change)", result.stdout)
    plain = allocate(probe_run, tmp_path / "plain", 2, [*settle[:3], "curvenet.settle_tolerance=0"])
    assert json.loads((tmp_path / "plain" / "metrics.json").read_text())["meta_epochs"] == 3
    assert "settled" not in plain.stdout


@pytest.mark.parametrize("extra, message", [
    (["curvenet.skip_epochs=4"], "holds 4 probe epochs; curvenet.skip_epochs=4 needs at least 5"),
    (["bias.noise_rate=0.2"], "was recorded on another dataset"),
    (["method=focal"], "method='focal' is not allowed"),
    (["curvenet.skip_layers=4"], "curvenet.skip_layers=4 is outside [0, 3]"),
    (["method=mwnet", "mwnet.skip_layers=4"], "mwnet.skip_layers=4 is outside [0, 3]"),
    (["meta.source=split"], "the dataset has no meta split"),
    (["allocate.probe_dir="], "allocate.probe_dir must name the probe run folder"),
])
def test_bad_input_is_refused_before_training(probe_run, tmp_path, extra, message):
    result = allocate(probe_run, tmp_path / "run", 1, extra, check=False)
    assert_clean_error(result, message)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_meta_batches_resume_at_their_position_not_at_the_epoch_start():
    config = load_config(QUICKSTART, ["data.num_workers=0", "meta.batch_size=16"])
    meta_table = build_splits(config.data, config.bias).carved_meta
    config.data.batch_size = config.meta.batch_size

    def stream() -> MetaBatches:
        return MetaBatches(build_loader(config.data, meta_table, train=True, rank=0, world_size=1, seed=0,
                                        device=torch.device("cpu")))

    uninterrupted = stream()
    drawn = [uninterrupted.next() for _ in range(9)]  # 100 samples in batches of 16: the 9th starts epoch 2
    interrupted = stream()
    for _ in range(3):
        interrupted.next()
    resumed = stream()
    resumed.load_state_dict(interrupted.state_dict())
    for images, labels in drawn[3:]:
        next_images, next_labels = resumed.next()
        assert torch.equal(labels, next_labels) and torch.equal(images, next_images)
