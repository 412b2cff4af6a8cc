"""Tiny datasets written in the exact official layouts of Clothing1M, Food-101N + Food-101, and an image folder.

Each builder writes real JPEG (or PNG) files whose colour is set by the image's true class, so a network
can learn them, and the label files the official releases ship. They are plain functions returning the
root, for the data preparation tests and for end-to-end tests that need a dataset on disk.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

CLOTHING1M_CLASSES = [
    "T-Shirt",
    "Shirt",
    "Knitwear",
    "Chiffon",
    "Sweater",
    "Hoodie",
    "Windbreaker",
    "Jacket",
    "Down Coat",
    "Suit",
    "Shawl",
    "Dress",
    "Vest",
    "Underwear",
]
FOOD_CLASSES = ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio"]
CORRUPT_KINDS = ("truncated", "empty", "text")
"""The broken files `corrupt_images=True` adds: a JPEG cut in half, a 0-byte file, and text named .jpg."""


def class_image(true_class: int, num_classes: int, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """An image whose mean colour is a function of its class, with some noise on top."""
    hue = true_class / num_classes
    base = np.array([np.sin(2 * np.pi * (hue + shift)) for shift in (0.0, 1 / 3, 2 / 3)]) * 100 + 128
    width, height = size
    pixels = base + rng.normal(0, 12, size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_image(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=90)


def write_corrupt_image(path: Path, kind: str, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "truncated":
        buffer = io.BytesIO()
        class_image(0, 2, (64, 48), rng).save(buffer, format="JPEG", quality=90)
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("this is not an image\n")


def clothing1m_key(index: int) -> str:
    return f"images/{index % 10}/{index // 10 % 100:02d}/{1000000 + index}.jpg"


def build_clothing1m(
    root: Path,
    *,
    train_per_class: int = 3,
    clean_per_class: int = 1,
    annotations_folder: bool = False,
    corrupt_images: bool = False,
    image_size: tuple[int, int] = (20, 16),
    seed: int = 0,
) -> Path:
    """A Clothing1M root: 14 classes; per class `train_per_class` noisy-train images and `clean_per_class`
    images in each of clean train/val/test.

    In each class, the last noisy-train image carries the next class's label (noise) and the first one also
    has a clean label. noisy_label_kv.txt also labels one image per class that no key list names, as the
    real file does. With `annotations_folder`, the label and list files go under `annotations/`; with
    `corrupt_images`, three broken files (CORRUPT_KINDS) join the noisy train split, at its end.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    num_classes = len(CLOTHING1M_CLASSES)
    lists: dict[str, list[str]] = {name: [] for name in ("noisy_train", "clean_train", "clean_val", "clean_test")}
    noisy_labels: list[str] = []
    clean_labels: list[str] = []
    index = 0

    def new_image(true_class: int) -> str:
        nonlocal index
        key = clothing1m_key(index)
        index += 1
        write_image(root / key, class_image(true_class, num_classes, image_size, rng))
        return key

    for true_class in range(num_classes):
        for position in range(train_per_class):
            key = new_image(true_class)
            noisy = (true_class + 1) % num_classes if position == train_per_class - 1 else true_class
            lists["noisy_train"].append(key)
            noisy_labels.append(f"{key} {noisy}")
            if position == 0:
                clean_labels.append(f"{key} {true_class}")
        for list_name in ("clean_train", "clean_val", "clean_test"):
            for _ in range(clean_per_class):
                key = new_image(true_class)
                lists[list_name].append(key)
                clean_labels.append(f"{key} {true_class}")
        noisy_labels.append(f"{new_image(true_class)} {true_class}")
    if corrupt_images:
        for kind in CORRUPT_KINDS:
            key = clothing1m_key(index)
            index += 1
            write_corrupt_image(root / key, kind, rng)
            lists["noisy_train"].append(key)
            noisy_labels.append(f"{key} 0")

    annotations = root / "annotations" if annotations_folder else root
    annotations.mkdir(parents=True, exist_ok=True)
    (annotations / "category_names_eng.txt").write_text("\n".join(CLOTHING1M_CLASSES) + "\n")
    (annotations / "noisy_label_kv.txt").write_text("\n".join(noisy_labels) + "\n")
    (annotations / "clean_label_kv.txt").write_text("\n".join(clean_labels) + "\n")
    for list_name, keys in lists.items():
        (annotations / f"{list_name}_key_list.txt").write_text("\n".join(keys) + "\n")
    return root


