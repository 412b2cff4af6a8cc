"""`python -m curvenet_dist.bench grid` end to end on a tiny grid: digits, one cell, one seed, CE and CurveNet."""
from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from mlflow.tracking import MlflowClient
from sklearn.metrics import roc_auc_score

from curvenet_dist.bench.__main__ import main as bench
from curvenet_dist.bench.grid import markdown, parse_arguments, plan_runs
from curvenet_dist.config import load_config

TINY_GRID = ["--cells", "prop-imb10-n0.4", "--seeds", "0", "--methods", "ce", "curvenet", "--nproc", "1",
             "data.source=digits", "data.train_per_class=0", "data.image_size=8", "data.batch_size=64",
             "bias.meta_per_class=10", "model.width=8", "probe.epochs=3", "probe.cycle_epochs=1",
             "allocate.epochs=2", "allocate.milestones=[1]", "curvenet.skip_epochs=0", "meta.batch_size=20"]


def grid(tmp_path, capsys) -> str:
    """The benchmark's command line in this process (its stages still run under torchrun); its stdout."""
    bench(["grid", "--run-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path / "docs"), *TINY_GRID])
    return capsys.readouterr().out


def test_grid_end_to_end_resumes_and_scores_the_detector(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    first = grid(tmp_path, capsys)
    figures = json.loads(first.strip().splitlines()[-1])
    assert set(figures) == {"cells", "summary", "detector_auroc", "seeds"} and figures["seeds"] == [0]
    (cell,) = figures["cells"]
    assert cell["name"] == "prop-imb10-n0.4" and cell["settings"]["bias.noise_type"] == "proportional"
    assert set(cell["methods"]) == {"ce", "curvenet"} and cell["methods"]["ce"]["noise_auroc"] is None
    assert 0 <= cell["methods"]["curvenet"]["noise_auroc"]["mean"] <= 1
    assert len(cell["noise_rate_by_class"]) == 10
    assert set(figures["summary"]) == {"ce", "curvenet"}
    assert figures["summary"]["curvenet"]["mean_acc"] == cell["methods"]["curvenet"]["test_acc"]["mean"]
    assert figures["summary"]["ce"]["mean_noise_auroc"] is None

    # The detector: each sample's mean probe loss against the store's true labels, computed here independently.
    store = zarr.open_group(str(tmp_path / "runs" / "prop-imb10-n0.4_seed0_probe" / "curves.zarr"), mode="r")
    complete = np.flatnonzero(store["epoch_complete"][:])
    assert len(complete) == 3
    mislabeled = store["label"][:] != store["true_label"][:]
    mean_loss = store["loss"][:][:, complete].astype(np.float64).mean(1)  # as the detector sums: float32 ties differ
    expected = roc_auc_score(mislabeled, mean_loss)
    assert abs(cell["detector_auroc"]["mean"] - expected) < 1e-9
    assert figures["detector_auroc"] == cell["detector_auroc"]["mean"]
    # Within the classes: each given-label class holding both kinds scored alone, then averaged.
    labels = store["label"][:]
    weights = np.load(tmp_path / "runs" / "prop-imb10-n0.4_seed0_curvenet" / "weights.npy")
    mixed = [c for c in np.unique(labels) if 0 < mislabeled[labels == c].sum() < (labels == c).sum()]
    for score, figure in ((mean_loss, cell["detector_auroc_within_class"]),
                          (-weights, cell["methods"]["curvenet"]["noise_auroc_within_class"])):
        expected_within = np.mean([roc_auc_score(mislabeled[labels == c], score[labels == c]) for c in mixed])
        assert abs(figure["mean"] - expected_within) < 1e-9
    assert cell["methods"]["ce"]["noise_auroc_within_class"] is None

    table = (tmp_path / "docs" / "grid.md").read_text()
    assert "## prop-imb10-n0.4" in table and "| curvenet |" in table and f"{expected:.4f}" in table
    assert "within-class AUROC (mean probe loss)" in table
    assert (tmp_path / "docs" / "grid.png").stat().st_size > 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (summary,) = client.search_runs([client.get_experiment_by_name("grid").experiment_id], "tags.stage = 'grid'")
    assert summary.data.metrics["curvenet_mean_acc"] == figures["summary"]["curvenet"]["mean_acc"]
    assert {"grid.md", "grid.png", "grid.json"} <= {a.path for a in client.list_artifacts(summary.info.run_id)}

    metrics = sorted((tmp_path / "runs").glob("*/metrics.json"))
    assert len(metrics) == 3
    stamps = [path.stat().st_mtime_ns for path in metrics]
    again = grid(tmp_path, capsys)
    assert again.count(": skipped,") == 3 and ": running" not in again
    assert [path.stat().st_mtime_ns for path in metrics] == stamps
    assert json.loads(again.strip().splitlines()[-1]) == figures


def test_any_cell_is_named_by_its_bias_and_a_bad_name_stops_with_one_line(tmp_path, capsys):
    for name, noise_type in (("uniform-imb50-n0.3", "uniform"), ("pair-imb50-n0.3", "pair"),
                             ("inst-imb50-n0.3", "instance")):
        arguments = parse_arguments(["--cells", name, "--seeds", "0"])
        [run, *_] = plan_runs(arguments, tmp_path)
        settings = {f"bias.noise_type={noise_type}", "bias.imbalance_factor=50", "bias.noise_rate=0.3"}
        assert settings <= set(run.arguments)
    for name, message in (("prop-imb10", "is not <prop|uniform|flip|flip2|pair|inst>-imb<factor>-n<rate>"),
                          ("gauss-imb10-n0.4", "is not <prop|uniform|flip|flip2|pair|inst>-imb<factor>-n<rate>"),
                          ("prop-imb10-n1.5", "bias.noise_rate=1.5 must be in [0, 1)")):
        with pytest.raises(SystemExit) as stop:
            parse_arguments(["--cells", name])
        assert stop.value.code == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_every_method_runs_on_each_probe_with_its_own_settings(tmp_path):
    arguments = parse_arguments(["--cells", "prop-imb10-n0.4", "--seeds", "0"])
    probe, *allocate = plan_runs(arguments, tmp_path)
    methods = [run.arguments[-1].removeprefix("method=") for run in allocate]
    assert methods == ["ce", "balanced_ce", "logit_adjust", "mwnet", "curvenet", "dynamic_loss"]
    configs = {}
    for method, run in zip(methods, allocate):
        assert run.arguments[:2] == ["--config", arguments.config]
        configs[method] = load_config(arguments.config, run.arguments[2:])
        assert configs[method].allocate.probe_dir == str(probe.folder)
    assert configs["mwnet"].mwnet.skip_layers == 0 and configs["curvenet"].curvenet.skip_layers == 2
    assert configs["dynamic_loss"].dynamic_loss.clean_meta and configs["dynamic_loss"].meta.source == "carved"
    title = markdown([], {}, {}, arguments).splitlines()[0]
    assert title == ("# Grid: CE, class-balanced CE, Logit adjustment, Meta-Weight-Net, CurveNet, Dynamic Loss")
