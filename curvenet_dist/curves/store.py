"""The curve store (DESIGN.md §2): a Zarr v3 group holding every training sample's loss at every probe epoch.

Layout: `loss` [N, T] float32 (NaN = not recorded), chunked along samples with one column per chunk column;
`label` [N], `true_label` [N] (-1 unknown); `lr` [T]; `epoch_complete` [T] (1 once a column is whole). The
group's attributes hold the fingerprints of the config and of the dataset that made it. A column is marked complete
only after it is fully written, so a crash never leaves a half epoch that looks whole. Curve features computed
from the store are saved beside it (`<store>.features/`) and deleted whenever a column is written or discarded.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import zarr

ROWS_PER_CHUNK = 65536


class CurveStoreError(ValueError):
    """The store does not belong to this run, or is not complete enough for what is asked."""


class CurveStore:
    def __init__(self, group: zarr.Group, path: Path):
        self.group, self.path = group, path
        self.loss = group["loss"]

    @classmethod
    def open_or_create(cls, path: Path, *, fingerprint: str, dataset_fingerprint: str, labels: np.ndarray,
                       true_labels: np.ndarray, num_epochs: int) -> "CurveStore":
        """Open the store of this run, or create it; refuse a store made by another dataset or config."""
        path = Path(path)
        if path.exists():
            cls.check_belongs(path, fingerprint)
            return cls.open(path)
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        num_samples = len(labels)
        group.create_array("loss", shape=(num_samples, num_epochs), chunks=(min(num_samples, ROWS_PER_CHUNK), 1),
                           dtype="float32", fill_value=np.nan)
        group.create_array("label", data=np.asarray(labels, np.int64), chunks=(min(num_samples, ROWS_PER_CHUNK),))
        group.create_array("true_label", data=np.asarray(true_labels, np.int64), chunks=(min(num_samples, ROWS_PER_CHUNK),))
        group.create_array("lr", shape=(num_epochs,), dtype="float32", fill_value=np.nan)
        group.create_array("epoch_complete", shape=(num_epochs,), dtype="uint8", fill_value=0)
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
    def labels(self) -> np.ndarray:
        return self.group["label"][:]

    @property
    def true_labels(self) -> np.ndarray:
        return self.group["true_label"][:]

    @property
    def features_dir(self) -> Path:
        """Beside the store: what is derived from its columns (curves/features.py), deleted when a column changes."""
        return self.path.with_name(f"{self.path.name}.features")

    def forget_features(self) -> None:
        shutil.rmtree(self.features_dir, ignore_errors=True)

    def complete_epochs(self) -> np.ndarray:
        return np.flatnonzero(self.group["epoch_complete"][:])

    def write_epoch(self, epoch: int, losses: np.ndarray, lr: float) -> None:
        """Write column `epoch` (losses indexed by sample id), then mark it complete."""
        if losses.shape != (self.num_samples,) or not np.isfinite(losses).all():
            bad = np.flatnonzero(~np.isfinite(losses))[:5] if losses.shape == (self.num_samples,) else []
            raise CurveStoreError(
                f"epoch {epoch}: expected one finite loss for each of {self.num_samples} samples, got shape "
                f"{losses.shape}" + (f", non-finite at sample ids {bad.tolist()}" if len(bad) else "")
            )
        self.forget_features()
        self.loss[:, epoch] = losses.astype(np.float32)
        self.group["lr"][epoch] = lr
        self.group["epoch_complete"][epoch] = 1

    def discard_from(self, epoch: int) -> None:
        """Forget epochs >= `epoch` (a resumed run records them again, once)."""
        if epoch >= self.num_epochs:
            return
        self.forget_features()
        self.group["epoch_complete"][epoch:] = 0
        self.loss[:, epoch:] = np.nan
        self.group["lr"][epoch:] = np.nan
