"""NVIDIA DALI loader: batches of (images, labels, ids) from a SampleTable, decoded on the GPU where there is one.

A drop-in alternative to `torch_loader.build_torch_loader`: same arguments, same per-rank order (sharding.py:
a seeded per-epoch permutation dealt out by global rank, padded so every rank runs the same number of batches;
consumers drop repeated ids) and the same transforms. The sample id travels through DALI's file reader as the
file's label; the given label is looked up from the id.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.data_node import DataNode
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from curvenet_dist.config import ConfigError
from curvenet_dist.data.sample_table import DataError, SampleTable
from curvenet_dist.data.unreadable import unreadable_images_error
from curvenet_dist.data.sharding import pass_order, rank_share

AUGMENTS = ("crop_flip", "crop", "resized_crop", "none")
READER_NAME = "reader"
PREFETCH_DEPTH = 2


@pipeline_def
def _image_pipeline(files: list[str], ids: list[int], *, train: bool, augment: str, image_size: int,
                    mean: list[float], std: list[float], decode_device: str) -> tuple[DataNode, DataNode]:
    encoded, sample_ids = fn.readers.file(files=files, labels=ids, name=READER_NAME, pad_last_batch=True)
    mirror = fn.random.coin_flip() if train and augment in ("crop_flip", "resized_crop") else 0
    crop_window = {}
    if train and augment == "resized_crop":
        images = fn.decoders.image_random_crop(encoded, device=decode_device, output_type=types.RGB)
        images = fn.resize(images, resize_x=image_size, resize_y=image_size)
    else:
        images = fn.decoders.image(encoded, device=decode_device, output_type=types.RGB)
        if not train and augment == "resized_crop":
            images = fn.resize(images, resize_shorter=round(image_size * 256 / 224))
            crop_window = {"crop": (image_size, image_size)}
        else:
            images = fn.resize(images, resize_x=image_size, resize_y=image_size)
    if train and augment in ("crop", "crop_flip"):
        padding = max(1, image_size // 8)
        padded_size = image_size + 2 * padding
        # A centred crop larger than the image pads it with zeros on every side.
        images = fn.crop(images, crop=(padded_size, padded_size), out_of_bounds_policy="pad", fill_values=0)
        # Positions k / (2 * padding) put the crop's corner at each integer offset 0..2*padding equally often.
        offsets = [k / (2 * padding) for k in range(2 * padding + 1)]
        crop_window = {"crop": (image_size, image_size),
                       "crop_pos_x": fn.random.uniform(values=offsets),
                       "crop_pos_y": fn.random.uniform(values=offsets)}
    images = fn.crop_mirror_normalize(
        images, dtype=types.FLOAT, output_layout="CHW", mirror=mirror,
        mean=[255 * m for m in mean], std=[255 * s for s in std], **crop_window,
    )
    if decode_device == "mixed":
        sample_ids = sample_ids.gpu()
    return images, sample_ids


@pipeline_def(batch_size=1, num_threads=1, prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
def _decode_check_pipeline(files: list[str]) -> DataNode:
    encoded, _ = fn.readers.file(files=files)
    return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)


def first_undecodable(paths: list[str]) -> str | None:
    """The first of `paths` that DALI's CPU decoder cannot read, or None when all decode."""
    pipeline = _decode_check_pipeline(paths, device_id=None)
    pipeline.build()
    for path in paths:
        try:
            pipeline.run()
        except RuntimeError:
            return path
    return None


