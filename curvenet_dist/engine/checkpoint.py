"""Checkpoints: each file fsynced with a sha256 sidecar before the rename that publishes it, the newest k kept.
Resume takes the newest checkpoint that is whole (its checksum matches) and holds only tensors and plain values
(torch.load with weights_only=True: a checkpoint is never unpickled), and refuses one from another run."""
from __future__ import annotations

import hashlib
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch

CHECKSUM_SUFFIX = ".sha256"
PLAIN_VALUES = (int, float, str, bool, type(None))


class CheckpointError(ValueError):
    """A checkpoint that belongs to another dataset or config, or that cannot be resumed from."""


def check_loadable(value: object, key: str = "state") -> None:
    """Raise TypeError naming the first entry that torch.load(weights_only=True) would refuse: a checkpoint holds
    tensors, dicts, lists, tuples and plain numbers, strings or None only (numpy values become tensors first)."""
    if isinstance(value, torch.Tensor) and type(value) in (torch.Tensor, torch.nn.Parameter):
        return
    if type(value) in (dict, OrderedDict):
        for name, item in value.items():
            check_loadable(name, f"{key} key")
            check_loadable(item, f"{key}[{name!r}]")
    elif type(value) in (list, tuple):
        for index, item in enumerate(value):
            check_loadable(item, f"{key}[{index}]")
    elif type(value) not in PLAIN_VALUES:
        raise TypeError(f"checkpoint {key} is a {type(value).__module__}.{type(value).__qualname__}; a checkpoint "
                        f"holds tensors, dicts, lists and plain values only")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_synced(path: Path, write: Callable) -> None:
    with open(path, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


class Checkpointer:
    def __init__(self, folder: Path, fingerprint: str, keep: int):
        self.folder, self.fingerprint, self.keep = Path(folder), fingerprint, keep

    def _paths(self) -> list[Path]:
        return sorted(self.folder.glob("step-*.pt"))

    def save(self, state: dict, epoch: int, batch: int = 0) -> Path:
        """Save `state` as the position (epoch, batch): the next work to do. Keeps the newest `keep`.

        The checksum is published before the checkpoint it describes, so every checkpoint file in the folder has
        one: a crash in between leaves only a checksum without its file, which nothing reads."""
        state = {"fingerprint": self.fingerprint, "epoch": epoch, "batch": batch, **state}
        check_loadable(state)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"step-{epoch:05d}-{batch:08d}.pt"
        temporary = path.with_suffix(".tmp")
        write_synced(temporary, lambda file: torch.save(state, file))
        checksum = checksum_path(path)
        checksum_temporary = checksum.with_suffix(".tmp")
        line = f"{file_sha256(temporary)}  {path.name}\n"  # the `sha256sum -c` format
        write_synced(checksum_temporary, lambda file: file.write(line.encode()))
        os.replace(checksum_temporary, checksum)
        fsync_folder(self.folder)
        os.replace(temporary, path)
        fsync_folder(self.folder)
        for old in self._paths()[: -self.keep]:
            old.unlink()
            checksum_path(old).unlink(missing_ok=True)
        return path

    def load_latest(self, say: Callable[[str], None],
                    map_location: str | torch.device = "cpu") -> tuple[Path, dict] | None:
        """(path, state) of the newest usable checkpoint, None if there is none yet. Each newer one that is damaged
        or not plain data is skipped with one line through `say`; a checkpoint of another config is refused."""
        paths = self._paths()
        for path in paths:
            if not checksum_path(path).exists():
                raise CheckpointError(
                    f"{path} has no checksum file ({checksum_path(path).name}): an earlier version of curvenet-dist "
                    f"wrote it (or something else did), and this one does not resume from it; move {self.folder} "
                    f"away or choose another run.dir"
                )
        for path in reversed(paths):
            state = self._load_if_valid(path, say, map_location)
            if state is None:
                continue
            if state["fingerprint"] != self.fingerprint:
                raise CheckpointError(
                    f"{path} belongs to another dataset or config (fingerprint {state['fingerprint']}, this "
                    f"run {self.fingerprint}); choose another run.dir or move the old run away"
                )
            return path, state
        if paths:
            raise CheckpointError(f"none of the {len(paths)} checkpoints in {self.folder} can be resumed from (each "
                                  f"is named above); move them away to start this run again")
        return None

    @staticmethod
    def _load_if_valid(path: Path, say: Callable[[str], None], map_location) -> dict | None:
        if checksum_path(path).read_bytes().split()[:1] != [file_sha256(path).encode()]:
            say(f"skipping {path}: its sha256 does not match {checksum_path(path).name} (the file is damaged)")
            return None
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            say(f"skipping {path}: it holds objects other than tensors and plain values, which are never unpickled")
            return None
        except RuntimeError as error:
            say(f"skipping {path}: it cannot be read ({str(error).splitlines()[0].split('. ')[0]})")
            return None
        if not isinstance(state, dict) or "fingerprint" not in state:
            say(f"skipping {path}: it holds no checkpoint")
            return None
        return state
