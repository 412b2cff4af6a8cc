"""Shared fixtures: the repository's entry points run as users run them, and a real MLflow server on loopback."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from curvenet_dist.engine.launch import torchrun_command

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
# A probe small enough for a test: digits at 8x8, a narrow ResNet-8, a few epochs.
TINY = ["data.image_size=8", "data.batch_size=64", "model.depth=8", "model.width=8", "probe.epochs=3",
        "probe.cycle_epochs=1", "tracking.enabled=false"]


def torchrun(script: str, nproc: int, arguments: list[str], *, env: dict | None = None, timeout: float = 600,
             check: bool = True) -> subprocess.CompletedProcess:
    """Run launch/<script> under torchrun (gloo on CPU), the way users start it."""
    command = torchrun_command(nproc, REPO / "launch" / script, arguments)
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def run_bench(name: str, *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m curvenet_dist.bench <name> arguments...` in a child process, as users run it."""
    result = subprocess.run([sys.executable, "-m", "curvenet_dist.bench", name, *arguments], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"bench {name} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def kill_allocate_after_epoch(arguments: list[str], run_dir: Path, epoch: int = 2) -> dict:
    """Start `launch/allocate.py ARGUMENTS` on 2 ranks under torchrun, SIGKILL it (agent and workers) once the
    checkpoint of `epoch` exists, and return that checkpoint."""
    import torch

    command = torchrun_command(2, REPO / "launch" / "allocate.py", arguments)
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pattern = f"step-{epoch:05d}-*.pt"
    deadline = time.monotonic() + 300
    while not list((run_dir / "checkpoints").glob(pattern)):
        assert time.monotonic() < deadline and process.poll() is None, f"no epoch-{epoch} checkpoint appeared"
        time.sleep(0.2)
    checkpoint = torch.load(sorted((run_dir / "checkpoints").glob(pattern))[-1], weights_only=True)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return checkpoint


def assert_clean_error(result: subprocess.CompletedProcess, message: str) -> None:
    """The worker stopped with one `error:` line holding `message` and no traceback through the project's code
    (torchrun's agent still reports the failed worker in its own summary)."""
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors and message in errors[0], result.stderr
    assert "curvenet_dist/" not in result.stderr, result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on loopback; yields its tracking URI."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    executable = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    log = open(folder / "server.log", "w")
    server = subprocess.Popen(
        [executable, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield uri
    server.terminate()
    server.wait(timeout=30)
    log.close()
