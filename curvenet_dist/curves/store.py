"""The curve store (DESIGN.md §2): a Zarr v3 group holding every training sample's loss and logit margin at every
probe epoch.

Layout: `loss` [N, T] float32 (NaN = not recorded), chunked along samples with one column per chunk column;
`margin` [N, T] float32 beside it, chunked the same: the logit of the given label minus the largest other logit (the
margin AUM averages, Pleiss et al. 2020); `label` [N], `true_label` [N] (-1 unknown); `lr` [T]; `epoch_complete`
[T] (1 once its columns are whole). Stores begun before the probe recorded margins have no `margin` array: they
open and are read as before, and a probe resuming one goes on recording losses only. The
group's attributes hold the fingerprints of the config and of the dataset that made it. A column is marked complete
only after it is fully written, so a crash never leaves a half epoch that looks whole. Curve features computed
from the store are saved beside it (`<store>.features/`), named by a hash of the stored bytes they were built from
(`content_key`), and deleted whenever a column is written or discarded.

Every chunk ends in its crc32c checksum (Zarr v3's crc32c codec, after the zstd compressor), so bytes changed on
disk are refused instead of read as losses. A complete epoch is whole when each chunk of its loss and margin columns
is present (a missing chunk reads as the fill value NaN), passes its checksum and holds finite values; `damage`
names the epochs that are not, the probe records them again on its next start, and `read_epoch`, through which the
curves are read, refuses a column that is not whole with one line. Stores written before the checksums existed
still open and are checked the same way, except that changed bytes which still decompress to finite losses go
unnoticed in them.
"""
from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

ROWS_PER_CHUNK = 65536
COMPRESSORS = (ZstdCodec(), Crc32cCodec())
"""Zarr's default compressor, then each chunk's checksum over the compressed bytes."""
RECORDINGS = {"loss": "losses", "margin": "margins"}
"""The [N, T] arrays a probe epoch writes, with what their values are called in messages."""
UNREADABLE_CHUNK = (ValueError, RuntimeError)
"""What zarr raises for a chunk it cannot decode (`unreadable_because` tells them apart)."""


class CurveStoreError(ValueError):
    """The store does not belong to this run, is not complete enough for what is asked, or is damaged."""


