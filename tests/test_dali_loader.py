"""The DALI loader on a real CPU pipeline over tiny generated PNG and JPEG files."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from curvenet_dist.data.dali_loader import build_dali_loader
from curvenet_dist.data.sample_table import DataError, SampleTable
from curvenet_dist.data.torch_loader import build_transform

NUM_SAMPLES = 27
NUM_CLASSES = 3
IMAGE_SIZE = 16
MEAN = [0.4, 0.5, 0.6]
STD = [0.2, 0.25, 0.3]


def write_images(folder: Path, count: int) -> list[str]:
    """A mix of RGB PNG, grayscale PNG and JPEG files of a few sizes."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        # Odd samples have a short side of round(IMAGE_SIZE * 256 / 224): the eval resize leaves them as they are.
        height, width = (IMAGE_SIZE, IMAGE_SIZE) if i % 2 == 0 else (18, 24)
        if i % 3 == 1:
            image = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), mode="L")
        else:
            image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")
        name = f"class{i % NUM_CLASSES}/image{i}.{'jpg' if i % 4 == 3 else 'png'}"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / name)
        paths.append(name)
    return paths


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> SampleTable:
    folder = tmp_path_factory.mktemp("images")
    paths = write_images(folder, NUM_SAMPLES)
    # Labels deliberately unrelated to the folder names, so a label can only be right if looked up by id.
    labels = np.random.default_rng(1).integers(0, NUM_CLASSES, NUM_SAMPLES)
    return SampleTable(folder, paths, labels, np.full(NUM_SAMPLES, -1), NUM_CLASSES, origin=str(folder / "train.csv"))


def make_loader(table: SampleTable, *, train: bool = True, augment: str = "crop_flip", rank: int = 0,
                world_size: int = 1, batch_size: int = 4, seed: int = 0):
    return build_dali_loader(table, train=train, batch_size=batch_size, image_size=IMAGE_SIZE, mean=MEAN, std=STD,
                             augment=augment, rank=rank, world_size=world_size, seed=seed, num_threads=1,
                             device_id=None)


