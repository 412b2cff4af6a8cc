"""CE vs class-balanced CE vs Meta-Weight-Net vs CurveNet on the same data, seeds and epochs.

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
METHODS = ("ce", "balanced_ce", "mwnet", "curvenet")
FIGURES = ("test_acc", "many_acc", "medium_acc", "few_acc", "noise_auroc", "noise_auroc_within_class", "noise_ap")


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m curvenet_dist.bench methods")
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--run-dir", default="", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. bias.noise_rate=0.2")
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(arguments.run_dir or scratch).resolve()
        results: dict[str, list[dict]] = {method: [] for method in arguments.methods}
        detectors: list[dict] = []
        for seed in arguments.seeds:
            base = ["--config", arguments.config, *arguments.overrides, f"run.seed={seed}", f"bias.seed={seed}",
                    "tracking.enabled=false"]
            probe_dir = root / f"seed{seed}" / "probe"
            torchrun_stage(arguments.nproc, "probe", [*base, f"run.dir={probe_dir}"], quiet=True)
            store = CurveStore.open(probe_dir / CURVE_STORE, mode="r")
            detectors.append(mean_loss_detector(mean_probe_loss(store), store.labels, store.true_labels))
            for method in arguments.methods:
                run_dir = root / f"seed{seed}" / method
                torchrun_stage(arguments.nproc, "allocate",
                               [*base, f"probe.dir={probe_dir}", f"run.dir={run_dir}", f"method={method}"], quiet=True)
                metrics = json.loads((run_dir / "metrics.json").read_text())
                results[method].append(metrics)
                separation = (f", noise AUROC {metrics['noise_auroc']:.3f} (mean probe loss "
                              f"{detectors[-1]['detector_auroc']:.3f})" if "noise_auroc" in metrics else "")
                print(f"seed {seed} {method}: test_acc {metrics['test_acc']:.4f}{separation}", flush=True)
    summary: dict = {"seeds": arguments.seeds, "world_size": arguments.nproc, "config": arguments.config,
                     "overrides": arguments.overrides}
    for method, runs in results.items():
        for figure in FIGURES:
            values = [run[figure] for run in runs if figure in run]
            if values:
                summary[f"{method}_{figure}_mean"] = statistics.mean(values)
                summary[f"{method}_{figure}_std"] = statistics.pstdev(values)
    for figure in ("detector_auroc", "detector_auroc_within_class"):
        values = [detector[figure] for detector in detectors if detector[figure] is not None]
        if values:
            summary[f"{figure}_mean"] = statistics.mean(values)
            summary[f"{figure}_std"] = statistics.pstdev(values)
    return summary
