"""The paper's Table-1 experiment on real images: CE vs Meta-Weight-Net vs CurveNet over imbalance x noise cells.

Fashion-MNIST from Debian's package (configs/grid_fashion_mnist.yaml). For each (cell, seed): one probe run, then
one allocate run per method from its curve store, each under torchrun. Every run keeps its folder under --run-dir:
a run whose metrics.json exists is skipped and an unfinished one is resumed by rerunning its stage, so an
interrupted grid continues where it stopped (use a fresh --run-dir after changing the config or the code).

Output: per cell and over cells (MA, the paper's mean accuracy), test and few-shot accuracy and the weights' noise
AUROC, each mean ± std over seeds, beside the AUROC of the mean-probe-loss detector on the same store; as
<out-dir>/grid.md and grid.png, logged to MLflow (experiment from the config, SQLite under --run-dir by default).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np

from curvenet_dist.bench.methods import METHOD_OVERRIDES as BENCH_OVERRIDES, METHODS
from curvenet_dist.config import ConfigError, load_config
from curvenet_dist.curves.features import mean_probe_loss
from curvenet_dist.curves.store import CurveStore
from curvenet_dist.engine.launch import torchrun_stage
from curvenet_dist.engine.probe import CURVE_STORE
from curvenet_dist.tracking.mlflow_tracker import build_tracker
from curvenet_dist.tracking.report import mean_loss_detector

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


NOISE_PREFIXES = {"prop": "proportional", "uniform": "uniform", "flip": "flip", "flip2": "flip2", "pair": "pair",
                  "inst": "instance"}
CELL_PATTERN = re.compile(r"(?P<noise>[a-z0-9]+)-imb(?P<imbalance>[0-9]+)-n(?P<rate>[0-9]+(\.[0-9]+)?)")


def cell(name: str) -> dict[str, object]:
    """A cell's bias settings from its name, `<prop|uniform|flip|flip2|pair|inst>-imb<factor>-n<rate>`."""
    match = CELL_PATTERN.fullmatch(name)
    if match is None or match["noise"] not in NOISE_PREFIXES:
        raise argparse.ArgumentTypeError(f"cell {name!r} is not <{'|'.join(NOISE_PREFIXES)}>-imb<factor>-n<rate>, "
                                         "e.g. prop-imb10-n0.4")
    return {"bias.noise_type": NOISE_PREFIXES[match["noise"]], "bias.imbalance_factor": int(match["imbalance"]),
            "bias.noise_rate": float(match["rate"])}


# The grid: the reference's noise model at imbalance {10, 50} x noise {0.2, 0.4}, and one flip2 cell.
CELLS = [f"prop-imb{imbalance}-n{rate}" for imbalance in (10, 50) for rate in (0.2, 0.4)] + ["flip2-imb10-n0.4"]
QUICK_CELL = "prop-imb10-n0.4"
# Meta-Weight-Net's reference code takes its virtual step over the whole network: the baseline runs that way, not
# with the SLMO default. Applied after the command line's overrides, so each method stays as configured here.
METHOD_OVERRIDES = {**BENCH_OVERRIDES, "mwnet": ["mwnet.skip_layers=0"]}
FIGURES = ("test_acc", "few_acc", "noise_auroc", "noise_auroc_within_class")
METHOD_NAMES = {"ce": "CE", "balanced_ce": "class-balanced CE", "logit_adjust": "Logit adjustment",
                "mwnet": "Meta-Weight-Net", "curvenet": "CurveNet", "dynamic_loss": "Dynamic Loss"}


