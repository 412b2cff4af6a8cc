"""Compare the probe and allocate runs of one MLflow experiment: a plain-text table, a CSV and a bar chart.

`python -m curvenet_dist.compare --experiment NAME [--tracking-uri URI] [--filter "tags.method = 'curvenet'"]
[--stage probe|allocate] [--sort COLUMN [--reverse]] [--plot compare.png] [--csv compare.csv]`

Each row is one run; the columns come from the tags and metrics the trainers log (rank 0):
- tags `stage`, `method`, `meta_source` (where the weighting's meta data came from: `carved`, `hierarchical`, ...),
  `dataset`, `noise_type` + `noise_rate`, `imbalance_factor`, `skip_layers`, `world_size`;
- the latest `test_acc`, `many_acc`, `medium_acc`, `few_acc` (fractions), `noise_auroc` and `wall_s`;
- `images_per_s`: the mean of the per-epoch `samples_per_s` history (all ranks together).
A value the run does not have is shown as `-` (an empty cell in the CSV, which also holds the full run id and
unrounded numbers). `--filter` is MLflow's search syntax (`tags.skip_layers = '2' and metrics.test_acc > 0.8`,
`params."bias.noise_rate" = '0.4'`); `--stage` adds `tags.stage = '...'` to it. `--sort` takes a column name:
metrics sort highest first, tags in ascending order (numeric tags by value), missing values last; `--reverse`
flips that.

The same comparison in the MLflow UI: open the experiment, tick the runs, press Compare. Runs line up by
- the tags `stage`, `method`, `meta_source`, `skip_layers`, `meta_sync`, `world_size`, `dataset`, `noise_type`, `noise_rate`,
  `imbalance_factor` (allocate runs also carry `probe_run_id`, the probe they were trained on);
- the params that differ between otherwise equal runs, e.g. `method`, `curvenet.skip_layers`, `meta.sync`,
  `bias.noise_rate`, `bias.imbalance_factor`, `data.source`, `allocate.epochs`;
- the metrics `test_acc`, `many_acc`, `medium_acc`, `few_acc`, `noise_auroc`, `noise_ap`, `wall_s`, and
  `samples_per_s` / `test_acc` against the step (epoch) in the metric charts.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from mlflow.entities import Run, ViewType  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402

from curvenet_dist.tracking.mlflow_tracker import first_line, limit_http_requests  # noqa: E402

QUICKSTART_TRACKING_URI = "sqlite:///runs/quickstart/mlflow.db"
Value = str | float | None


class ComparisonError(ValueError):
    """A tracking URI, experiment or filter that cannot be compared; the message says which and why."""


@dataclass(frozen=True)
class Column:
    name: str
    value: Callable[[Run, MlflowClient], Value]
    number_format: str = ""
    """How the table prints a number; empty for a text column."""


def tag(key: str) -> Callable[[Run, MlflowClient], Value]:
    return lambda run, client: run.data.tags.get(key)


def latest_metric(key: str) -> Callable[[Run, MlflowClient], Value]:
    return lambda run, client: run.data.metrics.get(key)


def noise(run: Run, client: MlflowClient) -> Value:
    tags = run.data.tags
    if "noise_type" not in tags:
        return None
    return f"{tags['noise_type']} {tags.get('noise_rate', '?')}"


def mean_images_per_s(run: Run, client: MlflowClient) -> Value:
    # run.data.metrics only holds the last epoch's throughput; the whole run's is the mean over the history.
    history = client.get_metric_history(run.info.run_id, "samples_per_s")
    return statistics.fmean(m.value for m in history) if history else None


COLUMNS = [
    Column("run", lambda run, client: run.info.run_name or None),
    Column("run_id", lambda run, client: run.info.run_id),
    Column("stage", tag("stage")),
    Column("method", tag("method")),
    Column("meta_source", tag("meta_source")),
    Column("dataset", tag("dataset")),
    Column("noise", noise),
    Column("imbalance", tag("imbalance_factor")),
    Column("skip_layers", tag("skip_layers")),
    Column("world_size", tag("world_size")),
    Column("test_acc", latest_metric("test_acc"), "{:.4f}"),
    Column("many_acc", latest_metric("many_acc"), "{:.4f}"),
    Column("medium_acc", latest_metric("medium_acc"), "{:.4f}"),
    Column("few_acc", latest_metric("few_acc"), "{:.4f}"),
    Column("noise_auroc", latest_metric("noise_auroc"), "{:.4f}"),
    Column("wall_s", latest_metric("wall_s"), "{:.1f}"),
    Column("images_per_s", mean_images_per_s, "{:.1f}"),
]
COLUMN_NAMES = [column.name for column in COLUMNS]
NUMBER_COLUMNS = {column.name for column in COLUMNS if column.number_format}
SHORT_RUN_ID = 8


def resolve_tracking_uri(argument: str | None) -> str:
    uri = argument or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ComparisonError("no tracking URI: pass --tracking-uri URI or set MLFLOW_TRACKING_URI "
                              f"(the quickstart's store is {QUICKSTART_TRACKING_URI})")
    # MLflow would silently create an empty database at a mistyped path.
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ComparisonError(f"no MLflow store at {uri}: the file {uri.removeprefix('sqlite:///')} does not exist")
    return uri


def find_experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        existing = sorted(e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY))
        raise ComparisonError(f"no MLflow experiment named '{name}' at {uri}; "
                              f"experiments there: {', '.join(existing) or 'none'}")
    return experiment.experiment_id


def combined_filter(filter_string: str, stage: str | None) -> str:
    # MLflow's search syntax only joins clauses with `and`, so appending one cannot change the user's clauses.
    clauses = [clause for clause in (filter_string.strip(), f"tags.stage = '{stage}'" if stage else "") if clause]
    return " and ".join(clauses)


def search_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    """Every active run of the experiment that matches, oldest first."""
    runs: list[Run] = []
    page_token = None
    while True:
        try:
            page = client.search_runs([experiment_id], filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY,
                                      order_by=["attributes.start_time ASC"], page_token=page_token)
        except MlflowException as error:
            if error.error_code != "INVALID_PARAMETER_VALUE":
                raise
            raise ComparisonError(f"MLflow refused the filter \"{filter_string}\": "
                                  f"{error.message.strip().splitlines()[0]}") from None
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def comparison_rows(client: MlflowClient, runs: list[Run]) -> list[dict[str, Value]]:
    return [{column.name: column.value(run, client) for column in COLUMNS} for run in runs]


def sort_rows(rows: list[dict[str, Value]], key: str, reverse: bool) -> list[dict[str, Value]]:
    """Metrics highest first, tags in ascending order (numbers by value: skip_layers 2 before 10); missing last."""

    def order(value: Value) -> tuple[int, float, str]:
        try:
            return 0, float(value), ""
        except ValueError:
            return 1, 0.0, value

    present = [row for row in rows if row[key] is not None]
    missing = [row for row in rows if row[key] is None]
    highest_first = (key in NUMBER_COLUMNS) != reverse
    return sorted(present, key=lambda row: order(row[key]), reverse=highest_first) + missing


def format_cell(column: Column, value: Value) -> str:
    if value is None:
        return "-"
    if column.number_format:
        return column.number_format.format(value)
    if column.name == "run_id":
        return value[:SHORT_RUN_ID]
    return value


def format_table(rows: list[dict[str, Value]]) -> str:
    """Columns two spaces apart (no cell holds two spaces in a row), numbers right-aligned."""
    cells = [[format_cell(column, row[column.name]) for column in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in [COLUMN_NAMES, *cells]) for i in range(len(COLUMNS))]

    def line(values: list[str]) -> str:
        return "  ".join(value.rjust(width) if column.name in NUMBER_COLUMNS else value.ljust(width)
                         for column, value, width in zip(COLUMNS, values, widths)).rstrip()

    return "\n".join(line(values) for values in [COLUMN_NAMES, *cells])


def write_csv(rows: list[dict[str, Value]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMN_NAMES)
        writer.writeheader()
        writer.writerows({name: "" if value is None else value for name, value in row.items()} for row in rows)


def run_label(row: dict[str, Value]) -> str:
    details = [row["method"] or "?"]
    if row["skip_layers"] is not None:
        details.append(f"k={row['skip_layers']}")
    if row["world_size"] is not None:
        details.append(f"{row['world_size']} rank(s)")
    return f"{row['run'] or '-'} ({row['run_id'][:SHORT_RUN_ID]})\n{', '.join(details)}"


def plot_comparison(rows: list[dict[str, Value]], path: Path, title: str) -> None:
    """Grouped bars per run: test, many, medium and few-shot accuracy, and the weights' noise AUROC where known."""
    bars = [("test_acc", "test"), ("many_acc", "many-shot"), ("medium_acc", "medium-shot"), ("few_acc", "few-shot")]
    if any(row["noise_auroc"] is not None for row in rows):
        bars.append(("noise_auroc", "noise AUROC"))
    width = 0.8 / len(bars)
    positions = np.arange(len(rows))
    figure, axis = plt.subplots(figsize=(max(6.0, 1.6 * len(rows) + 1.5), 4.5))
    for index, (key, label) in enumerate(bars):
        heights = [np.nan if row[key] is None else row[key] for row in rows]
        container = axis.bar(positions + (index - (len(bars) - 1) / 2) * width, heights, width, label=label)
        axis.bar_label(container, fmt="%.2f", fontsize=6, padding=1)
    axis.set_xticks(positions, [run_label(row) for row in rows], fontsize=7)
    axis.set_ylim(0, 1.08)
    axis.set_ylabel("accuracy (fraction) / AUROC")
    axis.set_title(title, fontsize=9)
    axis.legend(ncol=len(bars), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m curvenet_dist.compare",
                                     description="Compare the runs of one MLflow experiment.")
    parser.add_argument("--experiment", required=True, help="MLflow experiment name (tracking.experiment)")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI")
    parser.add_argument("--filter", default="", help="MLflow search filter, e.g. \"tags.method = 'curvenet'\"")
    parser.add_argument("--stage", choices=("probe", "allocate"), help="only runs of this stage")
    parser.add_argument("--sort", choices=COLUMN_NAMES, help="sort by this column (default: oldest run first)")
    parser.add_argument("--reverse", action="store_true",
                        help="with --sort: reverse the order (metrics lowest first, tags descending)")
    parser.add_argument("--plot", type=Path, help="write the comparison bar chart (PNG) here")
    parser.add_argument("--csv", type=Path, help="write the table as CSV here")
    return parser.parse_args(argv)


