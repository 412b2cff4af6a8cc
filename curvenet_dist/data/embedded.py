"""Datasets that ship as arrays (scikit-learn's digits, Debian's Fashion-MNIST), written once as image files.

Writing real image files keeps one contract for every source: a prepared-dataset folder that both the torch
and the DALI loader read. The folder is built in a temporary directory and renamed into place, so concurrent
ranks or a killed first run never leave a half-written dataset behind.
"""
from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from curvenet_dist.data.sample_table import DataError, PreparedDataset, SampleTable

DEFAULT_CACHE = Path(os.environ.get("CURVENET_DATA_CACHE", Path.home() / ".cache" / "curvenet-dist"))
FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def _write_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, num_classes: int) -> SampleTable:
    (folder / "images" / split).mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = f"images/{split}/{index:05d}.png"
        Image.fromarray(image).save(folder / path)
        paths.append(path)
    return SampleTable(folder, paths, labels, labels.copy(), num_classes)


def _materialize(folder: Path, class_names: list[str], splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    if (folder / "classes.txt").is_file():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        tables = {name: _write_split(staging, name, images, labels, len(class_names)) for name, (images, labels) in splits.items()}
        for table in tables.values():
            table.image_root = folder
        PreparedDataset(staging, class_names, tables).write()
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / "classes.txt").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def digits_dataset(folder: Path | None, test_fraction: float) -> PreparedDataset:
    """scikit-learn's 1,797 8x8 digits, split per class into train and a held-out clean test set."""
    from sklearn.datasets import load_digits

    folder = Path(folder) if folder else DEFAULT_CACHE / f"digits-test{test_fraction:g}"
    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    # The split is part of the dataset's definition, so its seed is fixed rather than the run's.
    rng = np.random.default_rng(0)
    test_rows = np.concatenate([
        rng.permutation(np.flatnonzero(labels == c))[: round(test_fraction * np.sum(labels == c))] for c in range(10)
    ])
    train_rows = np.setdiff1d(np.arange(len(labels)), test_rows)
    _materialize(folder, [str(c) for c in range(10)], {
        "train": (images[train_rows], labels[train_rows]),
        "test": (images[np.sort(test_rows)], labels[np.sort(test_rows)]),
    })
    return PreparedDataset.read(folder)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist_dataset(source: Path | None, folder: Path | None = None) -> PreparedDataset:
    """Fashion-MNIST (60k train, 10k test) from the idx files of Debian's `dataset-fashion-mnist` package."""
    source = Path(source) if source else FASHION_MNIST_DEBIAN
    files = {name: source / f"{name}-idx{3 if 'images' in name else 1}-ubyte.gz"
             for name in ("train-images", "train-labels", "t10k-images", "t10k-labels")}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. Install them with "
            f"`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or set data.path to a folder holding them."
        )
    folder = Path(folder) if folder else DEFAULT_CACHE / "fashion-mnist"
    arrays = {name: _read_idx(path) for name, path in files.items()}
    _materialize(folder, FASHION_MNIST_CLASSES, {
        "train": (arrays["train-images"], arrays["train-labels"].astype(np.int64)),
        "test": (arrays["t10k-images"], arrays["t10k-labels"].astype(np.int64)),
    })
    return PreparedDataset.read(folder)

