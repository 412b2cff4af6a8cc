"""The data preparation CLI: `python -m data_prep {clothing1m,food101n,image-folder,check} ...`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from curvenet_dist.data.sample_table import DataError, PreparedDataset
from data_prep.clothing1m import prepare_clothing1m
from data_prep.food101n import prepare_food101n
from data_prep.image_check import QUARANTINE_FILE, CheckResult, FfmpegFailure, QuarantinedImage, check_dataset
from data_prep.image_folder import QUIRKS_FILE, Quirks, classes_without_meta, prepare_image_folder

DEFAULT_REENCODE_FOLDER = "images_256"


def summary(dataset: PreparedDataset, quarantined: list[QuarantinedImage], quirks: Quirks | None) -> str:
    """Split sizes, class count range, quarantine and quirk counts, and a warning for classes missing from meta."""
    lines = [
        f"prepared dataset {dataset.folder}",
        f"  image root: {next(iter(dataset.splits.values())).image_root}",
        f"  classes: {dataset.num_classes}",
    ]
    for split, table in dataset.splits.items():
        counts = table.class_counts()
        known = int((table.true_labels >= 0).sum())
        lines.append(
            f"  {split}: {len(table)} samples, per class min {counts.min()} / max {counts.max()}, "
            f"true label known for {known}"
        )
    lines.append(f"  quarantined: {len(quarantined)} (listed in {dataset.folder / QUARANTINE_FILE})")
    if quirks is not None:
        lines.append(f"  quirks: {sum(quirks.counts().values())} (listed in {dataset.folder / QUIRKS_FILE})")
        lines.extend(f"    {kind}: {count}" for kind, count in quirks.counts().items())
    if "meta" not in dataset.splits:
        lines.append(
            "  no meta split: the allocate stage must build one (a carve-out, or low-probe-loss samples per class)"
        )
    elif missing := classes_without_meta(dataset):
        lines.append(f"  warning: {len(missing)} classes have no meta samples: {', '.join(missing)}")
    return "\n".join(lines)


def run_check(folder: Path, args: argparse.Namespace) -> CheckResult:
    """Check (and re-encode) the dataset in `folder` as `args` ask, saying how many images it decoded."""
    reencode_root = None
    if args.reencode:
        reencode_root = args.reencode_root or folder / DEFAULT_REENCODE_FOLDER
    result = check_dataset(folder, workers=args.workers, reencode_root=reencode_root, restart=args.restart)
    print(
        f"checked {result.checked} images ({result.resumed} done by an earlier run)"
        + (f", re-encoded into {reencode_root}" if reencode_root else "")
    )
    return result


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description="Prepare Clothing1M, Food-101N or a labelled image folder as a prepared dataset; check its images.",
    )
    commands = main_parser.add_subparsers(dest="command", required=True)

    check_options = argparse.ArgumentParser(add_help=False)
    check_options.add_argument("--reencode", action="store_true", help="re-encode to JPEG, short side 256")
    check_options.add_argument(
        "--reencode-root", type=Path, help=f"where re-encoded images go (default: <dataset>/{DEFAULT_REENCODE_FOLDER})"
    )
    check_options.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel decoding threads (and ffmpeg processes)")
    check_options.add_argument("--restart", action="store_true", help="ignore the progress of an earlier check")

    prepare_options = argparse.ArgumentParser(add_help=False, parents=[check_options])
    prepare_options.add_argument("--out", type=Path, required=True, help="the prepared dataset folder to write")
    prepare_options.add_argument("--check", action="store_true", help="decode-check every image after preparing")
    prepare_options.add_argument(
        "--skip-missing", action="store_true", help="quarantine listed images that do not exist instead of stopping"
    )

    clothing = commands.add_parser("clothing1m", parents=[prepare_options], help="Clothing1M, official layout")
    clothing.add_argument("--root", type=Path, required=True, help="the folder holding images/ and the lists")

    food = commands.add_parser("food101n", parents=[prepare_options], help="Food-101N, test set from Food-101")
    food.add_argument("--food101n-root", type=Path, required=True, help="the Food-101N_release folder")
    food.add_argument("--food101-root", type=Path, required=True, help="the food-101 folder")

    folder = commands.add_parser(
        "image-folder", parents=[prepare_options], help="images with '<path> <label> [<true label>]' lists"
    )
    folder.add_argument("--images", type=Path, required=True, help="the folder the list paths are relative to")
    folder.add_argument("--train-list", type=Path, required=True)
    folder.add_argument("--meta-list", type=Path)
    folder.add_argument("--val-list", type=Path)
    folder.add_argument("--test-list", type=Path)
    folder.add_argument("--classes", type=Path, help="class names, one a line (default: the labels' numbers)")
    folder.add_argument(
        "--allow-empty-classes", action="store_true", help="without --classes, keep classes with no training samples"
    )

    check = commands.add_parser("check", parents=[check_options], help="decode-check a prepared dataset")
    check.add_argument("--dataset", type=Path, required=True, help="a prepared dataset folder")
    return main_parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "check":
            checked = run_check(args.dataset, args)
            print(summary(checked.dataset, checked.quarantined, None))
            return 0
        if args.command == "clothing1m":
            result = prepare_clothing1m(args.root, args.out, args.skip_missing)
        elif args.command == "food101n":
            result = prepare_food101n(args.food101n_root, args.food101_root, args.out, args.skip_missing)
        else:
            result = prepare_image_folder(
                args.images,
                args.out,
                args.train_list,
                args.meta_list,
                args.val_list,
                args.test_list,
                args.classes,
                args.skip_missing,
                args.allow_empty_classes,
            )
        dataset, quarantined = result.dataset, result.quarantined
        if args.check or args.reencode:
            checked = run_check(args.out, args)
            dataset, quarantined = checked.dataset, checked.quarantined
        print(summary(dataset, quarantined, result.quirks))
    except (DataError, FfmpegFailure) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
