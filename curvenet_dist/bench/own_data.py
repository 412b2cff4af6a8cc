"""The own-data path end to end on real images: CE vs class-balanced CE vs CurveNet as a user runs them.

For each seed, a long-tailed, noisy image set is written as a user brings one (list files `path label true_label`
over real image files: scikit-learn's digits or Debian's Fashion-MNIST), prepared with `python -m data_prep
image-folder`, then probed and allocated with a config for prepared datasets (configs/prepared_small.yaml by
default). The long tail and the noise are made here, before the preparation; the runs apply no synthetic bias.
Figures as `bench methods`: accuracy per method and the weights' noise AUROC beside the mean-probe-loss detector's.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from curvenet_dist.bench.methods import add_run_arguments, run_seed, summarize
from curvenet_dist.config import BiasConfig, ConfigError
from curvenet_dist.data.bias import apply_bias, class_balanced_subset
from curvenet_dist.data.embedded import digits_dataset, fashion_mnist_dataset
from curvenet_dist.data.sample_table import SampleTable


def write_list(path: Path, table: SampleTable, with_true_labels: bool) -> None:
    """`table` as an image-folder list file: `path label [true_label]` a line."""
    with open(path, "w") as file:
        for image, label, true_label in zip(table.paths, table.labels, table.true_labels):
            file.write(f"{image} {label} {true_label}\n" if with_true_labels else f"{image} {label}\n")


def image_set_bias(arguments: argparse.Namespace, seed: int) -> BiasConfig:
    """The long tail and noise the bench makes before the preparation (not a run's `bias.*`, which stays none)."""
    return BiasConfig(meta_per_class=arguments.meta_per_class, imbalance_factor=arguments.imbalance_factor,
                      noise_type=arguments.noise_type, noise_rate=arguments.noise_rate, seed=seed)


def prepare_image_set(folder: Path, arguments: argparse.Namespace, seed: int) -> Path:
    """The seed's image set as list files in `folder`, prepared into folder/prepared (kept: a rerun reuses it)."""
    prepared = folder / "prepared"
    if (prepared / "classes.txt").is_file():
        return prepared
    source = (digits_dataset(None, 0.3) if arguments.source == "digits" else fashion_mnist_dataset(None))
    split = apply_bias(source.splits["train"], image_set_bias(arguments, seed), arguments.train_per_class)
    test = source.splits["test"]
    if arguments.test_per_class:
        test = test.select(class_balanced_subset(test.labels, test.num_classes, arguments.test_per_class,
                                                 np.random.default_rng(0)))
    folder.mkdir(parents=True, exist_ok=True)
    write_list(folder / "train.txt", split.train, with_true_labels=True)
    write_list(folder / "test.txt", test, with_true_labels=False)
    # Without a meta list (--meta-per-class 0) a run needs meta.source=lowest_loss, as a user's would.
    meta_list = []
    if len(split.carved_meta):
        write_list(folder / "meta.txt", split.carved_meta, with_true_labels=False)
        meta_list = ["--meta-list", str(folder / "meta.txt")]
    print(f"seed {seed}: {len(split.train)} training images ({arguments.source}, per class "
          f"{np.bincount(split.train.labels, minlength=split.train.num_classes).tolist()}), "
          f"{np.mean(split.train.labels != split.train.true_labels):.3f} mislabeled", flush=True)
    subprocess.run([sys.executable, "-m", "data_prep", "image-folder", "--images", str(source.folder),
                    "--train-list", str(folder / "train.txt"), *meta_list, "--test-list", str(folder / "test.txt"),
                    "--out", str(prepared)],
                   check=True, stdout=subprocess.DEVNULL)
    return prepared


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m curvenet_dist.bench own_data", description=__doc__)
    parser.add_argument("--source", choices=("digits", "fashion_mnist"), default="digits")
    parser.add_argument("--train-per-class", type=int, default=0,
                        help="a class-balanced subset of the source's training images first (0: all)")
    parser.add_argument("--test-per-class", type=int, default=0, help="test images per class (0: all)")
    parser.add_argument("--meta-per-class", type=int, default=10, help="clean meta images per class (meta.txt)")
    parser.add_argument("--imbalance-factor", type=float, default=10)
    parser.add_argument("--noise-type", default="proportional")
    parser.add_argument("--noise-rate", type=float, default=0.4)
    add_run_arguments(parser, "prepared_small.yaml", ["ce", "balanced_ce", "curvenet"])
    arguments = parser.parse_args(argv)
    try:
        image_set_bias(arguments, 0).validate()
    except ConfigError as error:
        parser.error(str(error).replace("bias.", "--").replace("_", "-"))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(arguments.run_dir or scratch).resolve()
        runs = []
        for seed in arguments.seeds:
            prepared = prepare_image_set(root / f"seed{seed}" / "images", arguments, seed)
            base = ["--config", arguments.config, f"data.path={prepared}", *arguments.overrides, f"run.seed={seed}",
                    "tracking.enabled=false"]
            runs.append(run_seed(root, seed, base, arguments.methods, arguments.nproc))
    summary = {"seeds": arguments.seeds, "world_size": arguments.nproc, "config": arguments.config,
               "overrides": arguments.overrides,
               "image_set": {key: getattr(arguments, key) for key in (
                   "source", "train_per_class", "test_per_class", "meta_per_class", "imbalance_factor", "noise_type",
                   "noise_rate")},
               # Every allocate run reports the size of the training set it read.
               "train_samples": [next(iter(results.values()))["num_samples"] for results, _ in runs]}
    return summarize(runs, summary)
