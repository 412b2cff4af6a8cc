"""The sample table: every image of one split with its given label, true label and stable id.

A prepared dataset is a folder holding `classes.txt` (one class name a line) and one CSV per split
(`train.csv`, `meta.csv`, `val.csv`, `test.csv`) with the header `path,label,true_label`. `path` is
relative to the folder's `image_root` (written in `dataset.yaml`, default: the folder itself);
`true_label` is -1 where unknown. A sample's id is its row number in its split: the training split's
ids are the rows of the curve store.
"""
from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow
import pyarrow.compute as pyarrow_compute
import yaml
from pyarrow import csv as pyarrow_csv

SPLITS = ("train", "meta", "val", "test")
COLUMN_TYPES = {"path": pyarrow.string(), "label": pyarrow.int64(), "true_label": pyarrow.int64()}
UNKNOWN = -1
LEAVES_IMAGE_ROOT = r"^/|(^|/)\.\.(/|$)"
"""A sample path that is absolute or holds a '..': refused, so no image is read or written outside its root."""


class DataError(ValueError):
    """Bad input data: the message names the file, line or sample."""


@dataclass
class SampleTable:
    """One split: image paths (relative to `image_root`), given labels and true labels (-1 unknown)."""

    image_root: Path
    paths: list[str]
    labels: np.ndarray
    true_labels: np.ndarray
    num_classes: int
    origin: str = field(default="")
    """Where the table came from (a file path), for error messages."""

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.true_labels = np.asarray(self.true_labels, dtype=np.int64)
        if not (len(self.paths) == len(self.labels) == len(self.true_labels)):
            raise DataError(f"{self.origin}: paths, labels and true labels differ in length")
        for name, values, low in (("label", self.labels, 0), ("true_label", self.true_labels, UNKNOWN)):
            bad = np.flatnonzero((values < low) | (values >= self.num_classes))
            if bad.size:
                i = int(bad[0])
                raise DataError(
                    f"{self.origin}: sample {i} ({self.paths[i]}) has {name} {int(values[i])}, "
                    f"outside [0, {self.num_classes})"
                )

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def ids(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int64)

    @property
    def has_true_labels(self) -> bool:
        return len(self) > 0 and bool((self.true_labels != UNKNOWN).all())

    def image_path(self, sample_id: int) -> Path:
        return self.image_root / self.paths[sample_id]

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def select(self, rows: np.ndarray, labels: np.ndarray | None = None) -> "SampleTable":
        """A new table of the given rows (renumbered from 0), optionally with new given labels."""
        rows = np.asarray(rows, dtype=np.int64)
        return SampleTable(
            image_root=self.image_root,
            paths=[self.paths[i] for i in rows],
            labels=self.labels[rows] if labels is None else labels,
            true_labels=self.true_labels[rows],
            num_classes=self.num_classes,
            origin=self.origin,
        )

    def fingerprint(self) -> str:
        """A hash of paths and labels: two tables with the same fingerprint describe the same samples."""
        digest = hashlib.sha256()
        digest.update(str(self.num_classes).encode())
        digest.update("\n".join(self.paths).encode())
        digest.update(self.labels.tobytes())
        digest.update(self.true_labels.tobytes())
        return digest.hexdigest()[:16]

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["path", "label", "true_label"])
            writer.writerows(zip(self.paths, self.labels.tolist(), self.true_labels.tolist()))

    @classmethod
    def read_csv(cls, path: Path, image_root: Path, num_classes: int) -> "SampleTable":
        # Arrow's multi-threaded parser reads a million rows in ~0.3 s (a Python loop over rows took 3 s); a file it
        # refuses is read again as text to name the bad line.
        try:
            table = pyarrow_csv.read_csv(path, convert_options=pyarrow_csv.ConvertOptions(
                column_types=COLUMN_TYPES, strings_can_be_null=False, null_values=[]))
        except (pyarrow.ArrowInvalid, pyarrow.ArrowKeyError, OSError) as error:  # the file's content, or no file
            raise _bad_line(path) or DataError(f"{path}: cannot be read as path,label,true_label: {error}") from None
        paths = table.column("path").to_pylist() if table.column_names == list(COLUMN_TYPES) else []
        if table.column_names != list(COLUMN_TYPES) or not all(paths):
            raise _bad_line(path)
        outside = pyarrow_compute.match_substring_regex(table.column("path"), LEAVES_IMAGE_ROOT).to_numpy()
        for bad in np.flatnonzero(outside)[:1]:
            raise DataError(f"{path}:{bad + 2}: image path {paths[bad]!r} must be relative to the image root, "
                            "without '..'")
        labels, true_labels = (table.column(name).to_numpy().astype(np.int64) for name in ("label", "true_label"))
        for name, values, low in (("label", labels, 0), ("true_label", true_labels, UNKNOWN)):
            for bad in np.flatnonzero((values < low) | (values >= num_classes))[:1]:
                raise DataError(f"{path}:{bad + 2}: {name} {values[bad]} is outside [0, {num_classes})")
        return cls(image_root, paths, labels, true_labels, num_classes, origin=str(path))


