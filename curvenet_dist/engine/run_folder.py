"""The run folder: new, empty or a run folder already (never a folder of someone else's files), and written by
one stage at a time.

Rank 0 locks the folder before the stage writes anything in it and holds the lock until its process ends; a
second stage on the same folder stops, on every rank, with one line naming the holder. The lock is a POSIX
record lock (fcntl.lockf) on run.lock, which records the holder's pid, host and start time. The kernel drops it
when the process ends, however it ends; unlike flock's, it is not inherited by forked DataLoader workers, which
would otherwise keep a killed run's folder locked until they noticed their parent was gone.
"""
from __future__ import annotations

import fcntl
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import IO

from curvenet_dist.config import ConfigError

LOCK_FILE = "run.lock"
WRITE_CHECK_PREFIX = ".write-check-"
# What stages write into their folder first: a folder holding any of these is a run folder.
RUN_FOLDER_ENTRIES = frozenset({LOCK_FILE, "config.yaml", "checkpoints", "curves.zarr", "metrics.json",
                                "mlflow_run_id"})


def check_run_dir(folder: Path) -> None:
    """The run folder exists (made if need be), holds no one else's files, and a file can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Another rank's write check may be in the folder right now.
        entries = sorted(path.name for path in folder.iterdir() if not path.name.startswith(WRITE_CHECK_PREFIX))
        # A real write, not os.access: root passes access checks on folders it cannot write (read-only mounts).
        with tempfile.NamedTemporaryFile(dir=folder, prefix=WRITE_CHECK_PREFIX):
            pass
    except OSError as error:
        raise ConfigError(f"run.dir={folder}: cannot write there ({error.strerror or error})") from None
    if entries and RUN_FOLDER_ENTRIES.isdisjoint(entries):
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ConfigError(f"run.dir={folder}: the folder holds other files ({shown}) and is not a run folder; "
                          f"choose a new or empty folder")


def lock_run_folder(folder: Path) -> IO[str]:
    """Lock `folder` for this process; returns the open lock file, which holds the lock while it stays open."""
    lock_file = open(folder / LOCK_FILE, "a+")
    try:
        fcntl.lockf(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "a process that is just starting"
        lock_file.close()
        raise ConfigError(f"run.dir={folder}: another run is using this folder ({holder}); wait for it to end or "
                          f"choose another run.dir") from None
    lock_file.truncate(0)
    lock_file.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n")
    lock_file.flush()
    return lock_file


def lock_run_folder_for_job(folder: Path, is_main: bool) -> IO[str] | None:
    """Rank 0 locks `folder`; if it cannot, every rank raises the same ConfigError naming the holder.
    Returns rank 0's open lock file (None on other ranks)."""
    import torch.distributed as dist

    lock_file, refusal = None, None
    if is_main:
        try:
            lock_file = lock_run_folder(folder)
        except ConfigError as error:
            refusal = str(error)
    if dist.is_initialized():
        outcome = [refusal]
        dist.broadcast_object_list(outcome, src=0)
        refusal = outcome[0]
    if refusal is not None:
        raise ConfigError(refusal)
    return lock_file
