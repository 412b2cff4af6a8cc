"""The main job on the embedded default: probe, then allocate with plain CE, class-balanced CE (the trivial
baseline of a class rebalancing) and CurveNet, then a summary.

`python launch/quickstart.py [--nproc 2] [--run-dir runs/quickstart] [key=value ...]` runs each stage under
torchrun exactly as a user would; rerunning resumes whatever did not finish.
"""
import argparse
import json
from pathlib import Path

from curvenet_dist.engine.launch import torchrun_stage

REPO = Path(__file__).resolve().parents[1]
METHODS = ("ce", "balanced_ce", "curvenet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2, help="processes per stage (gloo on CPU, NCCL on GPU)")
    parser.add_argument("--run-dir", default="runs/quickstart",
                        help="folder for the probe's and each method's run folder")
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every stage")
    arguments = parser.parse_args()
    root = Path(arguments.run_dir).resolve()
    base = ["--config", arguments.config, *arguments.overrides]
    torchrun_stage(arguments.nproc, "probe", [*base, f"run.dir={root / 'probe'}"])
    for method in METHODS:
        torchrun_stage(arguments.nproc, "allocate",
                       [*base, f"allocate.probe_dir={root / 'probe'}", f"run.dir={root / method}", f"method={method}"])
    probe = json.loads((root / "probe" / "metrics.json").read_text())
    print("\nquickstart summary")
    print(f"  curve store:  {probe['curve_store']}")
    print(f"  MLflow:       experiment 'quickstart' in {root / 'mlflow.db'} "
          f"(view: mlflow ui --backend-store-uri sqlite:///{root / 'mlflow.db'})")
    print(f"  {'run':12s} {'test acc':>9s} {'many':>6s} {'medium':>6s} {'few':>6s} {'noise AUROC':>11s}")
    for name in METHODS:
        metrics = json.loads((root / name / "metrics.json").read_text())
        auroc = f"{metrics['noise_auroc']:.3f}" if "noise_auroc" in metrics else "-"
        print(f"  {name:12s} {metrics['test_acc']:9.4f} {metrics['many_acc']:6.3f} {metrics['medium_acc']:6.3f} "
              f"{metrics['few_acc']:6.3f} {auroc:>11s}")
    print(f"  suspects (most likely mislabeled first): {root / 'curvenet' / 'suspects.csv'}")


if __name__ == "__main__":
    main()