@dataclass
class Run:
    label: str
    stage: str
    folder: Path
    arguments: list[str]


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m curvenet_dist.bench grid", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "grid_fashion_mnist.yaml"))
    parser.add_argument("--cells", nargs="+", help=f"cells named <{'|'.join(NOISE_PREFIXES)}>-imb<factor>-n<rate> "
                        f"(default: {' '.join(CELLS)}; --quick: {QUICK_CELL})")
    parser.add_argument("--seeds", type=int, nargs="+", help="each sets run.seed and bias.seed (default: 0 1; "
                                                             "--quick: 0)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="allocate methods (config's `method`)")
    parser.add_argument("--quick", action="store_true", help=f"one cell ({QUICK_CELL}) and one seed")
    parser.add_argument("--run-dir", default="runs/grid", help="every run's folder is kept here (resumable)")
    parser.add_argument("--out-dir", default=str(REPO / "docs"), help="where grid.md and grid.png are written")
    parser.add_argument("--nproc", type=int, default=2, help="torchrun processes per run")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. probe.epochs=20")
    arguments = parser.parse_args(argv)
    arguments.cells = arguments.cells or ([QUICK_CELL] if arguments.quick else list(CELLS))
    for name in arguments.cells:
        try:
            load_config(arguments.config, [*(f"{key}={value}" for key, value in cell(name).items()),
                                           *arguments.overrides])
        except (argparse.ArgumentTypeError, ConfigError) as error:
            parser.error(str(error))
    arguments.seeds = arguments.seeds or ([0] if arguments.quick else [0, 1])
    for method in arguments.methods:
        try:
            load_config(arguments.config, [*arguments.overrides, f"method={method}", *METHOD_OVERRIDES.get(method, [])])
        except ConfigError as error:
            parser.error(str(error))
    return arguments


def plan_runs(arguments: argparse.Namespace, root: Path) -> list[Run]:
    """Per (cell, seed): the probe, then one allocate run per method reading its curve store."""
    runs = []
    for name in arguments.cells:
        for seed in arguments.seeds:
            base = ["--config", arguments.config, *(f"{key}={value}" for key, value in cell(name).items()),
                    f"run.seed={seed}", f"bias.seed={seed}", *arguments.overrides]
            probe_dir = run_folder(root, name, seed, "probe")
            runs.append(Run(f"{name} seed {seed} probe", "probe", probe_dir, [*base, f"run.dir={probe_dir}"]))
            for method in arguments.methods:
                folder = run_folder(root, name, seed, method)
                runs.append(Run(f"{name} seed {seed} {method}", "allocate", folder,
                                [*base, *METHOD_OVERRIDES.get(method, []), f"allocate.probe_dir={probe_dir}",
                                 f"run.dir={folder}", f"method={method}"]))
    return runs


def run_folder(root: Path, name: str, seed: int, stage: str) -> Path:
    # Flat, so every stage's default MLflow store (beside its folder) is the grid's root/mlflow.db.
    return root / f"{name}_seed{seed}_{stage}"


def execute(runs: list[Run], nproc: int) -> None:
    start = time.monotonic()
    done = sum(finished(run) for run in runs)
    for run in runs:
        elapsed = time.strftime("%H:%M:%S", time.gmtime(time.monotonic() - start))
        status = f"[grid {done}/{len(runs)} done, {len(runs) - done} left, {elapsed} elapsed]"
        if finished(run):
            print(f"{status} {run.label}: skipped, {run.folder / 'metrics.json'} exists", flush=True)
            continue
        print(f"{status} {run.label}: running in {run.folder}", flush=True)
        run_start = time.monotonic()
        torchrun_stage(nproc, run.stage, run.arguments, quiet=True)
        metrics = json.loads((run.folder / "metrics.json").read_text())
        done += 1
        print(f"    {run.label}: test_acc {metrics['test_acc']:.4f} in {time.monotonic() - run_start:.0f}s", flush=True)


def finished(run: Run) -> bool:
    return (run.folder / "metrics.json").is_file()


def mean_std(values: list[float]) -> dict[str, float] | None:
    return {"mean": statistics.mean(values), "std": statistics.pstdev(values)} if values else None


def summarize_cell(root: Path, name: str, seeds: list[int], methods: list[str]) -> dict:
    """One cell's figures, mean and std over seeds, and its per-seed values (to average over cells per seed)."""
    probes = [run_folder(root, name, seed, "probe") for seed in seeds]
    stores = [CurveStore.open(probe / CURVE_STORE, mode="r") for probe in probes]
    detectors = [mean_loss_detector(mean_probe_loss(store), store.labels, store.true_labels) for store in stores]
    detector = [figures["detector_auroc"] for figures in detectors]
    detector_within = [figures["detector_auroc_within_class"] for figures in detectors]
    # The probe's per-class noise rates (None: no known true label in the class) as NaN, to average over seeds.
    rates = np.array([json.loads((probe / "metrics.json").read_text())["noise_rate_by_class"] for probe in probes],
                     dtype=float).mean(0)
    per_seed = {method: {figure: [] for figure in FIGURES} for method in methods}
    for method in methods:
        for seed in seeds:
            metrics = json.loads((run_folder(root, name, seed, method) / "metrics.json").read_text())
            for figure in FIGURES:
                if figure in metrics:
                    per_seed[method][figure].append(metrics[figure])
    return {
        "name": name, "settings": cell(name),
        "methods": {method: {figure: mean_std(values) for figure, values in figures.items()}
                    for method, figures in per_seed.items()},
        "detector_auroc": mean_std([value for value in detector if value is not None]),
        "detector_auroc_within_class": mean_std([value for value in detector_within if value is not None]),
        "noise_rate_by_class": [None if np.isnan(rate) else round(float(rate), 4) for rate in rates],
        "per_seed": {**per_seed, "detector_auroc": detector, "detector_auroc_within_class": detector_within},
    }


def over_cells(cells: list[dict], key: str, figure: str | None = None) -> dict[str, float] | None:
    """Mean ± std over seeds of the per-seed mean over cells (None where a cell lacks the figure)."""
    columns = [cell["per_seed"][key] if figure is None else cell["per_seed"][key][figure] for cell in cells]
    if not all(column and None not in column for column in columns):
        return None
    return mean_std([statistics.mean(values) for values in zip(*columns)])


def format_figure(value: dict[str, float] | None) -> str:
    return "-" if value is None else f"{value['mean']:.4f} ± {value['std']:.4f}"


def markdown(cells: list[dict], means: dict, detector: dict, arguments: argparse.Namespace) -> str:
    """`detector`: the mean over cells of the detector's figures, keyed as a cell's."""
    command = " ".join(["python -m curvenet_dist.bench grid", "--cells", *arguments.cells, "--seeds",
                        *map(str, arguments.seeds), "--methods", *arguments.methods, "--nproc", str(arguments.nproc),
                        *arguments.overrides])
    header = ("| method | test acc | few-shot acc | noise AUROC (weights) | noise AUROC (mean probe loss) "
              "| within-class AUROC (weights) | within-class AUROC (mean probe loss) |\n" + "| --- " * 7 + "|")
    config = Path(arguments.config).resolve()
    config = config.relative_to(REPO) if config.is_relative_to(REPO) else config
    title = ", ".join(METHOD_NAMES.get(method, method) for method in arguments.methods)

    def rows(figures: dict, detector: dict) -> list[str]:
        return [f"| {method} | {format_figure(m['test_acc'])} | {format_figure(m['few_acc'])} | "
                f"{format_figure(m['noise_auroc'])} | {format_figure(detector['detector_auroc'])} | "
                f"{format_figure(m['noise_auroc_within_class'])} | "
                f"{format_figure(detector['detector_auroc_within_class'])} |" for method, m in figures.items()]

    lines = [f"# Grid: {title}", "", f"`{command}` (config {config}).", "",
             f"Mean ± std over seeds {arguments.seeds}. Noise AUROC: mislabeled = positive, score = 1 - weight; "
             "beside it the trivial detector's: a sample's mean probe loss on the same curve store. Within-class: "
             "the AUROC inside each given-label class, averaged over the classes (blind to how whole classes "
             "compare, as a class-relative weight is).", "",
             "## Mean over cells (MA: the paper's mean accuracy)", "", header.replace("test acc", "MA"),
             *rows(means, detector)]
    for cell in cells:
        rates = " ".join("-" if rate is None else f"{rate:.2f}" for rate in cell["noise_rate_by_class"])
        lines += ["", f"## {cell['name']}", "", ", ".join(f"{k}={v}" for k, v in cell["settings"].items()) + ".",
                  f"Noise rate of each given-label class 0-{len(cell['noise_rate_by_class']) - 1} (mean over seeds): "
                  f"{rates}.", "", header, *rows(cell["methods"], cell)]
    return "\n".join(lines) + "\n"


def plot(cells: list[dict], means: dict, detector: dict | None, path: Path) -> None:
    """Grouped bars per cell and over cells, one bar per method (and the detector's AUROC), error bars over seeds."""
    groups = [(cell["name"], cell["methods"], cell["detector_auroc"]) for cell in cells]
    groups.append(("mean over cells", means, detector))
    methods = list(means)
    figure, axes = plt.subplots(2, 1, figsize=(max(7, 1.6 * len(groups)), 7), sharex=True)
    for axis, figure_key, label in ((axes[0], "test_acc", "test accuracy"), (axes[1], "noise_auroc", "noise AUROC")):
        bars = [(method, [figures[method][figure_key] for _, figures, _ in groups]) for method in methods]
        if figure_key == "noise_auroc":
            # CE's weights are all 1: no AUROC, no bar.
            bars = [(name, values) for name, values in bars if any(values)]
            bars.append(("mean probe loss", [value for _, _, value in groups]))
        width = 0.8 / len(bars)
        for index, (name, values) in enumerate(bars):
            positions = np.arange(len(groups)) + (index - (len(bars) - 1) / 2) * width
            style = {"color": f"C{methods.index(name)}"} if name in methods else {"color": "lightgrey", "hatch": "//"}
            axis.bar(positions, [v["mean"] if v else 0 for v in values], width,
                     yerr=[v["std"] if v else 0 for v in values], capsize=3, label=name, **style)
        axis.set_ylabel(label)
        # Headroom above the bars for the legend, which would otherwise sit on them.
        axis.set_ylim(0, 1.2)
        axis.set_yticks(np.linspace(0, 1, 6))
        axis.legend(fontsize=8, ncols=len(bars), loc="upper center")
    axes[1].set_xticks(range(len(groups)), [name for name, _, _ in groups], fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def log_to_mlflow(arguments: argparse.Namespace, root: Path, result: dict, files: list[Path]) -> None:
    """One MLflow run per grid invocation (its JSON beside it), in the config's experiment, beside the stages'."""
    config = load_config(arguments.config, arguments.overrides)
    folder = root / time.strftime("summary-%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "grid.json").write_text(json.dumps(result, indent=1))
    tracker = build_tracker(config, folder, "grid", {"cells": ",".join(arguments.cells),
                                                     "seeds": ",".join(map(str, arguments.seeds))}, is_main=True)
    metrics = {f"{method}_{key}": value for method, figures in result["summary"].items()
               for key, value in figures.items() if value is not None}
    metrics.update({f"{cell['name']}_{method}_{figure}": value["mean"] for cell in result["cells"]
                    for method, figures in cell["methods"].items() for figure, value in figures.items() if value})
    tracker.log_metrics({**metrics, "detector_auroc": result["detector_auroc"]}, step=0)
    for path in [*files, folder / "grid.json"]:
        tracker.log_artifact(path)
    tracker.finish()


def main(argv: list[str]) -> dict:
    arguments = parse_arguments(argv)
    root = Path(arguments.run_dir).resolve()
    runs = plan_runs(arguments, root)
    execute(runs, arguments.nproc)
    cells = [summarize_cell(root, name, arguments.seeds, arguments.methods) for name in arguments.cells]
    means = {method: {figure: over_cells(cells, method, figure) for figure in FIGURES} for method in arguments.methods}
    detector = {key: over_cells(cells, key) for key in ("detector_auroc", "detector_auroc_within_class")}
    out_dir = Path(arguments.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown(cells, means, detector, arguments)
    (out_dir / "grid.md").write_text(table)
    print(table, flush=True)
    plot(cells, means, detector["detector_auroc"], out_dir / "grid.png")
    result = {
        "cells": [{key: value for key, value in cell.items() if key != "per_seed"} for cell in cells],
        "summary": {method: {"mean_acc": m["test_acc"]["mean"], "mean_few_acc": m["few_acc"]["mean"],
                             "mean_noise_auroc": m["noise_auroc"]["mean"] if m["noise_auroc"] else None}
                    for method, m in means.items()},
        "detector_auroc": detector["detector_auroc"]["mean"] if detector["detector_auroc"] else None,
        "seeds": arguments.seeds,
    }
    log_to_mlflow(arguments, root, result, [out_dir / "grid.md", out_dir / "grid.png"])
    return result
