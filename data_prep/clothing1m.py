"""Clothing1M (Xiao et al., 2015) in its official layout to a prepared dataset, by the standard protocol.

The root holds `images/<0-9>/<00-99>/*.jpg` and the annotation files, either beside `images/` or in an
`annotations/` folder: `category_names_eng.txt` (14 names), `noisy_label_kv.txt` and `clean_label_kv.txt`
(lines `images/x/yy/name.jpg <label>`), and the key lists `noisy_train_key_list.txt` and
`clean_{train,val,test}_key_list.txt`. The splits:

- train: noisy_train keys with their noisy label; true label from clean_label_kv where it has the key, else -1;
- meta, val, test: clean_train, clean_val, clean_test keys with their clean label.

Paths stay relative to the root, which is the image root.
"""

from __future__ import annotations

from pathlib import Path

from curvenet_dist.data.sample_table import UNKNOWN, DataError
from data_prep.image_folder import (
    ListedImage,
    PreparationResult,
    Quirks,
    numbered_lines,
    read_class_names,
    read_label_list,
    relative_image_path,
    write_prepared_dataset,
)

CLASS_NAMES_FILE = "category_names_eng.txt"
NOISY_LABELS_FILE = "noisy_label_kv.txt"
CLEAN_LABELS_FILE = "clean_label_kv.txt"
KEY_LIST_FILES = {
    "train": "noisy_train_key_list.txt",
    "meta": "clean_train_key_list.txt",
    "val": "clean_val_key_list.txt",
    "test": "clean_test_key_list.txt",
}
ANNOTATIONS_FOLDER = "annotations"


def find_annotation_file(root: Path, name: str) -> Path:
    """`name` beside `images/`, or in `annotations/` as some copies keep it."""
    for candidate in (root / name, root / ANNOTATIONS_FOLDER / name):
        if candidate.is_file():
            return candidate
    raise DataError(f"{root / name}: not found (nor {root / ANNOTATIONS_FOLDER / name}); is {root} a Clothing1M root?")


def read_label_file(label_file: Path, num_classes: int, quirks: Quirks) -> dict[str, ListedImage]:
    """key -> its entry; a key given twice keeps its first label (a quirk)."""
    labels: dict[str, ListedImage] = {}
    for entry in read_label_list(label_file, num_classes):
        if entry.path in labels:
            first = labels[entry.path]
            kind = (
                "key repeated in a label file"
                if first.label == entry.label
                else "key with two labels in a label file (first kept)"
            )
            quirks.add(
                kind,
                f"{entry.source}: {entry.path} (label {entry.label}), first at {first.source} (label {first.label})",
            )
        else:
            labels[entry.path] = entry
    return labels


def read_key_list(key_file: Path) -> list[tuple[str, str]]:
    """(key, 'file:line') for every key of a key list."""
    keys = []
    for line_number, text in numbered_lines(key_file):
        source = f"{key_file}:{line_number}"
        keys.append((relative_image_path(text, source), source))
    return keys


def prepare_clothing1m(root: Path, out: Path, skip_missing: bool = False) -> PreparationResult:
    root = Path(root)
    class_names = read_class_names(find_annotation_file(root, CLASS_NAMES_FILE))
    quirks = Quirks()
    noisy = read_label_file(find_annotation_file(root, NOISY_LABELS_FILE), len(class_names), quirks)
    clean = read_label_file(find_annotation_file(root, CLEAN_LABELS_FILE), len(class_names), quirks)

    splits: dict[str, list[ListedImage]] = {}
    for split, list_name in KEY_LIST_FILES.items():
        given_labels, label_file = (noisy, NOISY_LABELS_FILE) if split == "train" else (clean, CLEAN_LABELS_FILE)
        entries = []
        for key, source in read_key_list(find_annotation_file(root, list_name)):
            if key not in given_labels:
                quirks.add(f"{split} key with no label in {label_file} (left out)", f"{source}: {key}")
                continue
            true_label = clean[key].label if key in clean else UNKNOWN
            entries.append(ListedImage(key, given_labels[key].label, true_label, source))
        splits[split] = entries

    train_keys = {entry.path for entry in splits["train"]}
    for split in ("meta", "val", "test"):
        for entry in splits[split]:
            if entry.path in train_keys:
                quirks.add(
                    f"{split} image also in the noisy train split (kept in both)", f"{entry.source}: {entry.path}"
                )
    return write_prepared_dataset(out, class_names, root, splits, quirks, skip_missing)
