"""`python -m curvenet_dist.bench stage_cost`: whole allocate stages of CE and CurveNet under torchrun on a tiny
probe, their wall-time ratio and accuracies, and a rerun that reuses every finished run."""
from __future__ import annotations

import json

import pytest

from tests.conftest import TINY, run_bench

pytestmark = pytest.mark.slow

RUN = ["--methods", "ce", "curvenet", "--rounds", "1", *TINY, "allocate.epochs=2", "allocate.milestones=[1]",
       "curvenet.skip_epochs=1"]


def run_metrics(run_dir, method: str) -> dict:
    return json.loads((run_dir / "quickstart" / "round1" / method / "metrics.json").read_text())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One probe and one round of CE and CurveNet, 2 ranks each: the bench's stdout and its run folder."""
    run_dir = tmp_path_factory.mktemp("stage-cost")
    return run_bench("stage_cost", "--run-dir", str(run_dir), *RUN).stdout, run_dir


def test_the_json_line_holds_the_ratio_to_ce_and_each_runs_accuracy(tiny_run):
    output, run_dir = tiny_run
    lines = output.strip().splitlines()
    methods = json.loads(lines[-1])["configs"]["quickstart"]["methods"]
    ce, curvenet = methods["ce"], methods["curvenet"]
    ce_metrics, curvenet_metrics = run_metrics(run_dir, "ce"), run_metrics(run_dir, "curvenet")
    # The stage's own wall time is the run's metrics.json's; the torchrun around it takes longer.
    assert ce["wall_s"] == [ce_metrics["wall_s"]] and curvenet["wall_s"] == [curvenet_metrics["wall_s"]]
    assert curvenet["wall_s_ratio"] == pytest.approx(curvenet_metrics["wall_s"] / ce_metrics["wall_s"])
    assert curvenet["wall_s_round_ratio_median"] == pytest.approx(curvenet["wall_s_ratio"])
    assert curvenet["process_s"][0] > curvenet["wall_s"][0] and ce["process_s"][0] > ce["wall_s"][0]
    assert curvenet["process_s_ratio"] == pytest.approx(curvenet["process_s"][0] / ce["process_s"][0])
    assert ce["test_acc"] == [ce_metrics["test_acc"]] and ce["test_acc_std"] == 0.0
    assert curvenet["test_acc_mean"] == curvenet_metrics["test_acc"]
    assert curvenet["noise_auroc_mean"] == curvenet_metrics["noise_auroc"] and "noise_auroc_mean" not in ce
    # One line per run as it ends, CE first in round 1, then a line per method, the JSON line last.
    assert lines[0].startswith("quickstart round 1/1 ce: stage ")
    assert lines[1].startswith("quickstart round 1/1 curvenet: ")
    assert f"test_acc {curvenet_metrics['test_acc']:.4f}" in lines[1]
    assert lines[3].startswith(f"quickstart curvenet: median stage {curvenet_metrics['wall_s']:.1f} s "
                               f"({curvenet['wall_s_ratio']:.2f}x CE")


def test_a_rerun_reuses_the_finished_runs_without_training(tiny_run):
    output, run_dir = tiny_run
    finished = {path: path.stat().st_mtime_ns for path in run_dir.rglob("metrics.json")}
    assert len(finished) == 3  # the probe, CE and CurveNet
    again = run_bench("stage_cost", "--run-dir", str(run_dir), *RUN).stdout.strip().splitlines()
    assert {path: path.stat().st_mtime_ns for path in run_dir.rglob("metrics.json")} == finished
    runs = [line for line in again if line.startswith("quickstart round 1/1 ")]
    assert len(runs) == 2 and all(line.endswith("(reused)") for line in runs), again
    # The torchrun wall clock of each run was kept beside it: the figures are the first run's.
    assert json.loads(again[-1]) == json.loads(output.strip().splitlines()[-1])


def test_a_rerun_with_other_settings_names_the_finished_run_in_one_line(tiny_run):
    _, run_dir = tiny_run
    result = run_bench("stage_cost", "--run-dir", str(run_dir), *RUN, "allocate.epochs=3", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {run_dir / 'quickstart' / 'round1' / 'ce'} holds a finished run with allocate.epochs=2, not 3; "
        f"give another --run-dir or the settings of its runs")
