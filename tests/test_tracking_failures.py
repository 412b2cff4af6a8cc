"""Tracking never stops or stalls training: a server that is down or goes down, a damaged store, a run folder
moved away from its store. Through real torchrun processes and a real MLflow server on loopback."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from curvenet_dist.engine.launch import torchrun_command
from tests.conftest import QUICKSTART, REPO, TINY, free_port, torchrun
from tests.test_probe import kill_job

pytestmark = pytest.mark.slow
TRACKING_OFF = "note: MLflow tracking off for the rest of this stage: "


def probe(run_dir: Path, *tracking: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """A one-epoch TINY probe with tracking on; it must succeed."""
    return torchrun("probe.py", 1, ["--config", str(QUICKSTART), f"run.dir={run_dir}", *TINY, "probe.epochs=1",
                                    "tracking.enabled=true", "tracking.experiment=failures", *tracking],
                    timeout=timeout)


def tracking_off_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith(TRACKING_OFF)]


def assert_trained_without_tracking(run_dir: Path, result: subprocess.CompletedProcess, reason: str) -> None:
    """The probe trained to the end, and one line (no traceback) said tracking was off and why."""
    [line] = tracking_off_lines(result)
    assert reason in line, line
    assert "Traceback" not in result.stderr and "curvenet_dist/" not in result.stderr, result.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 1
    [done] = [line for line in result.stdout.splitlines() if line.startswith("[probe] done: ")]
    assert done.endswith("MLflow tracking off"), done


def test_a_server_nothing_answers_at_is_given_up_within_seconds(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    result = probe(tmp_path / "run", f"tracking.uri={uri}")
    assert_trained_without_tracking(tmp_path / "run", result, f"cannot use the MLflow store at {uri}: cannot connect "
                                                              f"to 127.0.0.1:")
    assert time.monotonic() - start < 90


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` on loopback in a process group of its own, so it can be stopped whole."""
    port = free_port()
    executable = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    server = subprocess.Popen([executable, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                               "--artifacts-destination", str(folder / "artifacts")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return server, uri
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)


def test_a_server_that_goes_down_mid_run_turns_tracking_off_and_training_goes_on(tmp_path):
    server, uri = start_server(tmp_path)
    run_dir = tmp_path / "run"
    command = torchrun_command(1, REPO / "launch" / "probe.py",
                               ["--config", str(QUICKSTART), f"run.dir={run_dir}", *TINY, "probe.epochs=1",
                                "tracking.enabled=true", f"tracking.uri={uri}", "tracking.experiment=failures"])
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        # The run exists in MLflow once its id is in the run folder; its epochs are logged after that.
        while not (run_dir / "mlflow_run_id").is_file():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.1)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    try:
        stdout, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            kill_job(process)
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert process.returncode == 0, stderr
    assert_trained_without_tracking(run_dir, result, f"failed at {uri}: ")


def test_a_damaged_store_turns_tracking_off_and_training_goes_on(tmp_path):
    store = tmp_path / "mlflow.db"
    store.write_bytes(os.urandom(4096))
    result = probe(tmp_path / "run", f"tracking.uri=sqlite:///{store}")
    assert_trained_without_tracking(tmp_path / "run", result, f"cannot use the MLflow store at sqlite:///{store}: "
                                                              f"(sqlite3.DatabaseError) file is not a database")


def test_a_moved_run_folder_resumes_into_a_new_run_in_the_store_beside_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "first").mkdir()
    probe(tmp_path / "first" / "run")
    old_run_id = (tmp_path / "first" / "run" / "mlflow_run_id").read_text().strip()
    moved = tmp_path / "second" / "run"
    moved.parent.mkdir()
    (tmp_path / "first" / "run").rename(moved)
    result = probe(moved)
    new_store = f"sqlite:///{tmp_path / 'second' / 'mlflow.db'}"
    assert (f"note: MLflow run {old_run_id} named in {moved / 'mlflow_run_id'} is not in {new_store} (was the run "
            f"folder moved?); this stage logs to a new run") in result.stderr.splitlines()
    assert not tracking_off_lines(result) and "Traceback" not in result.stderr, result.stderr
    new_run = MlflowClient(new_store).get_run((moved / "mlflow_run_id").read_text().strip())
    assert new_run.info.run_id != old_run_id and new_run.info.status == "FINISHED"
    assert "metrics.json" in {item.path for item in MlflowClient(new_store).list_artifacts(new_run.info.run_id)}
