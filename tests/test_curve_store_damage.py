"""A damaged curve store on disk, end to end through real torchrun processes with gloo: the probe records a lost
chunk again on its next start, and the allocate stage stops with one line instead of reading it."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from curvenet_dist.curves.features import normalized_curves, curve_features
from curvenet_dist.curves.store import CurveStore, CurveStoreError
from tests.conftest import QUICKSTART, TINY, assert_clean_error, torchrun
from tests.test_curve_store import flip_bytes

pytestmark = pytest.mark.slow


def probe(run_dir, **kwargs):
    return torchrun("probe.py", 2, ["--config", str(QUICKSTART), f"run.dir={run_dir}", *TINY], **kwargs)


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    """A finished 3-epoch probe on 2 ranks; its checkpoints are those of epochs 2 and 3 (run.keep_checkpoints=2)."""
    run_dir = tmp_path_factory.mktemp("probe") / "run"
    probe(run_dir)
    return run_dir


def copy_run(probe_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(probe_run, run_dir)
    return run_dir


@pytest.mark.parametrize("epoch, resumes_at", [(1, None), (2, "resuming at epoch 3")],
                         ids=["before-every-checkpoint", "after-a-kept-checkpoint"])
def test_a_lost_chunk_is_recorded_again_by_the_next_probe_start(probe_run, tmp_path, epoch, resumes_at):
    run_dir = copy_run(probe_run, tmp_path)
    recorded = CurveStore.open(run_dir / "curves.zarr", mode="r").loss[:]
    curve_features(CurveStore.open(run_dir / "curves.zarr", mode="r"), 1, "dataset")  # saved beside the store

    (run_dir / "curves.zarr" / "loss" / "c" / "0" / str(epoch)).unlink()
    with pytest.raises(CurveStoreError, match=rf"epoch {epoch + 1}: chunk loss/c/0/{epoch} is missing"):
        curve_features(CurveStore.open(run_dir / "curves.zarr", mode="r"), 1, "dataset")

    output = probe(run_dir).stdout
    assert (f"curves.zarr: probe epochs [{epoch + 1}] are damaged (epoch {epoch + 1}: chunk loss/c/0/{epoch} is "
            f"missing); the probe records epoch {epoch + 1} and every later one again") in output, output
    assert (resumes_at in output) if resumes_at else ("resuming at" not in output), output
    store = CurveStore.open(run_dir / "curves.zarr", mode="r")
    assert store.complete_epochs().tolist() == [0, 1, 2]
    # Training replayed from the same state, on CPU with gloo: the very losses recorded the first time.
    np.testing.assert_array_equal(store.loss[:], recorded)
    np.testing.assert_array_equal(curve_features(store, 1, "dataset"), normalized_curves(store, 1, "dataset"))


@pytest.mark.parametrize("damage, problem", [
    (lambda chunk: chunk.unlink(), "is missing"),
    (flip_bytes, "fails its checksum"),
], ids=["deleted", "flipped"])
def test_allocate_stops_with_one_line_on_a_damaged_epoch(probe_run, tmp_path, damage, problem):
    run_dir = copy_run(probe_run, tmp_path)
    damage(run_dir / "curves.zarr" / "loss" / "c" / "0" / "2")
    result = torchrun("allocate.py", 2, ["--config", str(QUICKSTART), f"allocate.probe_dir={run_dir}",
                                         f"run.dir={tmp_path / 'allocate'}", *TINY, "allocate.epochs=2",
                                         "allocate.milestones=[1]", "curvenet.skip_epochs=1", "method=curvenet"],
                      check=False)
    assert_clean_error(result, f"curves.zarr: probe epochs [3] are damaged (epoch 3: chunk loss/c/0/2 {problem}); "
                               f"rerun the probe command, which records them again")
    assert "Input contains NaN" not in result.stderr
