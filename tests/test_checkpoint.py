import os

import numpy as np
import pytest
import torch

from curvenet_dist.engine.checkpoint import CheckpointError, Checkpointer, checksum_path, file_sha256


class RunsACommand:
    """What a crafted checkpoint holds: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def checkpoints(folder, count=3):
    checkpointer = Checkpointer(folder, "f1", keep=count)
    for epoch in range(1, count + 1):
        checkpointer.save({"model": {"weight": torch.full((64, 64), float(epoch))}, "value": epoch}, epoch)
    return checkpointer


def load(checkpointer):
    said = []
    path, state = checkpointer.load_latest(said.append)
    return path.name, state["value"], said


def test_checkpoints_are_atomic_and_only_the_newest_are_kept(tmp_path):
    checkpointer = Checkpointer(tmp_path, "f1", keep=2)
    for epoch in range(1, 5):
        checkpointer.save({"value": epoch}, epoch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00003-00000000.pt", "step-00003-00000000.pt.sha256",
                                                          "step-00004-00000000.pt", "step-00004-00000000.pt.sha256"]
    assert load(checkpointer) == ("step-00004-00000000.pt", 4, [])
    with pytest.raises(CheckpointError, match="belongs to another dataset or config"):
        Checkpointer(tmp_path, "f2", keep=2).load_latest(print)


def test_every_checkpoint_loads_as_plain_data_and_a_value_that_would_not_is_refused_when_saved(tmp_path):
    checkpointer = checkpoints(tmp_path, 1)
    state = torch.load(tmp_path / "step-00001-00000000.pt", weights_only=True)
    assert state["value"] == 1 and state["fingerprint"] == "f1"
    with pytest.raises(TypeError, match=r"state\['partial'\]\['ids'\] is a numpy.ndarray"):
        checkpointer.save({"partial": {"ids": np.arange(3)}}, 2)
    assert not (tmp_path / "step-00002-00000000.pt").exists()


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_a_damaged_newest_checkpoint_is_skipped_with_one_line_for_the_previous_one(tmp_path, damage):
    checkpointer = checkpoints(tmp_path)
    newest = tmp_path / "step-00003-00000000.pt"
    if damage == "truncated":
        os.truncate(newest, 1000)
    else:
        with open(newest, "r+b") as file:
            file.seek(newest.stat().st_size // 2)
            file.write(bytes(64))
    assert load(checkpointer) == ("step-00002-00000000.pt", 2, [
        f"skipping {newest}: its sha256 does not match step-00003-00000000.pt.sha256 (the file is damaged)"])


def test_a_crafted_checkpoint_is_never_unpickled(tmp_path):
    checkpointer = checkpoints(tmp_path, 2)
    marker = tmp_path / "code-ran"
    crafted = tmp_path / "step-99999-00000000.pt"
    torch.save({"fingerprint": "f1", "epoch": 99999, "batch": 0, "payload": RunsACommand(marker)}, crafted)
    with pytest.raises(CheckpointError, match=f"^{crafted} has no checksum file .* move {tmp_path} away or choose "
                                              f"another run.dir$"):
        checkpointer.load_latest(print)
    # With a checksum that matches (whoever wrote the file wrote that too), weights_only refuses it: resume falls back.
    checksum_path(crafted).write_text(f"{file_sha256(crafted)}  {crafted.name}\n")
    assert load(checkpointer) == ("step-00002-00000000.pt", 2, [
        f"skipping {crafted}: it holds objects other than tensors and plain values, which are never unpickled"])
    assert not marker.exists()


def test_an_unreadable_checkpoint_with_a_matching_checksum_is_skipped(tmp_path):
    checkpointer = checkpoints(tmp_path, 2)
    newest = tmp_path / "step-00002-00000000.pt"
    os.truncate(newest, 1000)
    checksum_path(newest).write_text(f"{file_sha256(newest)}  {newest.name}\n")
    assert load(checkpointer) == ("step-00001-00000000.pt", 1, [
        f"skipping {newest}: it cannot be read (PytorchStreamReader failed reading zip archive: failed finding "
        f"central directory)"])


def test_a_checkpoint_of_the_previous_format_is_refused_with_one_line(tmp_path):
    torch.save({"fingerprint": "f1", "epoch": 1, "batch": 0, "value": 1}, tmp_path / "step-00001-00000000.pt")
    with pytest.raises(CheckpointError, match="has no checksum file"):
        Checkpointer(tmp_path, "f1", keep=2).load_latest(print)


def test_no_usable_checkpoint_at_all_is_refused_not_restarted(tmp_path):
    checkpointer = checkpoints(tmp_path, 2)
    for path in tmp_path.glob("*.pt"):
        os.truncate(path, 100)
    said = []
    with pytest.raises(CheckpointError, match=f"none of the 2 checkpoints in {tmp_path} can be resumed from"):
        checkpointer.load_latest(said.append)
    assert len(said) == 2