class DaliLoader:
    """Iterable over one epoch of `(images, labels, ids)`; call `set_epoch` before each training epoch."""

    def __init__(self, table: SampleTable, *, train: bool, batch_size: int, image_size: int, mean: list[float],
                 std: list[float], augment: str, rank: int, world_size: int, seed: int, num_threads: int,
                 device_id: int | None) -> None:
        if augment not in AUGMENTS:
            raise ConfigError(f"data.augment={augment!r} is not allowed; choose one of: {', '.join(AUGMENTS)}")
        self.table = table
        self.train = train
        self.batch_size = batch_size
        self.image_size = image_size
        self.mean = list(mean)
        self.std = list(std)
        self.augment = augment
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.num_threads = max(1, num_threads)
        self.device_id = device_id
        self.device = torch.device("cpu") if device_id is None else torch.device("cuda", device_id)
        self.labels = torch.as_tensor(table.labels, dtype=torch.int64, device=self.device)
        # Paths are joined per epoch for this rank's share only, as NumPy object arrays: no pathlib per sample.
        self.image_root = os.path.join(str(table.image_root), "")
        self.relative_paths = np.asarray(table.paths, dtype=object)
        # As with pathlib, a path that is already absolute is taken as it is.
        self.absolute = np.frompyfunc(str.startswith, 2, 1)(self.relative_paths, os.sep).astype(bool)
        self.set_epoch(0)

    def set_epoch(self, epoch: int, start_batch: int = 0, rows: np.ndarray | None = None) -> None:
        """Select the epoch's order; `start_batch` skips the batches already trained when an epoch resumes, `rows`
        (sample ids of the table) limits the pass to those samples."""
        self.epoch, self.start_batch = epoch, start_batch
        order = pass_order(len(self.table), rows, shuffle=self.train, seed=self.seed, epoch=epoch)
        share = rank_share(order, self.rank, self.world_size, self.batch_size)
        self.ids = share[start_batch * self.batch_size:]

    def __len__(self) -> int:
        return math.ceil(len(self.ids) / self.batch_size)

    def epoch_files(self) -> list[str]:
        """The image files of this rank's share of the epoch, in order."""
        paths = self.relative_paths[self.ids]
        files = self.image_root + paths
        absolute = self.absolute[self.ids]
        files[absolute] = paths[absolute]
        return files.tolist()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if len(self.ids) == 0:
            return
        files = self.epoch_files()
        # A fresh pipeline per pass makes the augmentation a function of (seed, epoch, rank, start batch)
        # alone, like the order, so a resumed run sees the same epochs as an uninterrupted one.
        augmentation_seed = np.random.SeedSequence([self.seed, self.epoch, self.rank, self.start_batch])
        pipeline = _image_pipeline(
            files, self.ids.tolist(), train=self.train, augment=self.augment, image_size=self.image_size,
            mean=self.mean, std=self.std, decode_device="cpu" if self.device_id is None else "mixed",
            batch_size=self.batch_size, num_threads=self.num_threads, device_id=self.device_id,
            seed=int(augmentation_seed.generate_state(1)[0] >> 1), prefetch_queue_depth=PREFETCH_DEPTH,
        )
        batches_done = 0
        try:
            iterator = DALIGenericIterator(pipeline, ["images", "ids"], reader_name=READER_NAME,
                                           last_batch_policy=LastBatchPolicy.PARTIAL)
            for outputs in iterator:
                batch_ids = outputs[0]["ids"].view(-1).long()
                yield outputs[0]["images"], self.labels[batch_ids], batch_ids
                batches_done += 1
        except RuntimeError as error:
            raise self._explain(error, files, batches_done) from None

    def _explain(self, error: RuntimeError, files: list[str], batches_done: int) -> Exception:
        """DALI's errors name an operator, rarely the file: find the sample among the batches in flight."""
        in_flight = files[batches_done * self.batch_size:(batches_done + PREFETCH_DEPTH + 1) * self.batch_size]
        culprit = next((path for path in in_flight if path in str(error)), None) or first_undecodable(in_flight)
        if culprit is None:
            return RuntimeError(f"{self.table.origin}: DALI failed on batch {batches_done} of epoch {self.epoch} "
                                f"(rank {self.rank}): {error}")
        sample_id = int(self.ids[files.index(culprit)])
        first = DataError(f"{self.table.origin}: sample {sample_id} ({culprit}) cannot be read or decoded")
        return unreadable_images_error(self.table, first, {sample_id: "DALI cannot read or decode it"})


def build_dali_loader(table: SampleTable, *, train: bool, batch_size: int, image_size: int, mean: list[float],
                      std: list[float], augment: str, rank: int, world_size: int, seed: int, num_threads: int,
                      device_id: int | None) -> DaliLoader:
    """A DALI loader of `table` for this rank; `device_id=None` decodes on the CPU and yields CPU tensors."""
    return DaliLoader(table, train=train, batch_size=batch_size, image_size=image_size, mean=mean, std=std,
                      augment=augment, rank=rank, world_size=world_size, seed=seed, num_threads=num_threads,
                      device_id=device_id)
