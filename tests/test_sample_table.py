import re

import numpy as np
import pytest

from curvenet_dist.data.sample_table import DataError, PreparedDataset, SampleTable


def write_dataset(folder, train_rows: str):
    folder.mkdir(exist_ok=True)
    (folder / "classes.txt").write_text("cat\ndog\n")
    (folder / "train.csv").write_text("path,label,true_label\n" + train_rows)


def test_round_trip(tmp_path):
    table = SampleTable(tmp_path, ["a.png", "b.png"], np.array([0, 1]), np.array([1, -1]), 2)
    PreparedDataset(tmp_path, ["cat", "dog"], {"train": table}).write()
    read = PreparedDataset.read(tmp_path)
    assert read.splits["train"].paths == ["a.png", "b.png"]
    assert read.splits["train"].true_labels.tolist() == [1, -1]
    assert read.splits["train"].fingerprint() == table.fingerprint()


@pytest.mark.parametrize("rows, message", [
    ("a.png,0,0\nb.png,2,-1\n", r"train.csv:3: label 2 is outside \[0, 2\)"),
    ("a.png,0\n", "train.csv:2: expected 3 fields"),
    ("a.png,zero,0\n", "train.csv:2: labels must be integers"),
])
def test_bad_rows_name_file_and_line(tmp_path, rows, message):
    write_dataset(tmp_path, rows)
    with pytest.raises(DataError, match=message):
        PreparedDataset.read(tmp_path)


def test_missing_classes_file_says_what_is_expected(tmp_path):
    with pytest.raises(DataError, match="classes.txt: missing"):
        PreparedDataset.read(tmp_path)


@pytest.mark.parametrize("rows, message", [
    ("a.png,1.5,0\n", r"train.csv:2: labels must be integers, found '1.5', '0'"),
    ("a.png,0,0\n,1,0\n", "train.csv:3: the path is empty"),
    ("a.png,0,0\nb.png,0,1,1\n", "train.csv:3: expected 3 fields"),
])
def test_what_the_fast_reader_refuses_is_named_by_line(tmp_path, rows, message):
    write_dataset(tmp_path, rows)
    with pytest.raises(DataError, match=message):
        PreparedDataset.read(tmp_path)


def test_paths_that_look_like_missing_values_or_hold_commas_are_kept(tmp_path):
    paths = ["NA", "null", "a,b.png", " leading space.png"]
    labels = np.array([0, 1, 0, 1])
    SampleTable(tmp_path, paths, labels, labels, 2).write_csv(tmp_path / "train.csv")
    read = SampleTable.read_csv(tmp_path / "train.csv", tmp_path, 2)
    assert read.paths == paths and read.labels.tolist() == labels.tolist()


@pytest.mark.parametrize("file, content, message", [
    ("train.csv", b"path,label,true_label\na.png,0,0\ncaf\xe9.png,1,1\n", r"train.csv:3: not UTF-8 text \(byte offset 35"),
    ("test.csv", b"path,label,true_label\na.png,0,\xff\n", r"test.csv:2: not UTF-8 text \(byte offset 30"),
    ("classes.txt", b"cat\nd\xf6g\n", r"classes.txt:2: not UTF-8 text \(byte offset 5"),
    ("dataset.yaml", b"# r\xe9sum\xe9\nimage_root: .\n", r"dataset.yaml:1: not UTF-8 text \(byte offset 3"),
])
def test_a_file_that_is_not_utf8_is_named_with_its_line_and_byte(tmp_path, file, content, message):
    write_dataset(tmp_path, "a.png,0,0\n")
    (tmp_path / file).write_bytes(content)
    with pytest.raises(DataError, match=message):
        PreparedDataset.read(tmp_path)


@pytest.mark.parametrize("content, message", [
    ("image_root: /data\n  extra: : x\n", "dataset.yaml:2:8: not valid YAML: mapping values are not allowed here"),
    ("image_root: [a, b\n", "dataset.yaml:2:1: not valid YAML: expected ',' or ']', but got '<stream end>'"),
    ("- image_root\n- /data\n", "dataset.yaml: the top level must be a mapping"),
])
def test_a_dataset_yaml_that_cannot_be_read_is_named_with_its_line_and_column(tmp_path, content, message):
    write_dataset(tmp_path, "a.png,0,0\n")
    (tmp_path / "dataset.yaml").write_text(content)
    with pytest.raises(DataError, match=f"^{re.escape(str(tmp_path / message))}"):
        PreparedDataset.read(tmp_path)