def food101n_key(class_name: str, index: int) -> str:
    return hashlib.md5(f"{class_name}-{index}".encode()).hexdigest() + ".jpg"


def build_food101n(
    root: Path,
    *,
    train_per_class: int = 3,
    test_per_class: int = 2,
    image_size: tuple[int, int] = (20, 16),
    seed: int = 0,
) -> Path:
    """`root/Food-101N_release` and `root/food-101` for the four classes of FOOD_CLASSES.

    Per class: `train_per_class` unverified images; two verified_train rows (one marked 1, one marked 0);
    one verified_val row marked 1; `test_per_class` Food-101 test images. Quirks, as in the real release:
    verified_val has one more row marked 0 (class 0), and one key is listed under classes 0 and 1 (both copies
    in imagelist.tsv), its class-0 copy verified (1) in verified_train.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    num_classes = len(FOOD_CLASSES)
    release = root / "Food-101N_release"
    image_list: list[str] = []
    verified: dict[str, list[str]] = {"train": [], "val": []}

    def new_image(class_index: int, key: str, true_class: int) -> str:
        class_and_key = f"{FOOD_CLASSES[class_index]}/{key}"
        write_image(release / "images" / class_and_key, class_image(true_class, num_classes, image_size, rng))
        image_list.append(class_and_key)
        return class_and_key

    for class_index, class_name in enumerate(FOOD_CLASSES):
        for position in range(train_per_class):
            new_image(class_index, food101n_key(class_name, position), class_index)
        verified["train"].append(f"{new_image(class_index, food101n_key(class_name, 100), class_index)}\t1")
        wrong_class = (class_index + 2) % num_classes
        verified["train"].append(f"{new_image(class_index, food101n_key(class_name, 101), wrong_class)}\t0")
        verified["val"].append(f"{new_image(class_index, food101n_key(class_name, 200), class_index)}\t1")
    verified["val"].append(f"{new_image(0, food101n_key(FOOD_CLASSES[0], 201), 3)}\t0")
    shared_key = food101n_key("shared", 0)
    verified["train"].append(f"{new_image(0, shared_key, 0)}\t1")
    new_image(1, shared_key, 0)

    meta = release / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "classes.txt").write_text("class_name\n" + "\n".join(FOOD_CLASSES) + "\n")
    (meta / "imagelist.tsv").write_text("class_name/key\n" + "\n".join(image_list) + "\n")
    for split, rows in verified.items():
        (meta / f"verified_{split}.tsv").write_text("class_name/key\tverification_label\n" + "\n".join(rows) + "\n")

    food101 = root / "food-101"
    test_rows = []
    for class_index, class_name in enumerate(FOOD_CLASSES):
        for position in range(test_per_class):
            image_id = f"{class_name}/{3000000 + 100 * class_index + position}"
            write_image(food101 / "images" / f"{image_id}.jpg", class_image(class_index, num_classes, image_size, rng))
            test_rows.append(image_id)
    (food101 / "meta").mkdir(parents=True, exist_ok=True)
    (food101 / "meta" / "classes.txt").write_text("\n".join(FOOD_CLASSES) + "\n")
    (food101 / "meta" / "test.txt").write_text("\n".join(test_rows) + "\n")
    return root


def build_image_folder(
    root: Path,
    *,
    num_classes: int = 3,
    train_per_class: int = 3,
    val_per_class: int = 1,
    image_size: tuple[int, int] = (30, 18),
    seed: int = 0,
) -> Path:
    """`root/images/<class>/<n>.png` with `root/train.txt` (whitespace-separated, with comments),
    `root/val.csv` (comma-separated) and `root/classes.txt`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = [f"class_{label}" for label in range(num_classes)]
    train_lines = ["# path label", ""]
    val_lines = []
    for label, name in enumerate(names):
        for position in range(train_per_class + val_per_class):
            path = f"{name}/{position}.png"
            write_image(root / "images" / path, class_image(label, num_classes, image_size, rng))
            if position < train_per_class:
                train_lines.append(f"{path}   {label}  # {name}")
            else:
                val_lines.append(f"{path},{label}")
    (root / "train.txt").write_text("\n".join(train_lines) + "\n")
    (root / "val.csv").write_text("\n".join(val_lines) + "\n")
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    return root
