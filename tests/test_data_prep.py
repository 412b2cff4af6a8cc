"""Data preparation through the real CLI on fixtures in the official layouts, with real ffmpeg decoding."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from curvenet_dist.data.sample_table import PreparedDataset
from data_prep.__main__ import main
from data_prep.image_check import CHECK_PROGRESS_FILE
from tests.official_layouts import (
    CLOTHING1M_CLASSES,
    FOOD_CLASSES,
    build_clothing1m,
    build_food101n,
    build_image_folder,
    clothing1m_key,
    food101n_key,
)

NUM_CLOTHING_CLASSES = len(CLOTHING1M_CLASSES)


def run_cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_image_folder(capsys: pytest.CaptureFixture, root: Path, out: Path, *options: object) -> tuple[int, str, str]:
    """`python -m data_prep image-folder` on a build_image_folder fixture, with extra options."""
    return run_cli(capsys, "image-folder", "--images", root / "images", "--train-list", root / "train.txt",
                   "--out", out, *options)


def run_food101n(capsys: pytest.CaptureFixture, root: Path, out: Path) -> tuple[int, str, str]:
    """`python -m data_prep food101n` on a build_food101n fixture."""
    return run_cli(capsys, "food101n", "--food101n-root", root / "Food-101N_release", "--food101-root",
                   root / "food-101", "--out", out)


def read_rows(csv_file: Path) -> list[list[str]]:
    with open(csv_file, newline="") as f:
        return list(csv.reader(f))[1:]


def test_clothing1m_standard_protocol(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = build_clothing1m(tmp_path / "clothing1m")
    code, out, _ = run_cli(capsys, "clothing1m", "--root", root, "--out", tmp_path / "prepared")
    assert code == 0

    dataset = PreparedDataset.read(tmp_path / "prepared")
    assert dataset.class_names == CLOTHING1M_CLASSES
    assert {split: len(table) for split, table in dataset.splits.items()} == {
        "train": 3 * NUM_CLOTHING_CLASSES,
        "meta": NUM_CLOTHING_CLASSES,
        "val": NUM_CLOTHING_CLASSES,
        "test": NUM_CLOTHING_CLASSES,
    }
    train = dataset.splits["train"]
    assert train.image_root == root.resolve()
    assert all((root / path).is_file() for path in train.paths)
    # Per class: images 0 and 1 keep their class, image 2 carries the next class's noisy label;
    # only image 0 is in clean_label_kv, so only it has a true label.
    expected_labels = [
        c if position < 2 else (c + 1) % NUM_CLOTHING_CLASSES
        for c in range(NUM_CLOTHING_CLASSES)
        for position in range(3)
    ]
    expected_true = [c if position == 0 else -1 for c in range(NUM_CLOTHING_CLASSES) for position in range(3)]
    assert train.labels.tolist() == expected_labels
    assert train.true_labels.tolist() == expected_true
    for split in ("meta", "val", "test"):
        table = dataset.splits[split]
        assert table.labels.tolist() == list(range(NUM_CLOTHING_CLASSES))
        assert (table.true_labels == table.labels).all()
    assert f"train: {3 * NUM_CLOTHING_CLASSES} samples, per class min 3 / max 3, true label known for 14" in out
    assert "quarantined: 0" in out


def test_clothing1m_annotations_folder_gives_the_same_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for variant, annotations_folder in (("flat", False), ("annotations", True)):
        root = build_clothing1m(tmp_path / variant, annotations_folder=annotations_folder)
        assert run_cli(capsys, "clothing1m", "--root", root, "--out", tmp_path / f"{variant}_out")[0] == 0
    assert not (tmp_path / "annotations" / "noisy_label_kv.txt").exists()
    for split in ("train", "meta", "val", "test"):
        assert read_rows(tmp_path / "flat_out" / f"{split}.csv") == read_rows(
            tmp_path / "annotations_out" / f"{split}.csv"
        )


def test_check_quarantines_corrupt_images_and_the_run_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = build_clothing1m(tmp_path / "clothing1m", train_per_class=1, clean_per_class=0, corrupt_images=True)
    out_folder = tmp_path / "prepared"
    code, out, _ = run_cli(capsys, "clothing1m", "--root", root, "--out", out_folder, "--check", "--workers", 2)
    assert code == 0

    first_corrupt = 2 * NUM_CLOTHING_CLASSES  # per class: 1 train image, 1 only in noisy_label_kv
    corrupt_keys = [clothing1m_key(first_corrupt + offset) for offset in range(3)]
    quarantined = {path: (split, reason) for split, path, reason in read_rows(out_folder / "quarantine.csv")}
    assert set(quarantined) == set(corrupt_keys)
    truncated, empty, text = (quarantined[key] for key in corrupt_keys)
    assert truncated[0] == "train" and truncated[1].startswith("undecodable")
    assert empty == ("train", "empty file")
    assert text[1].startswith("undecodable")
    train_paths = [row[0] for row in read_rows(out_folder / "train.csv")]
    assert len(train_paths) == NUM_CLOTHING_CLASSES and not set(train_paths) & set(corrupt_keys)
    assert "quarantined: 3" in out


def test_reencode_writes_jpegs_with_short_side_256(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = build_image_folder(tmp_path / "folder", image_size=(30, 18))
    out_folder = tmp_path / "prepared"
    code, _, _ = run_image_folder(capsys, root, out_folder, "--val-list", root / "val.csv",
                                  "--classes", root / "classes.txt", "--reencode", "--workers", 2)
    assert code == 0
    dataset = PreparedDataset.read(out_folder)
    assert yaml.safe_load((out_folder / "dataset.yaml").read_text())["image_root"] == str(
        (out_folder / "images_256").resolve()
    )
    for table in dataset.splits.values():
        for sample_id in table.ids:
            assert table.paths[sample_id].endswith(".jpg")
            with Image.open(table.image_path(sample_id)) as image:
                assert image.format == "JPEG"
                assert image.size == (427, 256)  # 30x18 scaled to a short side of 256 keeps the aspect ratio


def test_interrupted_check_resumes_without_rechecking(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = build_clothing1m(tmp_path / "clothing1m", train_per_class=1, clean_per_class=0)
    out_folder = tmp_path / "prepared"
    assert run_cli(capsys, "clothing1m", "--root", root, "--out", out_folder)[0] == 0
    progress_file = out_folder / CHECK_PROGRESS_FILE

    _, out, _ = run_cli(capsys, "check", "--dataset", out_folder, "--workers", 2)
    assert f"checked {NUM_CLOTHING_CLASSES} images (0 done by an earlier run)" in out

    # A run killed after 5 images, mid-way through writing the 6th row.
    lines = progress_file.read_text().splitlines(keepends=True)
    progress_file.write_text("".join(lines[:6]) + lines[6][:10])
    _, out, _ = run_cli(capsys, "check", "--dataset", out_folder, "--workers", 2)
    assert f"checked {NUM_CLOTHING_CLASSES - 5} images (5 done by an earlier run)" in out

    # Breaking an image already checked goes unnoticed until a restart: it is not decoded again.
    broken = PreparedDataset.read(out_folder).splits["train"].image_path(0)
    broken.write_text("broken after the check")
    _, out, _ = run_cli(capsys, "check", "--dataset", out_folder)
    assert f"checked 0 images ({NUM_CLOTHING_CLASSES} done by an earlier run)" in out
    assert "quarantined: 0" in out
    _, out, _ = run_cli(capsys, "check", "--dataset", out_folder, "--restart")
    assert f"checked {NUM_CLOTHING_CLASSES} images (0 done by an earlier run)" in out
    assert "quarantined: 1" in out


def test_food101n_protocol_and_quirks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = build_food101n(tmp_path / "food")
    out_folder = tmp_path / "prepared"
    code, out, _ = run_food101n(capsys, root, out_folder)
    assert code == 0
    dataset = PreparedDataset.read(out_folder)
    assert dataset.class_names == FOOD_CLASSES
    assert dataset.splits["train"].image_root == root.resolve()
    # train: 3 unverified per class + the class-1 copy of the shared key; meta: rows marked 1 (4 + shared).
    assert {split: len(table) for split, table in dataset.splits.items()} == {
        "train": 13,
        "meta": 5,
        "val": 4,
        "test": 8,
    }

    train = dataset.splits["train"]
    shared_copy = train.paths.index(f"Food-101N_release/images/baby_back_ribs/{food101n_key('shared', 0)}")
    assert (train.labels[shared_copy], train.true_labels[shared_copy]) == (1, 0)
    assert (np.delete(train.true_labels, shared_copy) == -1).all()
    all_paths = {path for table in dataset.splits.values() for path in table.paths}
    for class_name in FOOD_CLASSES:
        assert f"Food-101N_release/images/{class_name}/{food101n_key(class_name, 101)}" not in all_paths  # marked 0
        assert f"Food-101N_release/images/{class_name}/{food101n_key(class_name, 100)}" in dataset.splits["meta"].paths
    assert dataset.splits["test"].paths[0] == "food-101/images/apple_pie/3000000.jpg"
    assert all(table.image_path(0).is_file() for table in dataset.splits.values())

    assert "key listed under two or more classes (each copy kept): 1" in out
    assert "verified_train.tsv row marked 0 (wrong label, left out of every split): 4" in out
    assert "verified_val.tsv row marked 0 (wrong label, left out of every split): 1" in out
    quirks = (out_folder / "quirks.txt").read_text()
    assert f"{food101n_key('shared', 0)}: apple_pie, baby_back_ribs" in quirks


def test_image_folder_lists_with_comments_and_commas(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = build_image_folder(tmp_path / "folder")
    code, out, _ = run_image_folder(capsys, root, tmp_path / "prepared", "--val-list", root / "val.csv")
    assert code == 0
    dataset = PreparedDataset.read(tmp_path / "prepared")
    assert dataset.class_names == ["0", "1", "2"]
    assert dataset.splits["train"].paths[:2] == ["class_0/0.png", "class_0/1.png"]
    assert dataset.splits["train"].labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert dataset.splits["val"].true_labels.tolist() == [0, 1, 2]
    assert "no meta split" in out


def edit_line(path: Path, line_number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line_number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_missing_list_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = build_clothing1m(tmp_path / "clothing1m", train_per_class=1, clean_per_class=1)
    (root / "clean_val_key_list.txt").unlink()
    code, _, err = run_cli(capsys, "clothing1m", "--root", root, "--out", tmp_path / "prepared")
    assert code == 2
    assert f"{root / 'clean_val_key_list.txt'}: not found" in err


def test_label_outside_the_class_list_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = build_clothing1m(tmp_path / "clothing1m", train_per_class=1, clean_per_class=1)
    edit_line(root / "noisy_label_kv.txt", 3, f"{clothing1m_key(5)} 14")
    code, _, err = run_cli(capsys, "clothing1m", "--root", root, "--out", tmp_path / "prepared")
    assert code == 2
    assert f"{root / 'noisy_label_kv.txt'}:3: label 14 is outside [0, 14)" in err


def test_key_with_no_image_is_an_error_or_quarantined(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = build_clothing1m(tmp_path / "clothing1m", train_per_class=1, clean_per_class=1)
    missing_key = clothing1m_key(0)
    (root / missing_key).unlink()
    code, _, err = run_cli(capsys, "clothing1m", "--root", root, "--out", tmp_path / "prepared")
    assert code == 2
    assert f"{root / 'noisy_train_key_list.txt'}:1: {missing_key}" in err
    assert "--skip-missing" in err

    code, out, _ = run_cli(capsys, "clothing1m", "--root", root, "--out", tmp_path / "prepared", "--skip-missing")
    assert code == 0
    [(split, path, reason)] = read_rows(tmp_path / "prepared" / "quarantine.csv")
    assert (split, path) == ("train", missing_key)
    assert reason == f"missing: no image file (listed at {root / 'noisy_train_key_list.txt'}:1)"
    assert "quarantined: 1" in out


def test_class_with_no_meta_samples_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = build_clothing1m(tmp_path / "clothing1m", train_per_class=1, clean_per_class=1)
    # Class 0's only clean_train key: its first line.
    edit_line(root / "clean_train_key_list.txt", 1, "")
    code, out, _ = run_cli(capsys, "clothing1m", "--root", root, "--out", tmp_path / "prepared")
    assert code == 0
    assert f"warning: 1 classes have no meta samples: {CLOTHING1M_CLASSES[0]}" in out


def test_train_key_with_no_noisy_label_is_a_reported_quirk(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = build_clothing1m(tmp_path / "clothing1m", train_per_class=1, clean_per_class=1)
    # noisy_label_kv.txt line 1 labels the first noisy_train key.
    edit_line(root / "noisy_label_kv.txt", 1, "")
    code, out, _ = run_cli(capsys, "clothing1m", "--root", root, "--out", tmp_path / "prepared")
    assert code == 0
    assert "train key with no label in noisy_label_kv.txt (left out): 1" in out
    assert (
        f"{root / 'noisy_train_key_list.txt'}:1: {clothing1m_key(0)}"
        in (tmp_path / "prepared" / "quirks.txt").read_text()
    )
    assert len(PreparedDataset.read(tmp_path / "prepared").splits["train"]) == NUM_CLOTHING_CLASSES - 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("class_0/0.png", "1 field in 'class_0/0.png'; each line is '<relative path> <label> [<true label>]'"),
        ("class_0/0.png 0 1 2", "4 fields in 'class_0/0.png 0 1 2'; each line is"),
        ("class_0/0.png zero", "label 'zero' is not an integer"),
        ("class_0/0.png 0 9", "true label 9 is outside [0, 3)"),
        ("class_0/0.png 7", "label 7 is outside [0, 3)"),
        ("class_0/absent.png 0", "class_0/absent.png"),
        ("../outside.png 0", "must be relative to the image folder"),
    ],
)
def test_image_folder_bad_list_line_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, line: str, message: str
) -> None:
    root = build_image_folder(tmp_path / "folder", train_per_class=1, val_per_class=0)
    edit_line(root / "train.txt", 4, line)
    code, _, err = run_image_folder(capsys, root, tmp_path / "prepared", "--classes", root / "classes.txt")
    assert code == 2
    assert f"{root / 'train.txt'}:4" in err and message in err


def test_food101n_class_outside_the_class_list_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = build_food101n(tmp_path / "food", train_per_class=1, test_per_class=1)
    edit_line(root / "food-101" / "meta" / "test.txt", 2, "churros/3000999")
    code, _, err = run_food101n(capsys, root, tmp_path / "prepared")
    assert code == 2
    assert f"{root / 'food-101' / 'meta' / 'test.txt'}:2: class 'churros' is not in the class list" in err


def test_prepared_files_have_lf_line_endings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = build_image_folder(tmp_path / "folder")
    assert run_image_folder(capsys, root, tmp_path / "prepared", "--val-list", root / "val.csv", "--check")[0] == 0
    for name in ("train.csv", "val.csv", "quarantine.csv", "classes.txt", CHECK_PROGRESS_FILE):
        assert b"\r" not in (tmp_path / "prepared" / name).read_bytes(), name


def test_image_folder_true_label_column_marks_the_audited_samples(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = build_image_folder(tmp_path / "folder")
    # An audit of three training images: one mislabeled (true class 2), one confirmed, one unresolved (-1); a
    # comma-separated line with a space in its path; a val line whose true label differs from its given one.
    (root / "images" / "class_1" / "with space.png").write_bytes((root / "images" / "class_1" / "0.png").read_bytes())
    edit_line(root / "train.txt", 3, "class_0/0.png 0 2")
    edit_line(root / "train.txt", 4, "class_0/1.png\t0\t0  # audited, correct")
    edit_line(root / "train.txt", 5, "class_0/2.png 0 -1")
    edit_line(root / "train.txt", 6, "class_1/with space.png, 1, ")
    edit_line(root / "val.csv", 1, "class_0/3.png,0,1")
    code, out, _ = run_image_folder(capsys, root, tmp_path / "prepared", "--val-list", root / "val.csv",
                                    "--classes", root / "classes.txt")
    assert code == 0
    dataset = PreparedDataset.read(tmp_path / "prepared")
    train = dataset.splits["train"]
    assert train.paths[:4] == ["class_0/0.png", "class_0/1.png", "class_0/2.png", "class_1/with space.png"]
    assert train.labels[:4].tolist() == [0, 0, 0, 1]
    assert train.true_labels.tolist() == [2, 0] + [-1] * 7
    assert dataset.splits["val"].true_labels.tolist() == [1, 1, 2]
    assert "true label known for 2" in out


def test_without_a_class_list_the_class_table_is_printed_and_an_empty_class_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = build_image_folder(tmp_path / "folder")
    edit_line(root / "train.txt", 11, "class_2/2.png 4")  # a typo: class 2 meant, 4 written
    code, out, err = run_image_folder(capsys, root, tmp_path / "prepared", "--val-list", root / "val.csv")
    assert code == 2
    table = out.splitlines()
    assert table[0].split() == ["class", "train", "val"]
    assert [line.split() for line in table[1:]] == [["0", "3", "1"], ["1", "3", "1"], ["2", "2", "1"],
                                                     ["3", "0", "0"], ["4", "1", "0"]]
    assert err.strip() == (f"error: {root / 'train.txt'}: class 3 of 0..4 has no training samples (a wrong label?); "
                           "name the classes with --classes, or pass --allow-empty-classes")
    assert not (tmp_path / "prepared").exists()

    code, out, _ = run_image_folder(capsys, root, tmp_path / "prepared", "--val-list", root / "val.csv",
                                    "--allow-empty-classes")
    assert code == 0
    assert PreparedDataset.read(tmp_path / "prepared").class_names == ["0", "1", "2", "3", "4"]


def test_the_check_benchmark_times_a_real_check_and_its_ffmpeg_fallback() -> None:
    from curvenet_dist.bench import image_check

    figures = image_check.main(["--images", "40", "--corrupt", "3", "--rounds", "2", "--ffmpeg-sample", "2"])
    assert figures["images_per_s"] > 0 and len(figures["images_per_s_rounds"]) == 2
    assert figures["ffmpeg_only_images_per_s_one_process"] > 0


def test_images_pillow_decodes_are_good_and_damaged_ones_still_go_to_ffmpeg(tmp_path: Path) -> None:
    from data_prep.image_check import decode_check, find_ffmpeg, pillow_failure

    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "good.jpg", quality=90)
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert pillow_failure(tmp_path / "good.jpg") is None and pillow_failure(tmp_path / "cut.jpg") is not None
    assert decode_check(find_ffmpeg(), tmp_path / "good.jpg") is None
    assert decode_check(find_ffmpeg(), tmp_path / "cut.jpg").startswith("undecodable: ")


@pytest.mark.parametrize("list_name", ["train.txt", "classes.txt"])
def test_a_list_file_that_is_not_utf8_names_its_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     list_name: str) -> None:
    root = build_image_folder(tmp_path / "folder", train_per_class=1, val_per_class=0)
    lines = (root / list_name).read_bytes().splitlines(keepends=True)
    (root / list_name).write_bytes(b"".join(lines[:2]) + b"# caf\xe9\n" + b"".join(lines[2:]))
    code, _, err = run_image_folder(capsys, root, tmp_path / "prepared", "--classes", root / "classes.txt")
    assert code == 2
    offset = len(b"".join(lines[:2])) + len(b"# caf")
    assert err == (f"error: {root / list_name}:3: not UTF-8 text (byte offset {offset}: invalid continuation byte); "
                   "save it as UTF-8\n")


@pytest.fixture(scope="module")
def bomb_png(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 15000x15000 1-bit PNG: 27 KB on disk, more pixels than Pillow will open (twice Image.MAX_IMAGE_PIXELS)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (15000, 15000)).save(path)
    return path.read_bytes()


@pytest.mark.parametrize("check_option", ["--check", "--reencode"])
def test_an_image_pillow_refuses_as_a_bomb_is_quarantined_by_the_check(
    tmp_path: Path, capsys: pytest.CaptureFixture, bomb_png: bytes, check_option: str
) -> None:
    # ffmpeg decodes it, so it used to pass the check; the torch loader decodes with Pillow and stopped at it.
    root = build_image_folder(tmp_path / "folder", train_per_class=2, val_per_class=0)
    (root / "images" / "class_1" / "0.png").write_bytes(bomb_png)
    out_folder = tmp_path / "prepared"
    code, out, _ = run_image_folder(capsys, root, out_folder, "--classes", root / "classes.txt", check_option)
    assert code == 0
    [(split, path, reason)] = read_rows(out_folder / "quarantine.csv")
    assert (split, path) == ("train", "class_1/0.png")
    assert reason.startswith("too many pixels: Image size (225000000 pixels) exceeds limit of 178956970 pixels")
    assert "quarantined: 1" in out
    train = PreparedDataset.read(out_folder).splits["train"]
    assert len(train) == 5 and not any(path.startswith("class_1/0.") for path in train.paths)
    assert not (out_folder / "images_256" / "class_1" / "0.jpg").exists()


def test_the_torch_loader_stops_at_a_bomb_with_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture, bomb_png: bytes
) -> None:
    from curvenet_dist.data.sample_table import DataError
    from curvenet_dist.data.torch_loader import build_torch_loader

    root = build_image_folder(tmp_path / "folder", train_per_class=1, val_per_class=0)
    (root / "images" / "class_1" / "0.png").write_bytes(bomb_png)
    assert run_image_folder(capsys, root, tmp_path / "prepared", "--classes", root / "classes.txt")[0] == 0
    train = PreparedDataset.read(tmp_path / "prepared").splits["train"]
    loader = build_torch_loader(train, train=False, batch_size=3, image_size=8, mean=[0.5] * 3, std=[0.5] * 3,
                                augment="none", rank=0, world_size=1, seed=0, num_threads=0, device_id=None)
    with pytest.raises(DataError, match=r"1 of 3 images cannot be read: sample 1 .*class_1/0\.png: Image size "
                                        r"\(225000000 pixels\) exceeds limit"):
        list(loader)


@pytest.mark.parametrize("outside", ["../../x/secret.png", "ABSOLUTE"])
def test_a_prepared_csv_path_outside_the_image_root_is_refused_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture, outside: str
) -> None:
    root = build_image_folder(tmp_path / "folder", train_per_class=1, val_per_class=0)
    out_folder = tmp_path / "prepared"
    assert run_image_folder(capsys, root, out_folder, "--classes", root / "classes.txt")[0] == 0
    secret = tmp_path / "x" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes((root / "images" / "class_0" / "0.png").read_bytes())
    if outside == "ABSOLUTE":
        outside = str(secret)
    # The re-encoded copy would land at images_256/<path>.jpg: for ../../x/secret.png, beside the secret itself.
    edit_line(out_folder / "train.csv", 3, f"{outside},1,-1")
    before = sorted(tmp_path.rglob("*"))
    code, _, err = run_cli(capsys, "check", "--dataset", out_folder, "--reencode")
    assert code == 2
    assert err == (f"error: {out_folder / 'train.csv'}:3: image path {outside!r} must be relative to the image root, "
                   "without '..'\n")
    assert sorted(tmp_path.rglob("*")) == before
