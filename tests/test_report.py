"""The allocate report's suspects: suspects.csv, suspects.png, and `python -m curvenet_dist.report` redrawing it."""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
from PIL import Image

from curvenet_dist.config import load_config
from curvenet_dist.data.datasets import Splits
from curvenet_dist.data.sample_table import PreparedDataset, SampleTable
from curvenet_dist.tracking.plots import plot_weights_by_class
from curvenet_dist.tracking.report import SUSPECTS_HEADER, suspect_order, write_suspects
from tests.conftest import REPO

CLASSES = ["cat", "dog, big", 'say "hi"']


def allocate_run_folder(tmp_path, num_samples=12):
    """A prepared dataset of real PNGs and a run folder holding what an allocate run leaves for the report."""
    dataset = tmp_path / "dataset"
    (dataset / "images").mkdir(parents=True)
    paths = [f"images/{i}, copy.png" if i == 3 else f"images/{i}.png" for i in range(num_samples)]
    for i, path in enumerate(paths):
        Image.new("RGB", (12, 12), (20 * i, 100, 0)).save(dataset / path)
    labels = np.arange(num_samples) % 3
    true_labels = np.where(np.arange(num_samples) < 6, (labels + 1) % 3, -1)
    table = SampleTable(dataset, paths, labels, true_labels, 3)
    PreparedDataset(dataset, CLASSES, {"train": table, "test": table}).write()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    load_config(None, ["data.source=prepared", f"data.path={dataset}"]).save(run_dir / "config.yaml")
    weights = np.linspace(0.9, 0.1, num_samples).astype(np.float32)
    predictions = (labels + 1) % 3
    top = write_suspects(run_dir / "suspects.csv", Splits(CLASSES, table, table.select([]), None, table), weights,
                         predictions)
    return run_dir, top, suspect_order(weights, labels, predictions)


def test_suspects_csv_lists_every_sample_in_suspect_order(tmp_path):
    run_dir, top, order = allocate_run_folder(tmp_path)
    raw = (run_dir / "suspects.csv").read_bytes()
    assert b"\r" not in raw
    with open(run_dir / "suspects.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == SUSPECTS_HEADER
    assert [row[1] for row in rows[1:]] == [str(i) for i in order]
    by_id = {row[1]: row for row in rows[1:]}
    rank = str(order.tolist().index(11) + 1)
    assert by_id["11"] == [rank, "11", "images/11.png", "0.100000", 'say "hi"', "cat", ""]
    rank = str(order.tolist().index(3) + 1)
    assert by_id["3"] == [rank, "3", "images/3, copy.png", f"{0.9 - 0.8 * 3 / 11:.6f}", "cat", "dog, big", "dog, big"]
    assert [s.path for s in top] == [row[2] for row in rows[1:]]


def report(*arguments):
    return subprocess.run([sys.executable, "-m", "curvenet_dist.report", *map(str, arguments)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_report_redraws_the_suspects_grid_for_a_run_folder(tmp_path):
    run_dir, _, _ = allocate_run_folder(tmp_path)
    result = report(run_dir, "--top", 4)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {run_dir / 'suspects.png'}"
    with Image.open(run_dir / "suspects.png") as one_row:
        one_row_height = one_row.size[1]
    assert report(run_dir, "--top", 12).returncode == 0
    with Image.open(run_dir / "suspects.png") as two_rows:
        assert two_rows.size[1] > 1.8 * one_row_height


def test_report_on_a_folder_that_is_not_an_allocate_run_says_so(tmp_path):
    result = report(tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'config.yaml'}: missing; is {tmp_path} an allocate run folder?"


def test_the_weights_figure_is_drawn_when_no_audited_sample_is_mislabeled(tmp_path):
    labels = np.array([0, 0, 1, 1])
    path = plot_weights_by_class(np.array([0.2, 0.4, 0.6, 0.8]), labels, np.zeros(4, dtype=bool), ["a", "b"],
                                 tmp_path / "weights_by_class.png")
    assert path.is_file() and path.stat().st_size > 0
