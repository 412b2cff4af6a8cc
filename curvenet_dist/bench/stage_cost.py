"""What a meta-learned method costs over plain CE, as a user sees it: whole allocate stages, timed end to end.

For each --config (a YAML and the overrides that follow it; `--config` may be repeated), one probe run (or the
finished one --probe-dir names, one per --config in order), then allocate runs of every --methods entry and every
--variant (NAME=override[,override], its overrides naming its method, e.g. curvenet_every2=method=curvenet,
curvenet.meta_interval=2), each under torchrun like a user's, interleaved round by round: round r runs each once,
the order rotated by r, so a drift in the machine's load reaches every method alike. A method that reads no
probe (Dynamic Loss) is given none, as a user would run it. Each run is timed twice: the stage's own wall_s from
its metrics.json (the epochs and the final pass) and the wall clock of the whole torchrun (start-up included).

Figures per config and method: the median of each time over the rounds, its ratio to CE's median, the median of
each round's ratio to the same round's CE run, and the test accuracy (and the weights' noise AUROC where the method
has weights) of each run with their mean and std. Runs are kept under --run-dir: a finished run (metrics.json) is
reused, not rerun, so a stopped bench resumes where it stopped; a run resumed from a checkpoint has no whole-stage
wall clock (null). MLflow tracking is off unless an override turns it on.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from curvenet_dist.config import METHODS, Config, ConfigError, load_config
from curvenet_dist.curves.store import CurveStore, CurveStoreError
from curvenet_dist.data.datasets import build_splits
from curvenet_dist.data.sample_table import DataError
from curvenet_dist.engine.components import probe_fingerprint, write_json
from curvenet_dist.engine.launch import USER_ERROR_EXIT_CODE, error_line, torchrun_stage
from curvenet_dist.engine.probe import CURVE_STORE
from curvenet_dist.methods.registry import METHODS as METHOD_CLASSES

REPO = Path(__file__).resolve().parents[2]
BASELINE = "ce"
TIMES = ("wall_s", "process_s")
VARIANT_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One --config: its YAML, the overrides of all its runs, and where its runs and its probe are."""
    label: str
    path: str
    overrides: list[str]
    folder: Path
    probe_dir: Path
    given_probe: bool


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m curvenet_dist.bench stage_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", nargs="+", metavar=("YAML", "OVERRIDE"),
                        help="a config and its own overrides (default: configs/quickstart.yaml); may be repeated")
    parser.add_argument("--probe-dir", action="append", default=[],
                        help="a finished probe run to allocate from, one per --config in order")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=[BASELINE, "curvenet", "dynamic_loss"])
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDE[,OVERRIDE]",
                        help="one more run per round with these overrides, which name its method")
    parser.add_argument("--rounds", type=int, default=3, help="each round runs every method and variant once")
    parser.add_argument("--nproc", type=int, default=2, help="torchrun processes of each run")
    parser.add_argument("--run-dir", default="", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run of every config")
    arguments = parser.parse_args(argv)
    arguments.config = arguments.config or [[str(REPO / "configs" / "quickstart.yaml")]]
    if BASELINE not in arguments.methods:
        parser.error(f"--methods must include {BASELINE}: every ratio is to its runs")
    if arguments.rounds < 1 or arguments.nproc < 1:
        parser.error("--rounds and --nproc must be at least 1")
    if arguments.probe_dir and len(arguments.probe_dir) != len(arguments.config):
        parser.error(f"{len(arguments.probe_dir)} --probe-dir for {len(arguments.config)} --config: "
                     f"give one per config")
    try:
        arguments.runs = run_overrides(arguments.methods, arguments.variant)
    except ValueError as error:
        parser.error(str(error))
    return arguments


def run_overrides(methods: list[str], variants: list[str]) -> dict[str, list[str]]:
    """{run name: its overrides}: each method by its name, then each variant."""
    runs = {method: [f"method={method}"] for method in dict.fromkeys(methods)}
    for spec in variants:
        name, _, text = spec.partition("=")
        overrides = split_overrides(text)
        if not VARIANT_NAME.fullmatch(name) or not overrides:
            raise ValueError(f"--variant {spec}: write NAME=override[,override], NAME of letters, digits, _ . -")
        if name in runs:
            raise ValueError(f"--variant {spec}: {name} names another run already; give the variant its own name")
        if not any(override.startswith("method=") for override in overrides):
            raise ValueError(f"--variant {spec}: its overrides name no method; "
                             f"add method=<one of {', '.join(METHODS)}>")
        runs[name] = overrides
    return runs


def split_overrides(text: str) -> list[str]:
    """`a=1,b.c=[2,3]` -> ['a=1', 'b.c=[2,3]']: a comma inside brackets or braces belongs to its value."""
    parts, depth, start = [], 0, 0
    for index, character in enumerate(text):
        depth += (character in "[{") - (character in "]}")
        if character == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def settings(arguments: argparse.Namespace, root: Path) -> list[Setting]:
    stems = [Path(path).stem for path, *_ in arguments.config]
    result = []
    for index, (path, *own) in enumerate(arguments.config):
        label = stems[index] if stems.count(stems[index]) == 1 else f"{stems[index]}-{index + 1}"
        folder = root / label
        given = arguments.probe_dir[index] if arguments.probe_dir else ""
        # Tracking off first, so an override can turn it on.
        result.append(Setting(label, path, ["tracking.enabled=false", *arguments.overrides, *own], folder,
                              Path(given).resolve() if given else folder / "probe", bool(given)))
    return result


def allocate_overrides(setting: Setting, run: list[str], run_dir: Path) -> list[str]:
    """The overrides of one allocate run, checked; the probe run is named only to a method that reads it."""
    overrides = [*setting.overrides, *run, f"run.dir={run_dir}"]
    if METHOD_CLASSES[load_config(setting.path, overrides).method].needs_probe:
        overrides.append(f"allocate.probe_dir={setting.probe_dir}")
    return overrides


def check_same_settings(folder: Path, path: str, overrides: list[str]) -> None:
    """A finished run in `folder` is reused only if it ran with these settings (its folder aside)."""
    done = load_config(folder / "config.yaml").flat()
    wanted = load_config(path, overrides).flat()
    for key, value in wanted.items():
        if key != "run.dir" and done.get(key) != value:
            raise ConfigError(f"{folder} holds a finished run with {key}={done.get(key)}, not {value}; give another "
                              f"--run-dir or the settings of its runs")


def probe_run(setting: Setting, nproc: int) -> dict:
    """The metrics of the config's probe run, run here unless it is given or finished."""
    metrics = setting.probe_dir / "metrics.json"
    if setting.given_probe:
        if not metrics.is_file():
            raise ConfigError(f"--probe-dir {setting.probe_dir} holds no metrics.json: name a finished probe run")
    else:
        overrides = [*setting.overrides, f"run.dir={setting.probe_dir}"]
        if metrics.is_file():
            check_same_probe(setting.probe_dir, load_config(setting.path, overrides))
        else:
            torchrun_stage(nproc, "probe", ["--config", setting.path, *overrides], quiet=True)
    return json.loads(metrics.read_text())


def check_same_probe(folder: Path, config: Config) -> None:
    """A finished probe run is reused only if its curves are those `config` would record."""
    store = CurveStore.open(folder / CURVE_STORE, mode="r")
    if store.fingerprint != probe_fingerprint(config, build_splits(config.data, config.bias).train):
        raise ConfigError(f"{folder} holds a finished probe run of other data, network, optimizer or probe settings "
                          f"than these; give another --run-dir or the settings of its runs")


def allocate_run(setting: Setting, overrides: list[str], run_dir: Path, nproc: int) -> dict:
    """One allocate run's figures: its stage wall_s, the wall clock of its torchrun (None for a run resumed from a
    checkpoint or found finished without one) and its metrics; `reused` if it was found finished."""
    record = run_dir.with_name(f"{run_dir.name}.json")
    if (run_dir / "metrics.json").is_file():
        check_same_settings(run_dir, setting.path, overrides)
        process_s = json.loads(record.read_text())["process_s"] if record.is_file() else None
        reused = True
    else:
        resumed = any((run_dir / "checkpoints").glob("*.pt"))
        start = time.perf_counter()
        torchrun_stage(nproc, "allocate", ["--config", setting.path, *overrides], quiet=True)
        process_s = None if resumed else time.perf_counter() - start
        write_json(record, {"process_s": process_s})
        reused = False
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"wall_s": metrics["wall_s"], "process_s": process_s, "test_acc": metrics["test_acc"],
            "noise_auroc": metrics.get("noise_auroc"), "reused": reused}


