"""The torch DataLoader path: yields (images, labels, ids) batches from a sample table, sharded by global rank."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from curvenet_dist.data.sample_table import SampleTable
from curvenet_dist.data.sharding import pass_order, rank_share
from curvenet_dist.data.unreadable import UnreadableImage, read_rgb, unreadable_images_error


def build_transform(*, train: bool, image_size: int, augment: str, mean: list[float], std: list[float]) -> v2.Compose:
    steps: list[v2.Transform] = [v2.ToImage()]
    if train and augment == "resized_crop":
        steps += [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    elif not train and augment == "resized_crop":
        steps += [v2.Resize(round(image_size * 256 / 224), antialias=True), v2.CenterCrop(image_size)]
    else:
        steps += [v2.Resize((image_size, image_size), antialias=True)]
        if train and augment in ("crop", "crop_flip"):
            steps += [v2.RandomCrop(image_size, padding=max(1, image_size // 8))]
        if train and augment == "crop_flip":
            steps += [v2.RandomHorizontalFlip()]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


class SampleTableDataset(Dataset):
    """Samples of a table, keyed by (sample id, epoch). The transform's randomness is a function of (seed, epoch,
    sample id) alone, so a sample gets the same crop whichever process loads it (the rank's own with
    data.num_workers=0, or a worker), on any rank or world size, and whether the epoch ran whole or was resumed; the
    global RNG is left as found. The epoch comes with each key, so workers kept from an earlier pass see it."""

    def __init__(self, table: SampleTable, transform: v2.Compose, seed: int):
        self.table = table
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        sample_id, epoch = key
        path = self.table.image_path(sample_id)
        try:
            rgb = read_rgb(path)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
            raise UnreadableImage(f"sample {sample_id}: cannot read image {path}: {error}") from None
        return self._transform(rgb, sample_id, epoch), int(self.table.labels[sample_id]), sample_id

    def _transform(self, image: Image.Image, sample_id: int, epoch: int) -> torch.Tensor:
        generator = torch.default_generator
        state = generator.get_state()
        # torch seeds its Mersenne Twister from the low 32 bits only; hashing the key mixes it into them (the hash
        # of a tuple of ints does not vary between processes).
        generator.manual_seed(hash((self.seed, epoch, sample_id)) % 2**32)
        try:
            return self.transform(image)
        finally:
            generator.set_state(state)


class ShardSampler(Sampler[tuple[int, int]]):
    """This rank's share of a seeded, per-epoch order (see sharding.py), as (sample id, epoch) keys; `start_batch`
    skips batches already trained when an epoch resumes mid-way, `rows` limits the pass to those sample ids."""

    def __init__(self, num_samples: int, *, shuffle: bool, seed: int, rank: int, world_size: int, batch_size: int):
        self.num_samples, self.shuffle, self.seed = num_samples, shuffle, seed
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.set_epoch(0)

    def set_epoch(self, epoch: int, start_batch: int = 0, rows: np.ndarray | None = None) -> None:
        self.epoch, self.start_batch = epoch, start_batch
        order = pass_order(self.num_samples, rows, shuffle=self.shuffle, seed=self.seed, epoch=epoch)
        self.share = rank_share(order, self.rank, self.world_size, self.batch_size)

    def __iter__(self):
        return ((sample_id, self.epoch) for sample_id in self.share[self.start_batch * self.batch_size :].tolist())

    def __len__(self) -> int:
        return max(0, len(self.share) - self.start_batch * self.batch_size)


class TorchLoader:
    """A DataLoader over a ShardSampler with the loader contract: iterate (images, labels, ids);
    len() = batches per epoch, the same on every rank; set_epoch(epoch, start_batch, rows) before each pass, where
    `rows` (sample ids, None: all) limits the pass to part of the table without new workers."""

    def __init__(self, dataset: SampleTableDataset, sampler: ShardSampler, batch_size: int, num_workers: int, pin_memory: bool):
        self.dataset, self.sampler = dataset, sampler
        # The DataLoader draws a seed from this generator at every pass (unused: the dataset seeds its transform
        # per sample); a generator of its own keeps that draw off the global RNG.
        # Workers are kept from pass to pass: starting them again at every pass (every meta pass of a small meta
        # set, too) forks the rank each time, which is slow and, with the rank's other threads, can deadlock.
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
            persistent_workers=num_workers > 0, generator=torch.Generator(),
        )

    def set_epoch(self, epoch: int, start_batch: int = 0, rows: np.ndarray | None = None) -> None:
        self.sampler.set_epoch(epoch, start_batch, rows)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        try:
            for images, labels, ids in self.loader:
                yield images, labels.long(), ids.long()
        except UnreadableImage as error:
            raise unreadable_images_error(self.dataset.table, error) from None


def build_torch_loader(table: SampleTable, *, train: bool, batch_size: int, image_size: int, mean: list[float],
                       std: list[float], augment: str, rank: int, world_size: int, seed: int, num_threads: int,
                       device_id: int | None) -> TorchLoader:
    transform = build_transform(train=train, image_size=image_size, augment=augment, mean=mean, std=std)
    sampler = ShardSampler(len(table), shuffle=train, seed=seed, rank=rank, world_size=world_size, batch_size=batch_size)
    return TorchLoader(SampleTableDataset(table, transform, seed), sampler, batch_size, num_threads, pin_memory=device_id is not None)