def compare(arguments: argparse.Namespace) -> None:
    uri = resolve_tracking_uri(arguments.tracking_uri)
    limit_http_requests()
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment_id = find_experiment_id(client, arguments.experiment, uri)
        filter_string = combined_filter(arguments.filter, arguments.stage)
        runs = search_runs(client, experiment_id, filter_string)
        if not runs:
            raise ComparisonError(f"no runs in experiment '{arguments.experiment}' at {uri}"
                                  + (f" match \"{filter_string}\"" if filter_string else ""))
        rows = comparison_rows(client, runs)
    except MlflowException as error:
        raise ComparisonError(f"MLflow at {uri}: {error.message.strip().splitlines()[0]}") from None
    except SQLAlchemyError as error:
        raise ComparisonError(f"the MLflow store {uri} cannot be read: {first_line(error)}") from None
    if arguments.sort:
        rows = sort_rows(rows, arguments.sort, arguments.reverse)
    print(format_table(rows))
    try:
        if arguments.csv:
            write_csv(rows, arguments.csv)
            print(f"table written to {arguments.csv}")
        if arguments.plot:
            title = f"experiment '{arguments.experiment}'" + (f": {filter_string}" if filter_string else "")
            plot_comparison(rows, arguments.plot, title)
            print(f"plot written to {arguments.plot}")
    except OSError as error:
        raise ComparisonError(f"cannot write {error.filename}: {error.strerror}") from None


def main(argv: list[str]) -> None:
    arguments = parse_arguments(argv)
    try:
        compare(arguments)
    except ComparisonError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
