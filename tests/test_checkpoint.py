import pytest

from curvenet_dist.engine.checkpoint import CheckpointError, Checkpointer


def test_checkpoints_are_atomic_and_only_the_newest_are_kept(tmp_path):
    checkpointer = Checkpointer(tmp_path, "f1", keep=2)
    for epoch in range(1, 5):
        checkpointer.save({"value": epoch}, epoch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00003-00000000.pt", "step-00004-00000000.pt"]
    assert checkpointer.load_latest()["value"] == 4
    with pytest.raises(CheckpointError, match="belongs to another dataset or config"):
        Checkpointer(tmp_path, "f2", keep=2).load_latest()
