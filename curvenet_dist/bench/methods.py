"""CE vs class-balanced CE vs Meta-Weight-Net vs CurveNet on the same data, seeds and epochs.

For each seed: one probe run, then one allocate run per method from its curve store, each under torchrun
(2 gloo ranks by default). Figures: per method, the mean and std over seeds of test / many / medium / few-shot
accuracy and of the weights' noise AUROC and AP.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from curvenet_dist.engine.launch import torchrun_stage

REPO = Path(__file__).resolve().parents[2]
METHODS = ("ce", "balanced_ce", "mwnet", "curvenet")
FIGURES = ("test_acc", "many_acc", "medium_acc", "few_acc", "noise_auroc", "noise_ap")


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m curvenet_dist.bench methods")
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--run-dir", default="", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. bias.noise_rate=0.2")
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(arguments.run_dir or scratch).resolve()
        results: dict[str, list[dict]] = {method: [] for method in METHODS}
        for seed in arguments.seeds:
            base = ["--config", arguments.config, *arguments.overrides, f"run.seed={seed}", f"bias.seed={seed}",
                    "tracking.enabled=false"]
            probe_dir = root / f"seed{seed}" / "probe"
            torchrun_stage(arguments.nproc, "probe", [*base, f"run.dir={probe_dir}"], quiet=True)
            for method in METHODS:
                run_dir = root / f"seed{seed}" / method
                torchrun_stage(arguments.nproc, "allocate",
                               [*base, f"probe.dir={probe_dir}", f"run.dir={run_dir}", f"method={method}"], quiet=True)
                results[method].append(json.loads((run_dir / "metrics.json").read_text()))
                print(f"seed {seed} {method}: test_acc {results[method][-1]['test_acc']:.4f}", flush=True)
    summary: dict = {"seeds": arguments.seeds, "world_size": arguments.nproc, "config": arguments.config,
                     "overrides": arguments.overrides}
    for method, runs in results.items():
        for figure in FIGURES:
            values = [run[figure] for run in runs if figure in run]
            if values:
                summary[f"{method}_{figure}_mean"] = statistics.mean(values)
                summary[f"{method}_{figure}_std"] = statistics.pstdev(values)
    return summary
