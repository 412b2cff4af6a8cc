"""What a person sees when a stage stops: one error line, exit statuses, the resume hint, the MLflow run status.
Through the launchers users run (torchrun with gloo, the quickstart driver) and a real MLflow server."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.conftest import QUICKSTART, REPO, TINY, torchrun

pytestmark = pytest.mark.slow
BAD_KEY = "error: command line: unknown key 'data.bogus'"


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_a_config_error_is_one_line_once_and_torchruns_summary_carries_it(tmp_path):
    result = torchrun("probe.py", 2, ["--config", str(QUICKSTART), f"run.dir={tmp_path / 'run'}", "data.bogus=1"],
                      check=False)
    assert result.returncode != 0
    [line] = error_lines(result.stderr)
    assert line.startswith(BAD_KEY)
    assert f"traceback : {line}" in result.stderr, "the root cause in torchrun's summary"
    assert "curvenet_dist/" not in result.stderr


@pytest.mark.parametrize("how", ["closed", "reset"])
def test_a_collective_broken_by_a_stopped_peer_is_told_apart_from_a_bug(how):
    # gloo's words when the other process is gone: this process then leaves the root cause to that one's error line.
    from curvenet_dist.engine.launch import lost_a_peer

    assert lost_a_peer(RuntimeError(f"[gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:1463: Connection {how} "
                                    f"by peer. This is typically caused by a remote worker hanging"))
    assert not lost_a_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def quickstart(tmp_path, *overrides, **kwargs):
    return subprocess.run([sys.executable, str(REPO / "launch" / "quickstart.py"), "--run-dir", str(tmp_path / "qs"),
                           *overrides], cwd=REPO, capture_output=True, text=True, timeout=600, **kwargs)


def test_the_quickstart_exits_2_with_the_error_as_its_last_line(tmp_path):
    result = quickstart(tmp_path, "data.bogus=1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(BAD_KEY)
    assert not (tmp_path / "qs").exists(), "stopped before any stage started"


def dataset_with_bad_images(folder, bad: tuple[int, ...], content: bytes = b"not a png"):
    """A prepared dataset of 16 real 8x8 PNGs, the samples `bad` replaced by `content`."""
    folder.mkdir()
    (folder / "classes.txt").write_text("a\nb\n")
    for i in range(16):
        Image.new("RGB", (8, 8), (15 * i, 0, 0)).save(folder / f"{i}.png")
    for sample in bad:
        (folder / f"{sample}.png").write_bytes(content)
    rows = "".join(f"{i}.png,{i % 2},{i % 2}\n" for i in range(16))
    (folder / "train.csv").write_text("path,label,true_label\n" + rows)
    (folder / "test.csv").write_text("path,label,true_label\n" + rows)
    return ["data.source=prepared", f"data.path={folder}", "bias.meta_per_class=0", "bias.imbalance_factor=1",
            "bias.noise_type=none", *TINY, "data.batch_size=4"]


def test_every_unreadable_image_is_named_in_torchruns_root_cause_without_tracebacks(tmp_path):
    """Two ranks each meet one of the two bad images: either rank's error names both, not just the first it met."""
    ds = tmp_path / "ds"
    data = dataset_with_bad_images(ds, (3, 12))
    result = torchrun("probe.py", 2, ["--config", str(QUICKSTART), f"run.dir={tmp_path / 'run'}", *data], check=False)
    assert result.returncode != 0
    root_cause = result.stderr.split("Root Cause")[1]
    assert (f"traceback : error: {ds / 'train.csv'}: 2 of 16 images cannot be read: sample 3 {ds / '3.png'}: "
            in root_cause), root_cause
    assert f"; sample 12 {ds / '12.png'}: " in root_cause
    assert "[rank" not in result.stderr and "curvenet_dist/" not in result.stderr, result.stderr


def test_a_bad_sample_comes_back_as_the_drivers_last_line(tmp_path):
    ds = tmp_path / "ds"
    data = dataset_with_bad_images(ds, (6,))
    result = quickstart(tmp_path, *data)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {ds / 'train.csv'}: 1 of 16 images cannot be read: sample 6 {ds / '6.png'}: ")


def test_an_unwritable_run_folder_is_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = torchrun("probe.py", 1, ["--config", str(QUICKSTART), f"run.dir={blocker / 'run'}"], check=False)
    assert error_lines(result.stderr) == [f"error: run.dir={blocker / 'run'}: cannot write there (Not a directory)"]
    assert "curvenet_dist/" not in result.stderr


def wait_for(predicate, process, what, timeout=300):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"the process ended before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_failed_run_ends_failed_in_mlflow(tmp_path, mlflow_server):
    data = dataset_with_bad_images(tmp_path / "ds", (5,), b"")
    run_dir = tmp_path / "run"
    result = torchrun("probe.py", 1, ["--config", str(QUICKSTART), f"run.dir={run_dir}", *data, "tracking.enabled=true",
                                      f"tracking.uri={mlflow_server}", "tracking.experiment=failed"], check=False)
    assert "images cannot be read: sample 5 " in error_lines(result.stderr)[0]
    run = MlflowClient(mlflow_server).get_run((run_dir / "mlflow_run_id").read_text().strip())
    assert run.info.status == "FAILED"


def test_sigterm_on_the_quickstart_saves_marks_the_run_killed_and_ends_with_the_resume_hint(tmp_path, mlflow_server):
    overrides = [*TINY, "probe.epochs=8", "data.batch_size=8", "tracking.enabled=true",
                 f"tracking.uri={mlflow_server}", "tracking.experiment=killed"]
    process = subprocess.Popen([sys.executable, str(REPO / "launch" / "quickstart.py"), "--run-dir",
                                str(tmp_path / "qs"), *overrides], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    probe_dir = tmp_path / "qs" / "probe"
    wait_for(lambda: list((probe_dir / "checkpoints").glob("step-00001-*.pt")), process, "the first epoch")
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr
    assert "SIGTERM: saved" in stdout
    assert stderr.strip().splitlines()[-1] == "probe stopped by SIGTERM after saving; rerun the same command to resume"
    run = MlflowClient(mlflow_server).get_run((probe_dir / "mlflow_run_id").read_text().strip())
    assert run.info.status == "KILLED"
