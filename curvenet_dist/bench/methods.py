"""CE vs class-balanced CE vs logit-adjusted CE vs Meta-Weight-Net vs CurveNet on the same data, seeds and epochs.

For each seed: one probe run, then one allocate run per method from its curve store, each under torchrun
(2 gloo ranks by default). Figures: per method, the mean and std over seeds of test / many / medium / few-shot
accuracy and of the weights' noise AUROC (pooled and within the classes) and AP, and beside them the AUROCs of the
mean-probe-loss detector on the same curve stores.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from curvenet_dist.curves.features import mean_probe_loss
from curvenet_dist.curves.store import CurveStore
from curvenet_dist.engine.launch import torchrun_stage
from curvenet_dist.engine.probe import CURVE_STORE
from curvenet_dist.tracking.report import mean_loss_detector

REPO = Path(__file__).resolve().parents[2]
METHODS = ("ce", "balanced_ce", "logit_adjust", "mwnet", "curvenet", "dynamic_loss")
# Dynamic Loss draws its meta set from the training set each epoch; with the clean meta set added
# (dynamic_loss.clean_meta) it sees the same clean data as the other methods.
METHOD_OVERRIDES = {"dynamic_loss": ["dynamic_loss.clean_meta=true"]}
FIGURES = ("test_acc", "many_acc", "medium_acc", "few_acc", "noise_auroc", "noise_auroc_within_class", "noise_ap")


def add_run_arguments(parser: argparse.ArgumentParser, config: str, methods: list[str]) -> None:
    """The options every seeds-by-methods bench takes; `config` (a file in configs/) and `methods` are defaults."""
    parser.add_argument("--config", default=str(REPO / "configs" / config))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=methods)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--run-dir", default="", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. data.batch_size=64")


def run_seed(root: Path, seed: int, base: list[str], methods: list[str], nproc: int) -> tuple[dict, dict]:
    """One probe run in root/seed{seed}/probe, then one allocate run per method from its store, each under
    torchrun with the stage arguments `base`: the metrics of each method's run, and the mean-probe-loss detector
    on the same store."""
    probe_dir = root / f"seed{seed}" / "probe"
    torchrun_stage(nproc, "probe", [*base, f"run.dir={probe_dir}"], quiet=True)
    store = CurveStore.open(probe_dir / CURVE_STORE, mode="r")
    detector = mean_loss_detector(mean_probe_loss(store), store.labels, store.true_labels)
    results = {}
    for method in methods:
        run_dir = root / f"seed{seed}" / method
        torchrun_stage(nproc, "allocate", [*base, *METHOD_OVERRIDES.get(method, []), f"allocate.probe_dir={probe_dir}",
                                           f"run.dir={run_dir}", f"method={method}"], quiet=True)
        metrics = results[method] = json.loads((run_dir / "metrics.json").read_text())
        separation = (f", noise AUROC {metrics['noise_auroc']:.3f} (mean probe loss "
                      f"{detector['detector_auroc']:.3f})" if "noise_auroc" in metrics else "")
        print(f"seed {seed} {method}: test_acc {metrics['test_acc']:.4f}{separation}", flush=True)
    return results, detector


def summarize(runs: list[tuple[dict, dict]], summary: dict) -> dict:
    """`summary` with, per method, the mean and std over the seeds' `runs` of every figure, and the detector's."""
    for method in runs[0][0]:
        for figure in FIGURES:
            values = [results[method][figure] for results, _ in runs if figure in results[method]]
            if values:
                summary[f"{method}_{figure}_mean"] = statistics.mean(values)
                summary[f"{method}_{figure}_std"] = statistics.pstdev(values)
    for figure in ("detector_auroc", "detector_auroc_within_class"):
        values = [detector[figure] for _, detector in runs if detector[figure] is not None]
        if values:
            summary[f"{figure}_mean"] = statistics.mean(values)
            summary[f"{figure}_std"] = statistics.pstdev(values)
    return summary


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m curvenet_dist.bench methods")
    # Dynamic Loss only when named: it reads no probe, and the default list is the probe-based methods.
    add_run_arguments(parser, "quickstart.yaml", [method for method in METHODS if method != "dynamic_loss"])
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(arguments.run_dir or scratch).resolve()
        runs = [run_seed(root, seed, ["--config", arguments.config, *arguments.overrides, f"run.seed={seed}",
                                      f"bias.seed={seed}", "tracking.enabled=false"], arguments.methods, arguments.nproc)
                for seed in arguments.seeds]
    return summarize(runs, {"seeds": arguments.seeds, "world_size": arguments.nproc, "config": arguments.config,
                            "overrides": arguments.overrides})
