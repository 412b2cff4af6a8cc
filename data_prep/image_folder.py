"""Labelled image lists to a prepared dataset: the generic image folder, and the assembly every preparer shares.

A list file holds one `<relative path> <label> [<true label>]` line per image, its fields separated by
whitespace or by commas (a path with spaces needs commas; a line with commas is read as CSV, so a path that holds
a comma is written in double quotes), `#` comments allowed. A first line `path,label,true_label` is a header, so a
prepared dataset's train.csv, and the lists `python -m curvenet_dist.report` exports, are list files. The optional
true label is what an audit found (-1 or empty: not audited); the noise detection of a run is scored on the audited
samples. `prepare_image_folder` turns a folder of images and such lists (train, and optionally
meta, val, test) into a PreparedDataset. The Clothing1M and Food-101N preparers read their official
layouts into the same `ListedImage` lists and finish through `write_prepared_dataset`, which drops
repeated paths, finds listed images that do not exist, and writes the dataset with its quarantine list
and its quirks report.
"""

from __future__ import annotations

import csv
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from curvenet_dist.data.sample_table import (
    COLUMN_TYPES,
    LEAVES_IMAGE_ROOT,
    SPLITS,
    UNKNOWN,
    DataError,
    PreparedDataset,
    SampleTable,
    utf8_text,
)
from data_prep.image_check import QuarantinedImage, clear_progress, write_quarantine

QUIRKS_FILE = "quirks.txt"
MISSING_EXAMPLES = 5
"""How many missing images an error message names before it only counts the rest."""

LIST_LINE_FORMAT = "'<relative path> <label> [<true label>]'"
_COMMENT = re.compile(r"(^|\s)#.*$")


@dataclass(frozen=True)
class ListedImage:
    """One image as a list file gives it: path relative to the image root, labels, and where it was listed."""

    path: str
    label: int
    true_label: int
    source: str
    """'file:line', for messages."""


@dataclass
class Quirks:
    """Oddities of the input that preparation handled, by kind, each instance described on one line."""

    by_kind: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, detail: str) -> None:
        self.by_kind.setdefault(kind, []).append(detail)

    def counts(self) -> dict[str, int]:
        return {kind: len(details) for kind, details in self.by_kind.items()}

    def write(self, path: Path) -> None:
        lines = ["# Quirks of the input found while preparing this dataset: each kind, its count, every instance."]
        if not self.by_kind:
            lines.append("none")
        for kind, details in self.by_kind.items():
            lines.append(f"{kind}: {len(details)}")
            lines.extend(f"  {detail}" for detail in details)
        path.write_text("\n".join(lines) + "\n")


@dataclass
class PreparationResult:
    """The written dataset, the samples quarantined while writing it, and the quirks of its input."""

    dataset: PreparedDataset
    quarantined: list[QuarantinedImage]
    quirks: Quirks


def check_label(label: int, num_classes: int | None, source: str, name: str = "label") -> None:
    """Labels are in [0, num_classes), or without a class list, at least 0."""
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise DataError(
            f"{source}: {name} {label} is outside [0, {num_classes if num_classes is not None else 'inf'})"
        )


def relative_image_path(text: str, source: str) -> str:
    """A list entry's path, normalised; an absolute path or one leaving the image root is an error."""
    path = PurePosixPath(text.strip())
    if re.search(LEAVES_IMAGE_ROOT, str(path)):
        raise DataError(f"{source}: image path {text!r} must be relative to the image folder, without '..'")
    return str(path)


def numbered_lines(list_file: Path) -> list[tuple[int, str]]:
    """(line number, text) for every line of `list_file` that is not blank or a `#` comment."""
    if not list_file.is_file():
        raise DataError(f"{list_file}: list file not found")
    lines = []
    for line_number, line in enumerate(utf8_text(list_file).splitlines(), start=1):
        text = _COMMENT.sub("", line).strip()
        if text:
            lines.append((line_number, text))
    return lines


def list_fields(text: str) -> list[str]:
    """A list line's fields: one CSV record if it has a comma (so paths may hold spaces, and quoted, commas), else
    split at whitespace."""
    if "," in text:
        return [field.strip() for field in next(csv.reader([text], skipinitialspace=True))]
    return text.split()


