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
