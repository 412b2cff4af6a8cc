"""Resuming the allocate stage through real torchrun (gloo): SIGTERM at a few steps an epoch is seen and saved, the
rerun ends as an uninterrupted run does; a mid-epoch position is never resumed under another world size or batch
size; a damaged checkpoint is skipped for the one before it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import QUICKSTART, REPO, TINY, torchrun

pytestmark = pytest.mark.slow
# The quickstart's data and meta settings on a tiny network; CurveNet is meta-learned in every epoch, so a resumed
# epoch needs the weighting net, both optimizers and the meta-batch position.
ALLOCATE = [*TINY, "allocate.epochs=4", "allocate.milestones=[3]", "curvenet.skip_epochs=1", "meta.batch_size=20",
            "curvenet.skip_layers=2"]
DRIVER = "import sys; from curvenet_dist.engine.launch import torchrun_stage; torchrun_stage(2, 'allocate', sys.argv[1:])"


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("probe") / "run"
    torchrun("probe.py", 2, ["--config", str(QUICKSTART), f"run.dir={run_dir}", *TINY, "probe.epochs=4"])
    return run_dir


def arguments(probe_run, run_dir, batch_size):
    return ["--config", str(QUICKSTART), f"allocate.probe_dir={probe_run}", f"run.dir={run_dir}", *ALLOCATE,
            f"data.batch_size={batch_size}"]


def sigterm_after_epoch_2(probe_run, run_dir, batch_size) -> tuple[subprocess.CompletedProcess, float]:
    """Run the stage on 2 ranks through the project's driver, SIGTERM the driver as soon as epoch 2's checkpoint
    is written (so the signal lands early in epoch 3), and return the finished driver and the seconds it took
    from the signal to its exit."""
    process = subprocess.Popen([sys.executable, "-c", DRIVER, *arguments(probe_run, run_dir, batch_size)], cwd=REPO,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "step-00002-00000000.pt").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), time.monotonic() - signalled


def mid_epoch_checkpoint(run_dir):
    [path] = [p for p in (run_dir / "checkpoints").glob("step-00002-*.pt") if not p.name.endswith("-00000000.pt")]
    return path


def comparable(run_dir) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {key: value for key, value in metrics.items() if key not in ("wall_s", "mlflow_run_id")}


def test_sigterm_at_8_steps_an_epoch_saves_and_the_rerun_ends_as_an_uninterrupted_run(probe_run, tmp_path):
    """Bit for bit, as after a kill -9: the mid-epoch checkpoint holds all the state the rest of the run reads."""
    torchrun("allocate.py", 2, arguments(probe_run, tmp_path / "uninterrupted", 32))
    run_dir = tmp_path / "run"
    stopped, seconds = sigterm_after_epoch_2(probe_run, run_dir, 32)
    assert "2 rank(s) x batch 32: 8 steps an epoch" in stopped.stdout
    assert stopped.returncode == 143, stopped.stderr
    assert "SIGTERM: saved" in stopped.stdout, stopped.stdout
    assert seconds < 25, "saved well before torchrun's SIGKILL, 30 s after its SIGTERM"
    assert stopped.stderr.strip().splitlines()[-1] == ("allocate stopped by SIGTERM after saving; rerun the same "
                                                       "command to resume")
    checkpoint = mid_epoch_checkpoint(run_dir)
    assert not (run_dir / "metrics.json").exists()
    resumed = torchrun("allocate.py", 2, arguments(probe_run, run_dir, 32))
    assert f"resuming at epoch 3, batch {int(checkpoint.stem.split('-')[2])}" in resumed.stdout
    assert comparable(run_dir) == comparable(tmp_path / "uninterrupted")


def test_a_mid_epoch_position_is_refused_under_another_world_size_or_batch_size(probe_run, tmp_path):
    run_dir = tmp_path / "run"
    stopped, _ = sigterm_after_epoch_2(probe_run, run_dir, 8)
    assert stopped.returncode == 143, stopped.stderr
    checkpoint = mid_epoch_checkpoint(run_dir)
    batch = int(checkpoint.stem.split("-")[2])
    for nproc, batch_size in ((1, 8), (2, 16)):
        result = torchrun("allocate.py", nproc, arguments(probe_run, run_dir, batch_size), check=False)
        # Rank 0 prints the line unless another rank's exit ended it first; torchrun's summary always shows it.
        assert result.returncode != 0
        assert (f"error: {checkpoint} stopped inside epoch 3 after batch {batch} of 2 process(es) x "
                f"data.batch_size=8; this run has {nproc} x {batch_size}, which would skip or repeat samples of that "
                f"epoch: rerun with 2 process(es) and data.batch_size=8") in result.stderr, result.stderr
        assert "curvenet_dist/" not in result.stderr, result.stderr
    assert not (run_dir / "metrics.json").exists()

    # Damaged, the mid-epoch checkpoint is skipped for the epoch boundary before it, which any world size resumes.
    os.truncate(checkpoint, 1000)
    resumed = torchrun("allocate.py", 1, arguments(probe_run, run_dir, 16))
    skipped = f"skipping {checkpoint}: its sha256 does not match {checkpoint.name}.sha256 (the file is damaged)"
    assert resumed.stdout.count(skipped) == 1, resumed.stdout
    assert "resuming at epoch 3, batch 0" in resumed.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 4