def _integer(text: str, name: str, source: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{source}: {name} {text!r} is not an integer; each line is {LIST_LINE_FORMAT}") from None


def read_label_list(list_file: Path, num_classes: int | None) -> list[ListedImage]:
    """The entries of a `<relative path> <label> [<true label>]` list; with `num_classes`, labels must be in
    [0, num_classes). A missing, empty or -1 true label is UNKNOWN."""
    entries = []
    for line_number, text in numbered_lines(list_file):
        source = f"{list_file}:{line_number}"
        fields = list_fields(text)
        if line_number == 1 and fields in (["path", "label"], list(COLUMN_TYPES)):
            continue
        if len(fields) not in (2, 3):
            raise DataError(
                f"{source}: {len(fields)} field{'s' if len(fields) != 1 else ''} in {text!r}; each line is "
                f"{LIST_LINE_FORMAT}" + (" (a path with spaces needs commas between fields)" if len(fields) > 3 else "")
            )
        label = _integer(fields[1], "label", source)
        check_label(label, num_classes, source)
        true_label = UNKNOWN
        if len(fields) == 3 and fields[2] not in ("", str(UNKNOWN)):
            true_label = _integer(fields[2], "true label", source)
            check_label(true_label, num_classes, source, "true label")
        entries.append(ListedImage(relative_image_path(fields[0], source), label, true_label, source))
    return entries


def _existing_paths(image_root: Path, paths: set[str]) -> set[str]:
    """The subset of `paths` that are files under `image_root`, listing each folder once instead of a stat per file."""
    by_folder: dict[str, set[str]] = defaultdict(set)
    for path in paths:
        folder, _, name = path.rpartition("/")
        by_folder[folder].add(name)
    existing = set()
    for folder, names in by_folder.items():
        try:
            with os.scandir(image_root / folder) as entries:
                files = {entry.name for entry in entries if entry.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            continue
        existing.update(f"{folder}/{name}" if folder else name for name in names & files)
    return existing


def classes_without_meta(dataset: PreparedDataset) -> list[str]:
    """Classes with no meta sample: the allocate stage's class-balanced meta batches need every class."""
    if "meta" not in dataset.splits:
        return []
    counts = dataset.splits["meta"].class_counts()
    return [name for name, count in zip(dataset.class_names, counts, strict=True) if count == 0]


def write_prepared_dataset(
    out: Path,
    class_names: list[str],
    image_root: Path,
    splits: dict[str, list[ListedImage]],
    quirks: Quirks,
    skip_missing: bool = False,
) -> PreparationResult:
    """Write the listed splits (in SPLITS order) to `out` with `quarantine.csv` and `quirks.txt`.

    A path listed twice in one split keeps its first entry (a quirk). Listed images that do not exist are an
    error naming their list lines, or with `skip_missing` are quarantined.
    """
    out = Path(out)
    missing_examples: list[str] = []
    quarantined: list[QuarantinedImage] = []
    tables: dict[str, SampleTable] = {}
    for split in [split for split in SPLITS if split in splits]:
        first_seen: dict[str, ListedImage] = {}
        for entry in splits[split]:
            if entry.path in first_seen:
                earlier = first_seen[entry.path]
                detail = f"{entry.source}: {entry.path} (label {entry.label})"
                quirks.add(
                    f"path listed twice in the {split} split (first entry kept)",
                    f"{detail}, first at {earlier.source} (label {earlier.label})",
                )
            else:
                first_seen[entry.path] = entry
        existing = _existing_paths(image_root, set(first_seen))
        kept = []
        for entry in first_seen.values():
            if entry.path in existing:
                kept.append(entry)
                continue
            missing_examples.append(f"{entry.source}: {entry.path}")
            quarantined.append(
                QuarantinedImage(split, entry.path, f"missing: no image file (listed at {entry.source})")
            )
        tables[split] = SampleTable(
            image_root,
            [entry.path for entry in kept],
            np.array([entry.label for entry in kept], dtype=np.int64),
            np.array([entry.true_label for entry in kept], dtype=np.int64),
            len(class_names),
            origin=f"{out / split}.csv",
        )
    if missing_examples and not skip_missing:
        shown = "\n  ".join(missing_examples[:MISSING_EXAMPLES])
        more = len(missing_examples) - MISSING_EXAMPLES
        raise DataError(
            f"{len(missing_examples)} listed images do not exist under {image_root}:\n  {shown}"
            + (f"\n  ... and {more} more" if more > 0 else "")
            + "\n(pass --skip-missing to quarantine them and go on)"
        )
    if "train" not in tables or len(tables["train"]) == 0:
        raise DataError(f"{out}: no training samples to write")
    dataset = PreparedDataset(out, class_names, tables)
    dataset.write()
    write_quarantine(out, quarantined)
    clear_progress(out)
    quirks.write(out / QUIRKS_FILE)
    return PreparationResult(dataset, quarantined, quirks)


def read_class_names(classes_file: Path, header: str | None = None) -> list[str]:
    """One class name a line; a first line starting with `header` (Food-101N's `class_name`) is skipped."""
    if not classes_file.is_file():
        raise DataError(f"{classes_file}: class list not found")
    names = [text for _, text in numbered_lines(classes_file)]
    if header is not None and names and names[0].startswith(header):
        names = names[1:]
    if not names:
        raise DataError(f"{classes_file}: no class names")
    return names


def class_table(class_names: list[str], splits: dict[str, list[ListedImage]]) -> str:
    """Each class's name and its number of samples in every listed split, one class a line."""
    names = [split for split in SPLITS if split in splits]
    counts = {split: np.bincount([e.label for e in splits[split]], minlength=len(class_names)) for split in names}
    width = max(len("class"), *(len(name) for name in class_names))
    lines = [f"{'class':<{width}}  " + "  ".join(f"{split:>6}" for split in names)]
    for c, name in enumerate(class_names):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{counts[split][c]:>6}" for split in names))
    return "\n".join(lines)


def prepare_image_folder(
    images: Path,
    out: Path,
    train_list: Path,
    meta_list: Path | None = None,
    val_list: Path | None = None,
    test_list: Path | None = None,
    classes_file: Path | None = None,
    skip_missing: bool = False,
    allow_empty_classes: bool = False,
) -> PreparationResult:
    """A prepared dataset from a folder of images and list files of `<relative path> <label> [<true label>]` lines.

    Without `classes_file` (one class name a line), the classes are 0..max label, named by their number: the
    class table is printed, and a class with no training sample (a label typed wrong, say) stops the
    preparation unless `allow_empty_classes`.
    """
    class_names = read_class_names(classes_file) if classes_file is not None else None
    num_classes = len(class_names) if class_names is not None else None
    lists = {"train": train_list, "meta": meta_list, "val": val_list, "test": test_list}
    splits = {
        split: read_label_list(Path(list_file), num_classes)
        for split, list_file in lists.items()
        if list_file is not None
    }
    if class_names is None:
        highest = max((max(e.label, e.true_label) for entries in splits.values() for e in entries), default=-1)
        class_names = [str(label) for label in range(highest + 1)]
        print(class_table(class_names, splits))
        train_counts = np.bincount([e.label for e in splits["train"]], minlength=len(class_names))
        empty = [class_names[c] for c in np.flatnonzero(train_counts == 0)]
        if empty and not allow_empty_classes:
            raise DataError(
                f"{train_list}: class{'es' if len(empty) > 1 else ''} {', '.join(empty)} of 0..{highest} "
                f"{'have' if len(empty) > 1 else 'has'} no training samples (a wrong label?); name the classes "
                f"with --classes, or pass --allow-empty-classes"
            )
    # The lists of a clean split are its true labels too, unless they say otherwise.
    for split in ("meta", "val", "test"):
        if split in splits:
            splits[split] = [
                ListedImage(e.path, e.label, e.label if e.true_label == UNKNOWN else e.true_label, e.source)
                for e in splits[split]
            ]
    return write_prepared_dataset(out, class_names, Path(images), splits, Quirks(), skip_missing)
