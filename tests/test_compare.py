"""`python -m curvenet_dist.compare` against a real MLflow server holding runs logged by the trainers' tracker."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import uuid

import pytest

from curvenet_dist.config import load_config
from curvenet_dist.tracking.compare import main
from curvenet_dist.tracking.mlflow_tracker import MlflowTracker
from tests.conftest import QUICKSTART, REPO

EPOCHS = 3
SAMPLES_PER_S = [100.0, 200.0, 300.0]


def trainer_tags(config, world_size: int, probe_dir=None, probe_run_id: str = "") -> dict[str, str]:
    """The tags the probe (no probe_dir) or allocate trainer sets, from the config."""
    bias = config.bias
    tags = {"dataset": config.data.source, "noise_type": bias.noise_type, "noise_rate": str(bias.noise_rate),
            "imbalance_factor": str(bias.imbalance_factor), "world_size": str(world_size),
            "method": "probe" if probe_dir is None else config.method, "model": config.model.name}
    if probe_dir is not None:
        tags |= {"meta_sync": config.meta.sync, "probe_dir": str(probe_dir), "probe_run_id": probe_run_id}
        if config.method != "ce":
            tags |= {"skip_layers": str(getattr(config, config.method).skip_layers),
                     "meta_source": "hierarchical" if config.method == "dynamic_loss" else config.meta.source}
    return tags


def log_run(config, run_dir, stage: str, tags: dict[str, str], test_acc: float, final: dict[str, float]) -> str:
    """Log one run through the trainers' own MlflowTracker, epoch by epoch; returns its run id."""
    run_dir.mkdir(parents=True)
    tracker = MlflowTracker(config, run_dir, stage, tags)
    final_acc = {"test_acc": test_acc, "many_acc": test_acc + 0.1, "medium_acc": test_acc, "few_acc": test_acc - 0.2}
    for epoch in range(EPOCHS):
        # Accuracy climbs to its final value, so only the latest value matches the table.
        scale = (epoch + 1) / EPOCHS
        metrics = {"train_loss": 1.0 / (epoch + 1), "lr": 0.05, "epoch_s": 1.0,
                   "samples_per_s": SAMPLES_PER_S[epoch], **{k: v * scale for k, v in final_acc.items()}}
        if stage == "allocate":
            metrics |= {"mean_weight": 0.5, "meta_loss": 0.7}
        tracker.log_metrics(metrics, step=epoch)
    tracker.log_metrics(final, step=EPOCHS)
    tracker.finish()
    return tracker.run_id


@pytest.fixture(scope="module")
def experiment(mlflow_server, tmp_path_factory):
    """A fresh experiment: a probe, then CE, CurveNet k=2 on 2 ranks, CurveNet k=0 on 1 rank and Dynamic Loss on its
    hierarchical meta sample; name -> run id."""
    name = f"compare-{uuid.uuid4().hex[:8]}"
    folder = tmp_path_factory.mktemp("compare-runs")
    probe_dir = folder / "probe"
    common = ["data.source=digits", "bias.noise_type=flip2", "bias.noise_rate=0.4", "bias.imbalance_factor=10",
              f"tracking.uri={mlflow_server}", f"tracking.experiment={name}"]
    probe_config = load_config(QUICKSTART, common)
    run_ids = {"probe": log_run(probe_config, probe_dir, "probe", trainer_tags(probe_config, 2), 0.6, {"wall_s": 12.5})}
    for run_name, method, skip_layers, world_size, test_acc, final in (
            ("ce", "ce", 0, 2, 0.70, {"wall_s": 20.0}),
            ("curvenet-k2", "curvenet", 2, 2, 0.82, {"wall_s": 30.0, "noise_auroc": 0.91, "noise_ap": 0.8}),
            ("curvenet-k0", "curvenet", 0, 1, 0.78, {"wall_s": 50.0, "noise_auroc": 0.88, "noise_ap": 0.7}),
            ("dynamic-loss", "dynamic_loss", 2, 2, 0.75, {"wall_s": 40.0, "noise_auroc": 0.61, "noise_ap": 0.4})):
        depth = [f"{method}.skip_layers={skip_layers}"] if method != "ce" else []
        config = load_config(QUICKSTART, [*common, f"method={method}", *depth, f"allocate.probe_dir={probe_dir}"])
        tags = trainer_tags(config, world_size, probe_dir, run_ids["probe"])
        run_ids[run_name] = log_run(config, folder / run_name, "allocate", tags, test_acc, final)
    return name, run_ids