def _bad_line(path: Path) -> DataError | None:
    """The first bad line of a sample-table CSV, as an error naming it (None if every line is good)."""
    reader = csv.reader(io.StringIO(utf8_text(path), newline=""))
    header = next(reader, None)
    if header != ["path", "label", "true_label"]:
        return DataError(f"{path}:1: expected the header 'path,label,true_label', found {header}")
    for line_number, row in enumerate(reader, start=2):
        if len(row) != 3:
            return DataError(f"{path}:{line_number}: expected 3 fields (path,label,true_label), found {len(row)}")
        if not row[0]:
            return DataError(f"{path}:{line_number}: the path is empty")
        try:
            int(row[1]), int(row[2])
        except ValueError:
            return DataError(f"{path}:{line_number}: labels must be integers, found {row[1]!r}, {row[2]!r}")
    return None


def utf8_text(path: Path) -> str:
    """The text of a file the dataset's tools read; bytes that are not UTF-8 are an error naming line and offset."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte offset {error.start}: {error.reason}); "
                        "save it as UTF-8") from None


def _dataset_info(path: Path) -> dict:
    """The mapping a dataset.yaml holds; YAML that does not parse, or is not a mapping, is one line naming where."""
    try:
        info = yaml.safe_load(utf8_text(path)) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or getattr(error, "context", None) or str(error)
        raise DataError(f"{where}: not valid YAML: {' '.join(problem.split())}") from None
    if not isinstance(info, dict):
        raise DataError(f"{path}: the top level must be a mapping (image_root: ...)")
    return info


@dataclass
class PreparedDataset:
    """A prepared dataset folder: class names and the four split tables (a split may be empty)."""

    folder: Path
    class_names: list[str]
    splits: dict[str, SampleTable]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "classes.txt").write_text("".join(f"{name}\n" for name in self.class_names))
        image_root = next(iter(self.splits.values())).image_root
        info = {"image_root": str(image_root.resolve())}
        (self.folder / "dataset.yaml").write_text(yaml.safe_dump(info))
        for split, table in self.splits.items():
            table.write_csv(self.folder / f"{split}.csv")

    @classmethod
    def read(cls, folder: Path) -> "PreparedDataset":
        folder = Path(folder)
        classes_file = folder / "classes.txt"
        if not classes_file.is_file():
            raise DataError(f"{classes_file}: missing; is {folder} a prepared dataset (see data_prep/)?")
        class_names = [line.strip() for line in utf8_text(classes_file).splitlines() if line.strip()]
        image_root = folder
        info_file = folder / "dataset.yaml"
        if info_file.is_file():
            info = _dataset_info(info_file)
            image_root = Path(info.get("image_root", folder))
        splits = {}
        for split in SPLITS:
            csv_path = folder / f"{split}.csv"
            if csv_path.is_file():
                splits[split] = SampleTable.read_csv(csv_path, image_root, len(class_names))
        if "train" not in splits:
            raise DataError(f"{folder / 'train.csv'}: missing; every prepared dataset needs a training split")
        return cls(folder, class_names, splits)