class CurveStore:
    def __init__(self, group: zarr.Group, path: Path):
        self.group, self.path = group, path
        self.loss = group["loss"]
        self.margin = group["margin"] if "margin" in group.array_keys() else None

    @classmethod
    def open_or_create(cls, path: Path, *, fingerprint: str, dataset_fingerprint: str, labels: np.ndarray,
                       true_labels: np.ndarray, num_epochs: int, with_margins: bool = False) -> "CurveStore":
        """Open the store of this run, or create it (with a margin array if `with_margins`); refuse a store made by
        another dataset or config."""
        path = Path(path)
        if path.exists():
            cls.check_belongs(path, fingerprint)
            return cls.open(path)
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        num_samples = len(labels)
        rows = min(num_samples, ROWS_PER_CHUNK)
        for name in RECORDINGS if with_margins else ("loss",):
            group.create_array(name, shape=(num_samples, num_epochs), chunks=(rows, 1), dtype="float32",
                               fill_value=np.nan, compressors=COMPRESSORS)
        group.create_array("label", data=np.asarray(labels, np.int64), chunks=(rows,), compressors=COMPRESSORS)
        group.create_array("true_label", data=np.asarray(true_labels, np.int64), chunks=(rows,),
                           compressors=COMPRESSORS)
        group.create_array("lr", shape=(num_epochs,), dtype="float32", fill_value=np.nan, compressors=COMPRESSORS)
        group.create_array("epoch_complete", shape=(num_epochs,), dtype="uint8", fill_value=0, compressors=COMPRESSORS)
        group.attrs.update({"fingerprint": fingerprint, "dataset_fingerprint": dataset_fingerprint,
                            "num_samples": num_samples, "num_epochs": num_epochs})
        return cls(group, path)

    @classmethod
    def check_belongs(cls, path: Path, fingerprint: str) -> None:
        """Raise if a store exists at `path` but was recorded for another dataset or config."""
        if Path(path).exists():
            found = cls.open(path, mode="r").fingerprint
            if found != fingerprint:
                raise CurveStoreError(
                    f"{path} was recorded for another dataset or config (fingerprint {found}, this run "
                    f"{fingerprint}); choose another run.dir or move the old run away"
                )

    @classmethod
    def open(cls, path: Path, mode: str = "r+") -> "CurveStore":
        path = Path(path)
        try:
            group = zarr.open_group(str(path), mode=mode, zarr_format=3)
            missing = {"loss", "label", "true_label", "lr", "epoch_complete"} - set(group.array_keys())
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as error:
            raise CurveStoreError(f"{path} is not a curve store: {error}") from None
        missing |= {"fingerprint", "dataset_fingerprint"} - set(group.attrs)
        if missing:
            raise CurveStoreError(f"{path} is not a curve store of this version (missing {', '.join(sorted(missing))})")
        return cls(group, path)

    @property
    def fingerprint(self) -> str:
        return str(self.group.attrs["fingerprint"])

    @property
    def dataset_fingerprint(self) -> str:
        """The training samples' fingerprint (SampleTable.fingerprint) the curves were recorded on."""
        return str(self.group.attrs["dataset_fingerprint"])

    @property
    def num_samples(self) -> int:
        return self.loss.shape[0]

    @property
    def num_epochs(self) -> int:
        return self.loss.shape[1]

    @property
    def recordings(self) -> list[zarr.Array]:
        """The [N, T] arrays each probe epoch writes: the losses, and the margins where the store has them."""
        return [self.loss] if self.margin is None else [self.loss, self.margin]

    @property
    def labels(self) -> np.ndarray:
        return self._read_whole_array("label")

    @property
    def true_labels(self) -> np.ndarray:
        return self._read_whole_array("true_label")

    @property
    def features_dir(self) -> Path:
        """Beside the store: what is derived from its columns (curves/features.py), deleted when a column changes."""
        return self.path.with_name(f"{self.path.name}.features")

    def forget_features(self) -> None:
        shutil.rmtree(self.features_dir, ignore_errors=True)

    def complete_epochs(self) -> np.ndarray:
        return np.flatnonzero(self._read_whole_array("epoch_complete"))

    def _read_whole_array(self, name: str) -> np.ndarray:
        try:
            return self.group[name][:]
        except UNREADABLE_CHUNK as error:
            raise CurveStoreError(f"{self.path}: array {name} is damaged (a chunk {unreadable_because(error)}); move "
                                  f"the store away and rerun the probe command, which records it again") from None

    def read_epoch(self, epoch: int, array: str = "loss") -> np.ndarray:
        """Column `epoch` of `array` (loss or margin) of a complete epoch; if it is not whole, one line naming every
        damaged complete epoch."""
        if array == "margin" and self.margin is None:
            raise CurveStoreError(f"{self.path} holds no logit margins: it was begun before the probe recorded them; "
                                  f"run the probe into a new run.dir to record them")
        column = self._whole_column(self.group[array], epoch)
        if column is None:
            damage = self.damage(sorted({epoch, *self.complete_epochs().tolist()}))
            raise CurveStoreError(f"{self.path}: {describe_damage(damage)}; rerun the probe command, which records "
                                  f"them again")
        return column

    def damage(self, epochs: Iterable[int]) -> dict[int, str]:
        """{epoch: what is wrong with its columns} for each of `epochs` whose loss or margin column is not whole."""
        damage = {}
        for epoch in epochs:
            broken = [array for array in self.recordings if self._whole_column(array, epoch) is None]
            if broken:
                damage[int(epoch)] = self._column_problem(broken[0], epoch)
        return damage

    @staticmethod
    def _whole_column(array: zarr.Array, epoch: int) -> np.ndarray | None:
        """Column `epoch` of `array`, or None if a chunk of it cannot be decoded or holds a non-finite value (a
        missing chunk reads as the fill value NaN)."""
        try:
            column = array[:, epoch]
        except UNREADABLE_CHUNK:  # which chunk, and why, is `_column_problem`'s to say
            return None
        return column if np.isfinite(column).all() else None

    def _column_problem(self, array: zarr.Array, epoch: int) -> str:
        """What is wrong with the first chunk of column `epoch` of `array` that is not whole."""
        rows = array.chunks[0]
        for row_chunk in range(array.cdata_shape[0]):
            chunk = self._chunk_key(array, (row_chunk, epoch))
            if not (self.path / chunk).exists():
                return f"chunk {chunk} is missing"
            try:
                values = array[row_chunk * rows:(row_chunk + 1) * rows, epoch]
            except UNREADABLE_CHUNK as error:
                return f"chunk {chunk} {unreadable_because(error)}"
            if not np.isfinite(values).all():
                return f"chunk {chunk} holds non-finite {RECORDINGS[array.basename]}"
        return "its chunks changed while it was read (is a probe writing this store?)"

    @staticmethod
    def _chunk_key(array: zarr.Array, coordinates: tuple[int, ...]) -> str:
        """The chunk's path inside the store folder."""
        return f"{array.path}/{array.metadata.encode_chunk_key(coordinates)}"

    def content_key(self, epochs: Iterable[int]) -> str:
        """A hash of the stored bytes of the labels and of columns `epochs` of the recordings (a missing chunk hashes
        apart): what is built from them is saved under it, so a column changed on disk or recorded again never meets
        what was built from the old one. Reads each of those compressed chunks once (about 1 s at 1M samples x 55
        epochs)."""
        epochs = [int(epoch) for epoch in epochs]
        labels = self.group["label"]
        chunks = [self._chunk_key(labels, (row_chunk,)) for row_chunk in range(labels.cdata_shape[0])]
        chunks += [self._chunk_key(array, (row_chunk, epoch)) for array in self.recordings
                   for epoch in epochs for row_chunk in range(array.cdata_shape[0])]
        digest = hashlib.sha256(repr(epochs).encode())
        for chunk in chunks:
            file = self.path / chunk
            digest.update(hashlib.sha256(file.read_bytes()).digest() if file.exists() else bytes(32))
        return digest.hexdigest()[:20]

    def write_epoch(self, epoch: int, losses: np.ndarray, lr: float, margins: np.ndarray | None = None) -> None:
        """Write column `epoch` of the losses and, where the store records them, of the margins (both indexed by
        sample id), then mark it complete."""
        columns = {"loss": losses} if self.margin is None else {"loss": losses, "margin": margins}
        for array, values in columns.items():
            self._check_column(epoch, array, values)
        self.forget_features()
        for array, values in columns.items():
            self.group[array][:, epoch] = values.astype(np.float32)
        self.group["lr"][epoch] = lr
        self.group["epoch_complete"][epoch] = 1

    def _check_column(self, epoch: int, array: str, values: np.ndarray | None) -> None:
        shape = None if values is None else values.shape
        if shape != (self.num_samples,) or not np.isfinite(values).all():
            bad = np.flatnonzero(~np.isfinite(values))[:5] if shape == (self.num_samples,) else []
            raise CurveStoreError(
                f"epoch {epoch}: expected one finite {array} for each of {self.num_samples} samples, got "
                + ("none" if values is None else f"shape {shape}")
                + (f", non-finite at sample ids {bad.tolist()}" if len(bad) else "")
            )

    def discard_from(self, epoch: int) -> None:
        """Forget epochs >= `epoch` (a resumed run records them again, once)."""
        if epoch >= self.num_epochs:
            return
        self.forget_features()
        self.group["epoch_complete"][epoch:] = 0
        for array in self.recordings:
            array[:, epoch:] = np.nan
        self.group["lr"][epoch:] = np.nan


def unreadable_because(error: Exception) -> str:
    # zarr's crc32c codec raises ValueError; zstd, in a store written without checksums, RuntimeError.
    return "fails its checksum" if isinstance(error, ValueError) else "cannot be decompressed"


def describe_damage(damage: dict[int, str]) -> str:
    """`CurveStore.damage` as one phrase naming the epochs (counted from 1, as the probe's progress lines do)."""
    details = "; ".join(f"epoch {epoch + 1}: {problem}" for epoch, problem in sorted(damage.items()))
    return f"probe epochs {[epoch + 1 for epoch in sorted(damage)]} are damaged ({details})"
