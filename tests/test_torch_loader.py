"""The torch DataLoader path: its augmentation is fixed by the seed, whatever the process, position or global RNG."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from curvenet_dist.data.sample_table import DataError, SampleTable
from curvenet_dist.data.torch_loader import build_torch_loader

NUM_SAMPLES = 12


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(NUM_SAMPLES):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        paths.append(f"{i}.png")
    labels = np.arange(NUM_SAMPLES) % 2
    return SampleTable(folder, paths, labels, labels, 2)


def epoch_batches(table, epoch, *, start_batch=0, num_workers=0, rank=0, world_size=1, seed=0):
    loader = build_torch_loader(table, train=True, batch_size=3, image_size=8, mean=[0.5] * 3, std=[0.5] * 3,
                                augment="crop_flip", rank=rank, world_size=world_size, seed=seed,
                                num_threads=num_workers, device_id=None)
    loader.set_epoch(epoch, start_batch)
    return [(images, ids) for images, _, ids in loader]


def test_a_resumed_epoch_sees_the_crops_of_the_uninterrupted_one(table):
    torch.manual_seed(1)
    whole = epoch_batches(table, epoch=3)
    torch.manual_seed(2)  # a restarted process: another global RNG state
    resumed = epoch_batches(table, epoch=3, start_batch=2)
    assert len(resumed) == len(whole) - 2
    for (images, ids), (expected_images, expected_ids) in zip(resumed, whole[2:]):
        assert torch.equal(ids, expected_ids) and torch.equal(images, expected_images)


def test_crops_depend_on_seed_and_epoch_not_on_workers_and_leave_the_global_rng_alone(table):
    torch.manual_seed(5)
    state = torch.get_rng_state()
    in_process = epoch_batches(table, epoch=1)
    assert torch.equal(torch.get_rng_state(), state)
    in_workers = epoch_batches(table, epoch=1, num_workers=2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(in_process, in_workers))
    for other in (epoch_batches(table, epoch=2), epoch_batches(table, epoch=1, seed=1)):
        by_id = {int(i): image for images, ids in other for i, image in zip(ids, images)}
        assert any(not torch.equal(by_id[int(i)], image) for images, ids in in_process for i, image in zip(ids, images))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_meeting_one_unreadable_image_names_every_one_of_the_table(tmp_path, num_workers):
    """The loader stops at the first bad image it meets, but its error lists all of them (in a DataLoader worker
    too), so one run tells the user everything to fix; past five they are counted."""
    for i in range(NUM_SAMPLES):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"{i}.png")
    bad = [1, 4, 5, 7, 9, 10, 11]
    for i in bad:
        (tmp_path / f"{i}.png").write_bytes(b"not a png" if i % 2 else b"")
    labels = np.zeros(NUM_SAMPLES)
    table = SampleTable(tmp_path, [f"{i}.png" for i in range(NUM_SAMPLES)], labels, labels, 1, origin="train.csv")
    with pytest.raises(DataError) as raised:
        epoch_batches(table, epoch=0, num_workers=num_workers)
    message = str(raised.value)
    assert message.startswith(f"train.csv: 7 of {NUM_SAMPLES} images cannot be read: sample 1 {tmp_path / '1.png'}: ")
    named = message.split("cannot be read: ")[1].split("; ")[:5]
    assert [int(part.split()[1]) for part in named] == [1, 4, 5, 7, 9]
    assert "; and 2 more (`python -m data_prep check --dataset FOLDER`" in message
    assert "\n" not in message


def test_workers_kept_from_pass_to_pass_give_each_epoch_its_own_crops(table):
    """The workers live as long as the loader (no fork per pass), yet every pass sees its epoch's crops: the same
    as a fresh loader's for that epoch."""
    loader = build_torch_loader(table, train=True, batch_size=3, image_size=8, mean=[0.5] * 3, std=[0.5] * 3,
                                augment="crop_flip", rank=0, world_size=1, seed=0, num_threads=2, device_id=None)
    passes, workers = [], []
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        passes.append([(images, ids) for images, _, ids in loader])
        workers.append([worker.pid for worker in loader.loader._iterator._workers])
    assert workers[0] == workers[1]
    for epoch, batches in zip((1, 2), passes):
        fresh = epoch_batches(table, epoch=epoch)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, fresh))


def test_a_pass_limited_to_some_rows_loads_exactly_those_across_ranks_with_the_same_workers(table):
    """A method that trains on part of the set each epoch (Dynamic Loss) limits the pass with `rows`: every rank
    keeps its workers, and together the ranks load exactly those samples, each under its own id and crop."""
    rows = np.array([0, 3, 4, 8, 9, 11])
    loaders = [build_torch_loader(table, train=True, batch_size=2, image_size=8, mean=[0.5] * 3, std=[0.5] * 3,
                                  augment="crop_flip", rank=rank, world_size=2, seed=0, num_threads=2,
                                  device_id=None) for rank in (0, 1)]
    whole = {int(i): image for images, ids in epoch_batches(table, epoch=4, world_size=1) for i, image in zip(ids, images)}
    seen, workers = [], []
    for loader in loaders:
        loader.set_epoch(3)
        list(loader)
        loader.set_epoch(4, rows=rows)
        assert len(loader) == 2
        for images, labels, ids in loader:
            seen += ids.tolist()
            assert all(torch.equal(image, whole[int(i)]) for i, image in zip(ids, images))
            assert torch.equal(labels, torch.as_tensor(table.labels[ids.numpy()]))
        workers.append(loader.loader._iterator._workers)
    assert sorted(set(seen)) == rows.tolist()  # padded so both ranks run 2 whole batches, as every pass is
    first_pids = [[worker.pid for worker in rank_workers] for rank_workers in workers]
    for loader, pids in zip(loaders, first_pids):
        loader.set_epoch(5)
        list(loader)
        assert [worker.pid for worker in loader.loader._iterator._workers] == pids