def compare(arguments: list[str], uri: str | None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return subprocess.run([sys.executable, "-m", "curvenet_dist.compare", *arguments], cwd=REPO,
                          env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120,
                          check=False)


def table_rows(stdout: str) -> list[dict[str, str]]:
    """The printed table as header -> cell; columns are two or more spaces apart."""
    lines = [line for line in stdout.splitlines() if line.strip() and " written to " not in line]
    header = lines[0].split()
    return [dict(zip(header, re.split(r"\s{2,}", line.strip()), strict=True)) for line in lines[1:]]


def test_table_csv_and_plot_cover_every_run(experiment, mlflow_server, tmp_path):
    name, run_ids = experiment
    result = compare(["--experiment", name, "--csv", str(tmp_path / "runs.csv"), "--plot", str(tmp_path / "runs.png")],
                     uri=mlflow_server)  # the URI from $MLFLOW_TRACKING_URI
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert [row["run"] for row in rows] == ["probe", "ce", "curvenet-k2", "curvenet-k0", "dynamic-loss"]  # oldest first
    probe, ce, curvenet, _, dynamic = rows
    assert curvenet == {"run": "curvenet-k2", "run_id": run_ids["curvenet-k2"][:8], "stage": "allocate",
                        "method": "curvenet", "meta_source": "carved", "dataset": "digits", "noise": "flip2 0.4", "imbalance": "10.0",
                        "skip_layers": "2", "world_size": "2", "test_acc": "0.8200", "many_acc": "0.9200",
                        "medium_acc": "0.8200", "few_acc": "0.6200", "noise_auroc": "0.9100", "wall_s": "30.0",
                        "images_per_s": "200.0"}
    assert (probe["stage"], probe["method"], probe["skip_layers"], probe["noise_auroc"]) == ("probe", "probe", "-", "-")
    assert ce["noise_auroc"] == "-" and ce["test_acc"] == "0.7000" and ce["meta_source"] == "-"
    assert (dynamic["method"], dynamic["meta_source"], dynamic["noise_auroc"]) == ("dynamic_loss", "hierarchical",
                                                                                  "0.6100")

    with open(tmp_path / "runs.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [row["run_id"] for row in csv_rows] == [run_ids[r] for r in ("probe", "ce", "curvenet-k2", "curvenet-k0",
                                                                         "dynamic-loss")]
    assert list(csv_rows[0]) == list(rows[0])
    assert float(csv_rows[2]["images_per_s"]) == pytest.approx(200.0)
    assert float(csv_rows[2]["noise_auroc"]) == pytest.approx(0.91)
    assert csv_rows[0]["noise_auroc"] == "" and csv_rows[0]["skip_layers"] == ""
    assert (tmp_path / "runs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_filter_stage_and_sort(experiment, mlflow_server):
    name, _ = experiment
    result = compare(["--experiment", name, "--tracking-uri", mlflow_server, "--filter", "tags.method = 'curvenet'",
                      "--sort", "test_acc"], uri=None)
    assert result.returncode == 0, result.stderr
    assert [(row["run"], row["test_acc"]) for row in table_rows(result.stdout)] == [
        ("curvenet-k2", "0.8200"), ("curvenet-k0", "0.7800")]

    result = compare(["--experiment", name, "--tracking-uri", mlflow_server, "--stage", "allocate",
                      "--sort", "noise_auroc", "--reverse"], uri=None)
    assert result.returncode == 0, result.stderr
    # Lowest AUROC first; CE has no AUROC and goes last.
    assert [row["run"] for row in table_rows(result.stdout)] == ["dynamic-loss", "curvenet-k0", "curvenet-k2", "ce"]


@pytest.mark.parametrize("arguments, message", [
    (["--experiment", "no-such-experiment"], "no MLflow experiment named 'no-such-experiment'"),
    (["--filter", "tags.method == == 'x'"], "MLflow refused the filter"),
])
def test_bad_query_stops_with_one_line(experiment, mlflow_server, arguments, message, capsys):
    name, _ = experiment
    if "--experiment" not in arguments:
        arguments = ["--experiment", name, *arguments]
    with pytest.raises(SystemExit) as stop:
        main([*arguments, "--tracking-uri", mlflow_server])
    assert stop.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith(f"error: {message}") and len(stderr.splitlines()) == 1, stderr
    if "no-such-experiment" in arguments:
        assert name in stderr  # the experiments that do exist are listed


def test_missing_tracking_uri_points_at_the_quickstart_store(monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SystemExit) as stop:
        main(["--experiment", "quickstart"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: no tracking URI: pass --tracking-uri URI or set MLFLOW_TRACKING_URI "
        "(the quickstart's store is sqlite:///runs/quickstart/mlflow.db)")


def test_a_damaged_store_is_one_error_line_naming_it(tmp_path, capsys):
    store = tmp_path / "mlflow.db"
    store.write_bytes(os.urandom(4096))
    with pytest.raises(SystemExit) as stop:
        main(["--experiment", "quickstart", "--tracking-uri", f"sqlite:///{store}"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == (f"error: the MLflow store sqlite:///{store} cannot be read: "
                                       f"(sqlite3.DatabaseError) file is not a database\n")
