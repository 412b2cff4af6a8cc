"""Classify image files with a finished run's model: `python -m curvenet_dist.predict`.

Images go through the loader the run evaluated with (model.yaml's `loader`), built as evaluation builds it, so
each is decoded, resized and normalised exactly as the run's test images were, then through the network under the
same autocast. Images come as files, as data_prep list files (`<relative path> <label> [<true label>]` lines) or
as a prepared dataset's split CSV (`path,label,true_label`); their labels are not used.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from curvenet_dist.config import Config, ConfigError, DataConfig
from curvenet_dist.data.loader import build_loader
from curvenet_dist.data.sample_table import COLUMN_TYPES, SPLITS, UNKNOWN, DataError, PreparedDataset, SampleTable
from curvenet_dist.engine.components import autocast_for
from curvenet_dist.engine.launch import USER_ERROR_EXIT_CODE, error_line
from curvenet_dist.engine.model_file import ClassProbabilities, ModelDescription, ModelFileError, load_run_model

PREPARED_HEADER = ",".join(COLUMN_TYPES)
IMAGES_ORIGIN = "the images to classify"


def _first_line(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.readline().strip()


def listed_images(path: Path, list_root: Path | None) -> list[str]:
    """The image paths `path` stands for: itself if it is an image file, else the entries of the prepared split
    CSV or data_prep list file it is (a list's paths relative to `list_root`, default: the list's folder)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix.lower() in Image.registered_extensions():
        return [str(path)]
    if _first_line(path) == PREPARED_HEADER.encode():
        split = PreparedDataset.read(path.parent).splits.get(path.stem)
        if split is None:
            raise DataError(f"{path}: a prepared dataset's CSV is one of its splits: "
                            f"{', '.join(f'{name}.csv' for name in SPLITS)}")
        return [str(split.image_path(sample_id)) for sample_id in range(len(split))]
    # Loaded here only: data_prep pulls in ffmpeg's bindings, which an image-only call never needs.
    from data_prep.image_folder import read_label_list

    root = list_root or path.parent
    return [str(root / entry.path) for entry in read_label_list(path, None)]


def images_table(inputs: list[Path], list_root: Path | None, num_classes: int) -> SampleTable:
    """One table of every image the inputs name, in order (repeats kept); labels are placeholders."""
    paths = [image for path in inputs for image in listed_images(path, list_root)]
    if not paths:
        raise DataError(f"{', '.join(map(str, inputs))}: no images listed")
    placeholders = np.zeros(len(paths), dtype=np.int64)
    return SampleTable(Path(), paths, placeholders, placeholders + UNKNOWN, num_classes, origin=IMAGES_ORIGIN)


def input_config(description: ModelDescription, batch_size: int, workers: int) -> DataConfig:
    return dataclasses.replace(description.data, eval_batch_size=batch_size, num_workers=workers)


def class_probabilities(model: torch.nn.Module, description: ModelDescription, table: SampleTable,
                        data: DataConfig, device: torch.device) -> np.ndarray:
    """[N, C] float32: every image's class probabilities, in table order."""
    loader = build_loader(data, table, train=False, rank=0, world_size=1, seed=0, device=device)
    autocast = autocast_for(Config(model=description.model), device)
    served = ClassProbabilities(model).eval()
    probabilities = np.empty((len(table), description.num_classes), dtype=np.float32)
    with torch.no_grad():
        for images, _, ids in loader:
            with autocast():
                batch = served(images.to(device, non_blocking=True))
            # The loader repeats a few images to fill its last batch: the same rows again.
            probabilities[ids.cpu().numpy()] = batch.cpu().numpy()
    return probabilities


def top_classes(probabilities: np.ndarray, k: int) -> np.ndarray:
    """[N, k]: each row's k most probable classes, most probable first; ties go to the lower class, as argmax."""
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :k]


def write_csv(path: Path, table: SampleTable, probabilities: np.ndarray, top: np.ndarray,
              class_names: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "rank", "class_index", "class", "probability"])
        for row, classes in enumerate(top):
            for rank, class_index in enumerate(classes, start=1):
                writer.writerow([table.paths[row], rank, int(class_index), class_names[class_index],
                                 f"{probabilities[row, class_index]:.6f}"])


def print_predictions(table: SampleTable, probabilities: np.ndarray, top: np.ndarray, class_names: list[str]) -> None:
    for row, classes in enumerate(top):
        fields = [table.paths[row]]
        for class_index in classes:
            fields += [class_names[class_index], f"{probabilities[row, class_index]:.4f}"]
        print("\t".join(fields))


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device on this machine")
        # With its index: the DALI loader decodes on the GPU it is given, and on the CPU without one.
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    defaults = DataConfig()
    parser = argparse.ArgumentParser(
        prog="python -m curvenet_dist.predict",
        description="Classify images with the model of a finished probe or allocate run (the allocate run's is the "
                    "one to use). Prints each image's path, then class name and probability of its top K classes, "
                    "tab-separated.")
    parser.add_argument("run_dir", type=Path, help="a finished run folder (holding model.yaml, model.safetensors)")
    parser.add_argument("inputs", type=Path, nargs="+", metavar="IMAGE_OR_LIST",
                        help="image files, data_prep list files or a prepared dataset's split CSV")
    parser.add_argument("--top", type=int, default=1, help="how many classes to show per image (default 1)")
    parser.add_argument("--csv", type=Path, help="also write path,rank,class_index,class,probability rows here")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda where there is a GPU")
    parser.add_argument("--images", type=Path, help="the folder list files' paths are relative to (default: "
                                                    "each list file's folder)")
    parser.add_argument("--batch-size", type=int, default=defaults.eval_batch_size)
    parser.add_argument("--workers", type=int, default=defaults.num_workers,
                        help="loader worker processes (torch) or threads (DALI)")
    arguments = parser.parse_args(argv)
    for name, low in (("top", 1), ("batch_size", 1), ("workers", 0)):
        if getattr(arguments, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be at least {low}")
    return arguments


def main(argv: list[str]) -> int:
    arguments = parse_arguments(argv)
    try:
        device = resolve_device(arguments.device)
        model, description = load_run_model(arguments.run_dir, device)
        if arguments.top > description.num_classes:
            raise ConfigError(f"--top {arguments.top}: the model has {description.num_classes} classes")
        table = images_table(arguments.inputs, arguments.images, description.num_classes)
        probabilities = class_probabilities(model, description, table,
                                            input_config(description, arguments.batch_size, arguments.workers), device)
    except (ModelFileError, DataError, ConfigError) as error:
        print(error_line(error), file=sys.stderr, flush=True)
        return USER_ERROR_EXIT_CODE
    top = top_classes(probabilities, arguments.top)
    print_predictions(table, probabilities, top, description.class_names)
    if arguments.csv:
        write_csv(arguments.csv, table, probabilities, top, description.class_names)
    print(f"{len(table)} images classified by {arguments.run_dir}'s model ({description.method}, "
          f"{description.num_classes} classes) on {device}", file=sys.stderr, flush=True)
    return 0
