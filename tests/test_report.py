"""The allocate report: suspects.csv with its flags, suspects.png, the flagged set's scores, and `python -m
curvenet_dist.report` redrawing the figure."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pyarrow import csv as pyarrow_csv

from curvenet_dist.config import load_config
from curvenet_dist.data.datasets import Splits
from curvenet_dist.data.sample_table import PreparedDataset, SampleTable
from curvenet_dist.tracking.plots import plot_weights_by_class
from curvenet_dist.tracking.report import SUSPECTS_HEADER, write_allocate_report, wrong_labels_line
from tests.conftest import REPO

CLASSES = ["cat", "dog, big", 'say "hi"']
NUM_SAMPLES = 12
LABELS = np.arange(NUM_SAMPLES) % 3
# Samples 0-5 are known to be mislabeled, 6-11 unaudited. The model predicts another class than the given one for
# all but sample 5; the loss falls with the id, so in each class the first two samples are below its mean p.
TRUE_LABELS = np.where(np.arange(NUM_SAMPLES) < 6, (LABELS + 1) % 3, -1)
PREDICTIONS = np.where(np.arange(NUM_SAMPLES) == 5, LABELS, (LABELS + 1) % 3)
LOSSES = np.linspace(3.0, 0.1, NUM_SAMPLES).astype(np.float32)
FLAGGED = [0, 1, 2, 3, 4]


def write_images(folder, count):
    """`count` real PNGs under folder/images, one path holding a comma; their paths relative to `folder`."""
    (folder / "images").mkdir(parents=True)
    paths = [f"images/{i}, copy.png" if i == 3 else f"images/{i}.png" for i in range(count)]
    for i, path in enumerate(paths):
        Image.new("RGB", (12, 12), (20 * i, 100, 0)).save(folder / path)
    return paths


def allocate_run_folder(tmp_path):
    """A prepared dataset of real PNGs and a run folder holding what an allocate run's report leaves; the report's
    figures."""
    dataset = tmp_path / "dataset"
    table = SampleTable(dataset, write_images(dataset, NUM_SAMPLES), LABELS, TRUE_LABELS, 3)
    PreparedDataset(dataset, CLASSES, {"train": table, "test": table}).write()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    load_config(None, ["data.source=prepared", f"data.path={dataset}", "data.image_size=8"]).save(
        run_dir / "config.yaml")
    weights = np.linspace(0.9, 0.1, NUM_SAMPLES).astype(np.float32)
    report = write_allocate_report(run_dir, Splits(CLASSES, table, table.select([]), None, table), weights,
                                   PREDICTIONS, LOSSES, PREDICTIONS, ranks_samples=True)
    return run_dir, report


def read_suspects_csv(run_dir):
    return pyarrow_csv.read_csv(run_dir / "suspects.csv", convert_options=pyarrow_csv.ConvertOptions(
        strings_can_be_null=False)).to_pylist()


def test_suspects_csv_lists_every_sample_most_likely_wrong_first_with_its_score_and_flag(tmp_path):
    run_dir, _ = allocate_run_folder(tmp_path)
    assert b"\r" not in (run_dir / "suspects.csv").read_bytes()
    rows = read_suspects_csv(run_dir)
    assert list(rows[0]) == SUSPECTS_HEADER
    assert [row["sample_id"] for row in rows] == list(range(NUM_SAMPLES)), "the highest loss first"
    assert [row["rank"] for row in rows] == list(range(1, NUM_SAMPLES + 1))
    scores = [row["score"] for row in rows]
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_allclose(scores, 1 - np.exp(-LOSSES), rtol=1e-6)
    assert [row["sample_id"] for row in rows if row["flagged"]] == FLAGGED
    assert {key: rows[3][key] for key in ("path", "given_label", "predicted_label", "true_label")} == {
        "path": "images/3, copy.png", "given_label": "cat", "predicted_label": "dog, big", "true_label": "dog, big"}
    assert {key: rows[11][key] for key in ("given_label", "predicted_label", "true_label")} == {
        "given_label": 'say "hi"', "predicted_label": "cat", "true_label": ""}
    assert rows[11]["weight"] == pytest.approx(0.1)


def test_the_report_counts_the_flagged_and_scores_them_on_the_known_true_labels(tmp_path):
    _, report = allocate_run_folder(tmp_path)
    # Of the 6 known (all mislabeled) samples 5 are flagged; the unaudited ones do not count.
    assert report["flagged"] == 5
    assert report["flagged_precision"] == 1.0
    assert report["flagged_recall"] == pytest.approx(5 / 6)
    assert report["flagged_f1"] == pytest.approx(10 / 11)
    assert wrong_labels_line(5, 12) == ("5 labels look wrong (41.7% of the training set; per class in suspects.csv); "
                                        "the top 12 in suspects.png")


def report(*arguments):
    """`python -m curvenet_dist.report ARGUMENTS`, as users run it."""
    return subprocess.run([sys.executable, "-m", "curvenet_dist.report", *map(str, arguments)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_report_redraws_the_suspects_grid_for_a_run_folder(tmp_path):
    run_dir, _ = allocate_run_folder(tmp_path)
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