def seconds(value: float | None) -> str:
    return f"{value:.1f} s" if value is not None else "not timed whole"


def run_line(label: str, round_index: int, rounds: int, name: str, run: dict) -> str:
    auroc = f", noise AUROC {run['noise_auroc']:.3f}" if run["noise_auroc"] is not None else ""
    return (f"{label} round {round_index + 1}/{rounds} {name}: stage {seconds(run['wall_s'])}, "
            f"process {seconds(run['process_s'])}, test_acc {run['test_acc']:.4f}{auroc}"
            f"{' (reused)' if run['reused'] else ''}")


def plan(setting: Setting, runs: dict[str, list[str]], rounds: int) -> dict[tuple[int, str], list[str]]:
    """{(round, run name): the overrides of its allocate run}, each checked before anything runs."""
    return {(index, name): allocate_overrides(setting, overrides, run_folder(setting, index, name))
            for index in range(rounds) for name, overrides in runs.items()}


def run_folder(setting: Setting, round_index: int, name: str) -> Path:
    return setting.folder / f"round{round_index + 1}" / name


def measure_setting(setting: Setting, planned: dict[tuple[int, str], list[str]], rounds: int, nproc: int) -> dict:
    """The config's probe, then its rounds of allocate runs, each round's in a rotated order: the figures."""
    probe = probe_run(setting, nproc)
    names = list(dict.fromkeys(name for _, name in planned))
    results: dict[str, list[dict]] = {name: [None] * rounds for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            run = results[name][index] = allocate_run(setting, planned[index, name], run_folder(setting, index, name),
                                                      nproc)
            print(run_line(setting.label, index, rounds, name, run), flush=True)
    return {"config": setting.path, "overrides": setting.overrides, "probe_dir": str(setting.probe_dir),
            "probe_wall_s": probe["wall_s"], "methods": {name: figures(results[name], results[BASELINE])
                                                         for name in names}}


def median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def ratio(value: float | None, baseline: float | None) -> float | None:
    return value / baseline if value is not None and baseline is not None else None


def figures(runs: list[dict], baseline: list[dict]) -> dict:
    """Per time: each run's, the median, its ratio to CE's median and the median of the rounds' ratios; the
    accuracy (and noise AUROC) of each run with mean and std."""
    result: dict = {}
    for time_key in TIMES:
        times = [run[time_key] for run in runs]
        result.update({time_key: times, f"{time_key}_median": median(times),
                       f"{time_key}_ratio": ratio(median(times), median([run[time_key] for run in baseline])),
                       f"{time_key}_round_ratio_median": median([ratio(run[time_key], base[time_key])
                                                                 for run, base in zip(runs, baseline)])})
    for figure in ("test_acc", "noise_auroc"):
        values = [run[figure] for run in runs if run[figure] is not None]
        if values:
            result.update({figure: values, f"{figure}_mean": statistics.mean(values),
                           f"{figure}_std": statistics.pstdev(values)})
    return result


def summary_line(label: str, name: str, result: dict) -> str:
    def times(time_key: str) -> str:
        ratios = [f"{value:.2f}x" if value is not None else "-" for value in
                  (result[f"{time_key}_ratio"], result[f"{time_key}_round_ratio_median"])]
        return f"{seconds(result[f'{time_key}_median'])} ({ratios[0]} CE; rounds' median {ratios[1]})"

    auroc = (f", noise AUROC {result['noise_auroc_mean']:.3f} ± {result['noise_auroc_std']:.3f}"
             if "noise_auroc_mean" in result else "")
    return (f"{label} {name}: median stage {times('wall_s')}, process {times('process_s')}; "
            f"test_acc {result['test_acc_mean']:.4f} ± {result['test_acc_std']:.4f}{auroc}")


def main(argv: list[str]) -> dict:
    arguments = parse_arguments(argv)
    configs = {}
    try:
        with tempfile.TemporaryDirectory(prefix="curvenet-stage-cost-") as scratch:
            root = Path(arguments.run_dir or scratch).resolve()
            plans = [(setting, plan(setting, arguments.runs, arguments.rounds))
                     for setting in settings(arguments, root)]
            for setting, planned in plans:
                configs[setting.label] = measure_setting(setting, planned, arguments.rounds, arguments.nproc)
    except (ConfigError, CurveStoreError, DataError) as error:
        print(error_line(error), file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT_CODE)
    for label, measured in configs.items():
        for name, result in measured["methods"].items():
            print(summary_line(label, name, result), flush=True)
    return {"rounds": arguments.rounds, "world_size": arguments.nproc, "overrides": arguments.overrides,
            "runs": arguments.runs, "configs": configs}
