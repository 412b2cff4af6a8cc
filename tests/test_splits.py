"""From the data config to a run's splits: a dataset is used as it is unless the config asks for synthetic bias."""
from __future__ import annotations

import numpy as np

from curvenet_dist.config import load_config
from curvenet_dist.data.datasets import build_splits
from curvenet_dist.data.sample_table import PreparedDataset, SampleTable
from tests.conftest import QUICKSTART


def prepared(folder, labels, true_labels):
    table = SampleTable(folder, [f"{i}.png" for i in range(len(labels))], np.array(labels), np.array(true_labels), 3)
    PreparedDataset(folder, ["a", "b", "c"], {"train": table, "test": table.select([0, 1, 2])}).write()
    return folder


def test_default_config_applies_no_bias_to_a_prepared_dataset(tmp_path, capsys):
    labels = [0, 1, 2] * 20
    folder = prepared(tmp_path, labels, [-1] * 50 + labels[50:])
    config = load_config(None, ["data.source=prepared", f"data.path={folder}"])
    splits = build_splits(config.data, config.bias)
    assert splits.train.labels.tolist() == labels and splits.train.true_labels.tolist()[:50] == [-1] * 50
    assert len(splits.carved_meta) == 0
    out = capsys.readouterr().out
    assert out == (f"data: prepared {folder} (3 classes); synthetic bias: none; train 60, test 3, "
                   "true label known for 10 training samples\n")


def test_the_bias_a_config_asks_for_is_applied_and_said(capsys):
    config = load_config(QUICKSTART)
    splits = build_splits(config.data, config.bias)
    line = capsys.readouterr().out.strip()
    assert line.startswith("data: digits (10 classes); synthetic bias: meta carve-out 10/class, long tail x10, "
                           "proportional noise 40% (seed 0); ")
    assert f"train {len(splits.train)} (of " in line and "carved meta 100" in line
    rates = [float(rate) for rate in line.split("noise rate by given class ")[1].split()]
    assert len(rates) == 10 and all(0.2 < rate < 0.55 for rate in rates), "near 40% in every class, never mostly noise"


def test_only_the_first_process_of_a_job_prints(tmp_path, capsys, monkeypatch):
    folder = prepared(tmp_path, [0, 1, 2] * 4, [0, 1, 2] * 4)
    config = load_config(None, ["data.source=prepared", f"data.path={folder}"])
    monkeypatch.setenv("RANK", "1")
    build_splits(config.data, config.bias)
    assert capsys.readouterr().out == ""


def test_test_per_class_takes_the_same_balanced_test_subset_for_every_run(capsys):
    config = load_config(QUICKSTART, ["data.test_per_class=20"])
    first = build_splits(config.data, config.bias).test
    other_seed = load_config(QUICKSTART, ["data.test_per_class=20", "bias.seed=3", "run.seed=3"])
    second = build_splits(other_seed.data, other_seed.bias).test
    assert np.bincount(first.labels).tolist() == [20] * 10
    assert first.paths == second.paths