def run_epoch(loader, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    loader.set_epoch(epoch)
    batches = list(loader)
    assert len(batches) == len(loader)
    images, labels, ids = (torch.cat(parts) for parts in zip(*batches))
    return images, labels, ids


@pytest.mark.parametrize("world_size", [1, 2])
def test_every_sample_once_per_epoch_across_ranks(table: SampleTable, world_size: int) -> None:
    loaders = [make_loader(table, rank=rank, world_size=world_size) for rank in range(world_size)]
    assert len({len(loader) for loader in loaders}) == 1
    for epoch in range(2):
        all_ids = []
        for loader in loaders:
            images, labels, ids = run_epoch(loader, epoch)
            assert images.shape == (len(ids), 3, IMAGE_SIZE, IMAGE_SIZE) and images.dtype == torch.float32
            assert labels.dtype == torch.int64 and ids.dtype == torch.int64
            assert labels.tolist() == table.labels[ids.numpy()].tolist()
            all_ids += ids.tolist()
        counts = Counter(all_ids)
        assert sorted(counts) == list(range(NUM_SAMPLES))
        # Padding may repeat a few samples so the ranks stay in step, never more than one extra per rank.
        assert len(all_ids) - NUM_SAMPLES < world_size * 2


def test_a_pass_limited_to_some_rows_yields_exactly_those_across_ranks(table: SampleTable) -> None:
    rows = np.arange(1, NUM_SAMPLES, 3)
    seen = []
    for rank in (0, 1):
        loader = make_loader(table, rank=rank, world_size=2)
        loader.set_epoch(2, rows=rows)
        for _, labels, ids in loader:
            assert labels.tolist() == table.labels[ids.numpy()].tolist()
            seen += ids.tolist()
    assert sorted(set(seen)) == rows.tolist() and len(seen) - len(rows) < 2 * 2


def test_order_changes_per_epoch_and_repeats_for_the_same_epoch(table: SampleTable) -> None:
    images_0, _, ids_0 = run_epoch(make_loader(table, augment="resized_crop"), 0)
    _, _, ids_1 = run_epoch(make_loader(table, augment="resized_crop"), 1)
    assert ids_0.tolist() != ids_1.tolist()
    assert sorted(ids_0.tolist()) == sorted(ids_1.tolist())
    # A resumed run rebuilds the loader: the same seed and epoch give the same order and the same crops.
    images_again, _, ids_again = run_epoch(make_loader(table, augment="resized_crop"), 0)
    assert ids_again.tolist() == ids_0.tolist()
    assert torch.equal(images_again, images_0)
    _, _, ids_other_seed = run_epoch(make_loader(table, augment="resized_crop", seed=1), 0)
    assert ids_other_seed.tolist() != ids_0.tolist()


def test_resuming_mid_epoch_yields_the_rest_of_the_epoch(table: SampleTable) -> None:
    _, _, ids_full = run_epoch(make_loader(table), 3)
    loader = make_loader(table)
    loader.set_epoch(3, start_batch=2)
    ids_rest = torch.cat([ids for _, _, ids in loader])
    assert ids_rest.tolist() == ids_full[2 * 4:].tolist()


def test_eval_loader_is_deterministic_and_in_table_order(table: SampleTable) -> None:
    loader = make_loader(table, train=False, augment="resized_crop")
    first_images, first_labels, first_ids = run_epoch(loader, 0)
    second_images, _, second_ids = run_epoch(loader, 5)
    assert first_ids.tolist() == list(range(NUM_SAMPLES)) == second_ids.tolist()
    assert torch.equal(first_images, second_images)
    assert first_labels.tolist() == table.labels.tolist()


def test_eval_image_equals_pil_and_numpy_normalisation(table: SampleTable) -> None:
    images, _, ids = run_epoch(make_loader(table, train=False, augment="none"), 0)
    mean, std = np.array(MEAN), np.array(STD)
    # Samples 0 and 6 are RGB PNGs, 10 a grayscale PNG, all already IMAGE_SIZE square: no resampling involved.
    for sample_id in (0, 6, 10):
        pixels = np.asarray(Image.open(table.image_path(sample_id)).convert("RGB"), dtype=np.float64) / 255
        expected = ((pixels - mean) / std).transpose(2, 0, 1)
        row = ids.tolist().index(sample_id)
        np.testing.assert_allclose(images[row].numpy(), expected, atol=1e-5)


def test_eval_resized_crop_matches_the_torch_path(table: SampleTable) -> None:
    """Short side to size*256/224, then a centre crop: the same pixels as the torch loader's eval transform."""
    images, _, _ = run_epoch(make_loader(table, train=False, augment="resized_crop"), 0)
    transform = build_transform(train=False, image_size=IMAGE_SIZE, augment="resized_crop", mean=MEAN, std=STD)
    for sample_id in (1, 5):
        expected = transform(Image.open(table.image_path(sample_id)).convert("RGB"))
        np.testing.assert_allclose(images[sample_id].numpy(), expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("augment", ["crop", "crop_flip"])
def test_padded_crop_shifts_within_the_padding_and_flips_only_for_crop_flip(tmp_path: Path, augment: str) -> None:
    pixels = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, dtype=np.uint8)
    pixels[:, IMAGE_SIZE // 2:] = 128
    Image.fromarray(pixels).save(tmp_path / "white_left_grey_right.png")
    table = SampleTable(tmp_path, ["white_left_grey_right.png"] * 16, np.zeros(16), np.zeros(16), 1, origin="x.csv")
    images, _, _ = run_epoch(make_loader(table, augment=augment, batch_size=16), 0)
    red = images[:, 0].numpy() * STD[0] + MEAN[0]
    padding = np.isclose(red, 0, atol=1e-5)
    assert np.all(padding | np.isclose(red, 1, atol=1e-5) | np.isclose(red, 128 / 255, atol=1e-5))
    padded_pixels = padding.sum(axis=(1, 2))
    assert len(set(padded_pixels.tolist())) > 1
    assert padded_pixels.max() <= IMAGE_SIZE * IMAGE_SIZE - (IMAGE_SIZE - IMAGE_SIZE // 8) ** 2
    # The middle row is never padding vertically: grey left of white means the image was mirrored.
    middle_rows = red[:, IMAGE_SIZE // 2]
    mirrored = [np.argmax(np.isclose(row, 128 / 255)) < np.argmax(np.isclose(row, 1)) for row in middle_rows]
    assert any(mirrored) == (augment == "crop_flip")


def test_undecodable_images_are_all_named(table: SampleTable, tmp_path: Path) -> None:
    for name in ("broken.jpg", "broken2.jpg"):
        (tmp_path / name).write_bytes(b"\xff\xd8\xff this is not a JPEG")
    good = [str(table.image_path(i)) for i in range(8)]
    broken = SampleTable(tmp_path, good[:3] + ["broken2.jpg"] + good[3:] + ["broken.jpg"], np.zeros(10),
                         np.zeros(10), 1, origin="broken.csv")
    with pytest.raises(DataError, match=r"broken.csv: 2 of 10 images cannot be read: sample 3 .*broken2.jpg: .*; "
                                        r"sample 9 .*broken.jpg: "):
        run_epoch(make_loader(broken, train=False, augment="none"), 0)


def test_missing_image_is_named(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "present.png")
    table = SampleTable(tmp_path, ["present.png", "absent.png"], np.zeros(2), np.zeros(2), 1, origin="gone.csv")
    with pytest.raises(DataError, match=r"gone.csv: 1 of 2 images cannot be read: sample 1 .*absent.png: "):
        run_epoch(make_loader(table, train=False, augment="none"), 0)
