"""The project's sbatch scripts on a real one-node SLURM cluster (tests/slurm_cluster.py): a request no node can
satisfy is refused at submit, a probe run with two torchrun processes finishes with a complete curve store, and a
pre-empted probe checkpoints, is requeued and resumes so that every epoch is trained and recorded exactly once."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (the fixture, used by name)

REPOSITORY = Path(__file__).resolve().parents[1]
PROBE_SCRIPT = REPOSITORY / "launch" / "slurm" / "probe.sbatch"
ALLOCATE_SCRIPT = REPOSITORY / "launch" / "slurm" / "allocate.sbatch"
# Small enough for two CPU cores: digits at 8x8 through a narrow ResNet-8.
SMALL = ["run.device=cpu", "tracking.enabled=false", "data.image_size=8", "model.width=8"]

pytestmark = pytest.mark.slow


def probe_command(run_dir: Path, data_dir: Path, epochs: int) -> list[str]:
    return [str(PROBE_SCRIPT), "configs/quickstart.yaml", f"run.dir={run_dir}", f"data.path={data_dir}",
            f"probe.epochs={epochs}", *SMALL]


def job_environment(cluster: SlurmCluster) -> dict[str, str]:
    # The job is submitted from the test's folder (its logs land there); CURVENET_ROOT names the repository.
    return cluster.environment(CURVENET_ROOT=str(REPOSITORY), NPROC_PER_NODE="2", OMP_NUM_THREADS="1")


def assert_complete_curve_store(run_dir: Path, epochs: int) -> None:
    store = zarr.open_group(str(run_dir / "curves.zarr"), mode="r")
    loss = store["loss"][:]
    assert loss.ndim == 2 and loss.shape[1] == epochs and loss.shape[0] > 0
    assert not np.isnan(loss).any(), f"{int(np.isnan(loss).sum())} losses were never recorded"
    assert store["epoch_complete"][:].tolist() == [1] * epochs


def finished_epochs(log: str, epochs: int) -> list[int]:
    """Epoch numbers of the probe's end-of-epoch progress lines, in the order they were printed."""
    return [int(number) for number in re.findall(rf"\[probe\] epoch (\d+)/{epochs} .*ETA", log)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("digits")


def test_request_no_node_can_satisfy_is_refused_at_submit(slurm_cluster: SlurmCluster, tmp_path: Path):
    impossible_requests = [["--nodes=2"], [f"--cpus-per-task={slurm_cluster.cpus + 1}"]]
    for request in impossible_requests:
        result = slurm_cluster.command("sbatch", *request, str(PROBE_SCRIPT), "configs/quickstart.yaml",
                                       check=False, cwd=tmp_path, env=job_environment(slurm_cluster))
        assert result.returncode != 0, f"sbatch {request} was accepted: {result.stdout}"
        assert "Batch job submission failed" in result.stderr
    assert slurm_cluster.command("squeue", "--noheader").stdout.strip() == ""


def test_missing_config_argument_fails_with_usage(slurm_cluster: SlurmCluster, tmp_path: Path):
    job = slurm_cluster.submit(str(PROBE_SCRIPT), cwd=tmp_path, env=job_environment(slurm_cluster))
    fields = slurm_cluster.wait_for_state(job, {"FAILED"}, timeout_s=60)
    assert fields["ExitCode"] == "2:0"
    # The script's own %x-%j naming, in the folder the job was submitted from.
    assert "usage: sbatch launch/slurm/<stage>.sbatch CONFIG" in (tmp_path / f"curvenet-probe-{job}.err").read_text()


def test_probe_then_allocate_with_two_processes_each(slurm_cluster: SlurmCluster, tmp_path: Path, data_dir: Path):
    run_dir, allocate_dir, epochs = tmp_path / "probe", tmp_path / "allocate", 3
    environment = job_environment(slurm_cluster)
    probe_job = slurm_cluster.submit(*probe_command(run_dir, data_dir, epochs), cwd=tmp_path, env=environment)
    # Both stages queued at once, the allocate stage held until the probe succeeds.
    allocate_job = slurm_cluster.submit(
        f"--dependency=afterok:{probe_job}", str(ALLOCATE_SCRIPT), "configs/quickstart.yaml",
        f"allocate.probe_dir={run_dir}", f"run.dir={allocate_dir}", f"data.path={data_dir}", "method=curvenet",
        "allocate.epochs=2", "allocate.milestones=[1]", *SMALL, cwd=tmp_path, env=environment)

    slurm_cluster.wait_for_state(probe_job, {"COMPLETED"}, timeout_s=400)
    assert json.loads((run_dir / "metrics.json").read_text())
    assert_complete_curve_store(run_dir, epochs)
    log = (tmp_path / f"curvenet-probe-{probe_job}.out").read_text()
    assert "1 node(s) x 2 process(es)" in log
    assert finished_epochs(log, epochs) == list(range(1, epochs + 1))

    slurm_cluster.wait_for_state(allocate_job, {"COMPLETED"}, timeout_s=400)
    assert json.loads((allocate_dir / "metrics.json").read_text())


def test_preempted_probe_checkpoints_requeues_and_resumes(slurm_cluster: SlurmCluster, tmp_path: Path,
                                                          data_dir: Path):
    run_dir, epochs = tmp_path / "probe", 8
    job = slurm_cluster.submit(*probe_command(run_dir, data_dir, epochs), cwd=tmp_path,
                               env=job_environment(slurm_cluster))
    deadline = time.monotonic() + 300
    while not any(run_dir.rglob("step-*.pt")):
        assert slurm_cluster.job_fields(job)["JobState"] in {"PENDING", "RUNNING"}, "the job ended before a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 300s"
        time.sleep(0.5)

    # What SLURM sends 120 s before the time limit (--signal=B:USR1@120): the script checkpoints and requeues.
    slurm_cluster.command("scancel", "--signal=USR1", "--batch", str(job))
    fields = slurm_cluster.wait_for_state(job, {"PENDING"}, timeout_s=120)
    assert fields["Restarts"] == "1"
    assert not (run_dir / "metrics.json").exists(), "the job finished before it was pre-empted"
    # The requeued job starts again on its own after SLURM's requeue delay (the test cluster's cred_expire), as a
    # user's would. Releasing it earlier (StartTime=now) raced slurmctld: the first attempt's exit status could
    # arrive after the second attempt had started and end it as FAILED.
    slurm_cluster.wait_for_state(job, {"COMPLETED"}, timeout_s=400)

    assert_complete_curve_store(run_dir, epochs)
    log = (tmp_path / f"curvenet-probe-{job}.out").read_text()
    assert "requeueing job" in log
    assert f"job {job} attempt 2" in log
    assert "[probe] resuming at epoch" in log, "the second attempt did not resume from its checkpoint"
    assert sorted(finished_epochs(log, epochs)) == list(range(1, epochs + 1)), "an epoch ran twice or never"
