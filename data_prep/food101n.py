"""Food-101N (Lee et al., 2018) with Food-101's test set to a prepared dataset, by the standard protocol.

Food-101N's root (`Food-101N_release/`) holds `images/<class>/<key>.jpg` and `meta/`: `classes.txt`
(a `class_name` header, then the 101 names), `imagelist.tsv` (a `class_name/key` header, then
`<class>/<key>.jpg` lines) and `verified_{train,val}.tsv` (a header, then `<class>/<key>.jpg<TAB>0|1`,
1 where a person confirmed the class). Food-101's root (`food-101/`) gives the test set:
`meta/test.txt` (`<class>/<id>` lines) and `images/<class>/<id>.jpg`. The splits:

- meta: verified_train rows marked 1;  val: verified_val rows marked 1;  test: Food-101's test list;
- train: imagelist rows that no verified file lists, labelled by their folder's class.

Rows marked 0 are known to be wrong and go nowhere. The same key (image) is sometimes listed under two
classes; each copy is its own sample, and a training copy takes as true label the class another copy of it
was verified as. Every such quirk is counted in the summary and listed in `quirks.txt`. The image root is
the deepest folder holding both roots.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from curvenet_dist.data.sample_table import UNKNOWN, DataError
from data_prep.image_folder import (
    ListedImage,
    PreparationResult,
    Quirks,
    numbered_lines,
    read_class_names,
    relative_image_path,
    write_prepared_dataset,
)

VERIFIED_FILES = {"meta": "verified_train.tsv", "val": "verified_val.tsv"}


@dataclass(frozen=True)
class ListedFood:
    """A `<class>/<key>.jpg` row of a Food-101N list file."""

    class_and_key: str
    label: int
    source: str

    @property
    def key(self) -> str:
        return self.class_and_key.rpartition("/")[2]


def _rows(list_file: Path) -> list[tuple[str, str]]:
    """(text, 'file:line') for every line after the `class_name...` header, if there is one."""
    rows = [(text, f"{list_file}:{line_number}") for line_number, text in numbered_lines(list_file)]
    return rows[1:] if rows and rows[0][0].startswith("class_name") else rows


def _parse_class_path(text: str, source: str, class_index: dict[str, int]) -> ListedFood:
    class_name, slash, key = text.partition("/")
    if not slash or not key:
        raise DataError(f"{source}: expected '<class>/<image>', found {text!r}")
    if class_name not in class_index:
        raise DataError(f"{source}: class {class_name!r} is not in the class list")
    return ListedFood(relative_image_path(text, source), class_index[class_name], source)


def read_image_list(list_file: Path, class_index: dict[str, int]) -> list[ListedFood]:
    if not list_file.is_file():
        raise DataError(f"{list_file}: list file not found")
    return [_parse_class_path(text, source, class_index) for text, source in _rows(list_file)]


def read_verified_list(list_file: Path, class_index: dict[str, int]) -> list[tuple[ListedFood, bool]]:
    """(row, whether its class was confirmed) for every row of a verified_*.tsv file."""
    if not list_file.is_file():
        raise DataError(f"{list_file}: list file not found")
    rows = []
    for text, source in _rows(list_file):
        fields = text.rsplit(None, 1)
        if len(fields) != 2 or fields[1] not in ("0", "1"):
            raise DataError(f"{source}: expected '<class>/<image>.jpg<TAB>0|1', found {text!r}")
        rows.append((_parse_class_path(fields[0], source, class_index), fields[1] == "1"))
    return rows


def prepare_food101n(
    food101n_root: Path, food101_root: Path, out: Path, skip_missing: bool = False
) -> PreparationResult:
    food101n_root, food101_root = Path(food101n_root).resolve(), Path(food101_root).resolve()
    image_root = Path(os.path.commonpath([food101n_root, food101_root]))
    food101n_images = PurePosixPath(food101n_root.relative_to(image_root).as_posix()) / "images"
    food101_images = PurePosixPath(food101_root.relative_to(image_root).as_posix()) / "images"
    meta_folder = food101n_root / "meta"
    class_names = read_class_names(meta_folder / "classes.txt", header="class_name")
    class_index = {name: index for index, name in enumerate(class_names)}
    quirks = Quirks()

    image_list = read_image_list(meta_folder / "imagelist.tsv", class_index)
    listed = {row.class_and_key for row in image_list}
    verified = {split: read_verified_list(meta_folder / name, class_index) for split, name in VERIFIED_FILES.items()}

    verified_class_of_key: dict[str, int] = {}
    for split, rows in verified.items():
        for row, confirmed in rows:
            if not confirmed:
                quirks.add(
                    f"{VERIFIED_FILES[split]} row marked 0 (wrong label, left out of every split)",
                    f"{row.source}: {row.class_and_key}",
                )
                continue
            if row.class_and_key not in listed:
                quirks.add(
                    "verified row marked 1 but not in imagelist.tsv (used anyway)", f"{row.source}: {row.class_and_key}"
                )
            earlier = verified_class_of_key.setdefault(row.key, row.label)
            if earlier != row.label:
                quirks.add(
                    "key verified as two different classes",
                    f"{row.source}: {row.class_and_key}, also verified as {class_names[earlier]}",
                )

    val_rows = {row.class_and_key for row, confirmed in verified["val"] if confirmed}
    splits: dict[str, list[ListedImage]] = {"train": [], "meta": [], "val": [], "test": []}
    for split, rows in verified.items():
        for row, confirmed in rows:
            if not confirmed:
                continue
            if split == "meta" and row.class_and_key in val_rows:
                quirks.add(
                    "row verified in both verified_train and verified_val (kept in val only)",
                    f"{row.source}: {row.class_and_key}",
                )
                continue
            splits[split].append(
                ListedImage(str(food101n_images / row.class_and_key), row.label, row.label, row.source)
            )

    classes_of_key: dict[str, set[str]] = defaultdict(set)
    for row in image_list:
        classes_of_key[row.key].add(class_names[row.label])
    for key, names in sorted(classes_of_key.items()):
        if len(names) > 1:
            quirks.add("key listed under two or more classes (each copy kept)", f"{key}: {', '.join(sorted(names))}")

    verified_rows = {row.class_and_key for rows in verified.values() for row, _ in rows}
    for row in image_list:
        if row.class_and_key in verified_rows:
            continue
        true_label = verified_class_of_key.get(row.key, UNKNOWN)
        if true_label != UNKNOWN:
            quirks.add(
                "train sample whose key was verified under a class (true label taken from it)",
                f"{row.source}: {row.class_and_key} is {class_names[true_label]}",
            )
        splits["train"].append(ListedImage(str(food101n_images / row.class_and_key), row.label, true_label, row.source))

    test_file = food101_root / "meta" / "test.txt"
    if not test_file.is_file():
        raise DataError(f"{test_file}: Food-101 test list not found; is {food101_root} a Food-101 root?")
    for line_number, text in numbered_lines(test_file):
        row = _parse_class_path(text, f"{test_file}:{line_number}", class_index)
        path = str(food101_images / f"{row.class_and_key}.jpg")
        splits["test"].append(ListedImage(path, row.label, row.label, row.source))
    return write_prepared_dataset(out, class_names, image_root, splits, quirks, skip_missing)
