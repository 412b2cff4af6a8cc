"""The allocate report: suspects.csv with its flags, suspects.png, the flagged set's scores, and `python -m
curvenet_dist.report` redrawing the figure and writing the training list without (or relabeled at) the flagged."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pyarrow import csv as pyarrow_csv

from curvenet_dist.config import load_config
from curvenet_dist.data.datasets import Splits, load_source
from curvenet_dist.data.loader import build_loader
from curvenet_dist.data.sample_table import PreparedDataset, SampleTable
from curvenet_dist.tracking.plots import plot_weights_by_class
from curvenet_dist.tracking.report import SUSPECTS_HEADER, main, write_allocate_report, wrong_labels_line
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
                                   PREDICTIONS, LOSSES, None, PREDICTIONS, ranks_samples=True)
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


def report_main(capsys, *arguments):
    """The same command's exit status, output and error output, run in this process."""
    status = main(list(map(str, arguments)))
    captured = capsys.readouterr()
    return status, captured.out.strip(), captured.err.strip()


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


def loads(out, image_root, num_classes):
    """The written training list, read as a prepared dataset's train.csv, and every image of it loaded."""
    table = SampleTable.read_csv(out, image_root, num_classes)
    data = load_config(None, ["data.image_size=8", "data.eval_batch_size=5"]).data
    loader = build_loader(data, table, train=False, rank=0, world_size=1, seed=0, device=torch.device("cpu"))
    assert sorted(torch.cat([ids for _, _, ids in loader]).tolist()) == list(range(len(table)))
    return table


def test_export_clean_writes_the_training_list_without_the_flagged_samples(tmp_path, capsys):
    run_dir, _ = allocate_run_folder(tmp_path)
    out = tmp_path / "clean" / "train.csv"
    assert report_main(capsys, run_dir, "--export-clean", out) == (
        0, f"wrote {out}: 7 of 12 training samples, the 5 flagged left out; paths relative to {tmp_path / 'dataset'}",
        "")
    train = PreparedDataset.read(tmp_path / "dataset").splits["train"]
    clean = loads(out, train.image_root, 3)
    kept = [i for i in range(NUM_SAMPLES) if i not in FLAGGED]
    assert clean.paths == [train.paths[i] for i in kept]
    assert clean.labels.tolist() == LABELS[kept].tolist() and clean.true_labels.tolist() == TRUE_LABELS[kept].tolist()
    assert report_main(capsys, run_dir, "--export-clean", out) == (2, "", f"error: {out}: exists; name a new file")


def test_relabel_replaces_exactly_the_flagged_samples_labels_with_the_prediction(tmp_path, capsys):
    run_dir, _ = allocate_run_folder(tmp_path)
    out = tmp_path / "relabeled.csv"
    assert report_main(capsys, run_dir, "--relabel", out)[0] == 0
    train = PreparedDataset.read(tmp_path / "dataset").splits["train"]
    relabeled = loads(out, train.image_root, 3)
    assert relabeled.paths == train.paths and relabeled.true_labels.tolist() == TRUE_LABELS.tolist()
    changed = np.flatnonzero(relabeled.labels != LABELS).tolist()
    assert changed == FLAGGED and relabeled.labels[changed].tolist() == PREDICTIONS[changed].tolist()


@pytest.mark.parametrize("option, kept", [("--export-clean", [i for i in range(NUM_SAMPLES) if i not in FLAGGED]),
                                          ("--relabel", list(range(NUM_SAMPLES)))])
def test_an_exported_list_round_trips_through_data_prep_image_folder(tmp_path, capsys, option, kept):
    from data_prep.__main__ import main as data_prep_main

    run_dir, _ = allocate_run_folder(tmp_path)
    out = tmp_path / "list.csv"
    assert report_main(capsys, run_dir, option, out)[0] == 0
    exported = SampleTable.read_csv(out, tmp_path / "dataset", 3)
    assert data_prep_main(["image-folder", "--images", str(tmp_path / "dataset"), "--train-list", str(out),
                           "--out", str(tmp_path / "prepared")]) == 0
    prepared = PreparedDataset.read(tmp_path / "prepared").splits["train"]
    train = PreparedDataset.read(tmp_path / "dataset").splits["train"]
    assert prepared.paths == exported.paths == [train.paths[i] for i in kept]
    assert ("images/3, copy.png" in prepared.paths) == (3 in kept), "a path holding a comma and a space survives"
    assert prepared.labels.tolist() == exported.labels.tolist()
    assert prepared.true_labels.tolist() == exported.true_labels.tolist() == TRUE_LABELS[kept].tolist()


def test_export_clean_of_a_digits_run_lists_the_image_paths_the_run_used(tmp_path, capsys):
    config = load_config(None, ["data.source=digits", "data.image_size=8"])
    train = load_source(config.data).splits["train"].select(np.arange(30))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config.save(run_dir / "config.yaml")
    predictions = (train.labels + 1) % 10
    losses = np.linspace(3.0, 0.1, 30)
    names = [str(c) for c in range(10)]
    write_allocate_report(run_dir, Splits(names, train, train.select([]), None, train), np.ones(30), predictions,
                          losses, None, predictions, ranks_samples=False)
    out = tmp_path / "clean.csv"
    status, line, _ = report_main(capsys, run_dir, "--export-clean", out)
    assert status == 0 and line.endswith(f"paths relative to {train.image_root}")
    clean = loads(out, train.image_root, 10)
    flagged = {row["sample_id"] for row in read_suspects_csv(run_dir) if row["flagged"]}
    kept = [i for i in range(30) if i not in flagged]
    assert 0 < len(flagged) < 30
    assert clean.paths == [train.paths[i] for i in kept] and clean.labels.tolist() == train.labels[kept].tolist()


@pytest.mark.parametrize("option", ["--export-clean", "--relabel"])
def test_exporting_from_a_run_folder_without_suspects_says_so(tmp_path, capsys, option):
    run_dir = tmp_path / "probe_run"
    run_dir.mkdir()
    load_config(None, ["data.source=digits"]).save(run_dir / "config.yaml")
    assert report_main(capsys, run_dir, option, tmp_path / "out.csv") == (
        2, "", f"error: {run_dir / 'suspects.csv'}: missing; is {run_dir} a finished allocate run folder?")
    assert not (tmp_path / "out.csv").exists()


def test_report_on_a_folder_that_is_not_an_allocate_run_says_so(tmp_path):
    result = report(tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'config.yaml'}: missing; is {tmp_path} an allocate run folder?"


def test_the_weights_figure_is_drawn_when_no_audited_sample_is_mislabeled(tmp_path):
    labels = np.array([0, 0, 1, 1])
    path = plot_weights_by_class(np.array([0.2, 0.4, 0.6, 0.8]), labels, np.zeros(4, dtype=bool), ["a", "b"],
                                 tmp_path / "weights_by_class.png")
    assert path.is_file() and path.stat().st_size > 0
