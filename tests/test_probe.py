"""The probe stage end to end, through real torchrun processes with gloo."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from curvenet_dist.config import load_config
from curvenet_dist.curves.store import CurveStore
from curvenet_dist.data.datasets import build_splits
from curvenet_dist.engine.launch import torchrun_command
from tests.conftest import QUICKSTART, REPO, TINY, assert_clean_error, torchrun

pytestmark = pytest.mark.slow


def probe(run_dir, nproc=1, extra=(), **kwargs):
    return torchrun("probe.py", nproc, ["--config", str(QUICKSTART), f"run.dir={run_dir}", *TINY, *extra], **kwargs)


def assert_complete_store(run_dir, epochs):
    store = CurveStore.open(run_dir / "curves.zarr", mode="r")
    num_samples = len(build_splits(load_config(QUICKSTART).data, load_config(QUICKSTART).bias).train)
    loss = store.loss[:]
    assert loss.shape == (num_samples, epochs)
    assert np.isfinite(loss).all(), "every sample has one finite loss per epoch"
    assert store.complete_epochs().tolist() == list(range(epochs))
    return store


@pytest.mark.parametrize("nproc", [1, 2])
def test_every_sample_gets_one_finite_loss_per_epoch(tmp_path, nproc):
    result = probe(tmp_path / "run", nproc)
    store = assert_complete_store(tmp_path / "run", 3)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == nproc and metrics["epochs"] == 3 and 0 <= metrics["test_acc"] <= 1
    assert {"many_acc", "medium_acc", "few_acc", "wall_s"} <= metrics.keys()
    # The quickstart's proportional noise redraws 40% of the labels, some into their own class.
    mislabeled = store.true_labels != store.labels
    assert 0.3 < mislabeled.mean() < 0.4
    by_class = [mislabeled[store.labels == c].mean() for c in range(10)]
    assert metrics["noise_rate_by_class"] == pytest.approx(by_class)
    assert "curves.zarr" in result.stdout and "epoch 3/3" in result.stdout
    # Rank 0 alone prints progress.
    assert result.stdout.count("epoch 1/3") == 1


def test_curves_do_not_depend_on_the_world_size_in_shape_or_coverage(tmp_path):
    probe(tmp_path / "one", 1)
    probe(tmp_path / "two", 2)
    one = CurveStore.open(tmp_path / "one" / "curves.zarr", mode="r")
    two = CurveStore.open(tmp_path / "two" / "curves.zarr", mode="r")
    assert one.fingerprint == two.fingerprint and one.loss.shape == two.loss.shape


def wait_for(predicate, timeout=300, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def start_probe(run_dir, nproc, extra=()):
    command = torchrun_command(nproc, REPO / "launch" / "probe.py",
                               ["--config", str(QUICKSTART), f"run.dir={run_dir}", *TINY, *extra])
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_job(process: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers. torchrun starts each worker in a session of its own, so a SIGKILL to
    torchrun's group alone would leave the workers running on, writing the run folder beside the resumed run."""
    workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    os.killpg(process.pid, signal.SIGKILL)
    for worker in workers:
        os.kill(int(worker), signal.SIGKILL)


def test_killed_run_resumes_with_every_epoch_exactly_once(tmp_path, mlflow_server):
    run_dir = tmp_path / "run"
    extra = ["probe.epochs=5", "tracking.enabled=true", f"tracking.uri={mlflow_server}", "tracking.experiment=resume"]
    process = start_probe(run_dir, 2, extra)
    wait_for(lambda: list((run_dir / "checkpoints").glob("step-00002-*.pt")), what="the epoch-2 checkpoint")
    kill_job(process)
    process.wait()
    assert not (run_dir / "metrics.json").exists()
    client = MlflowClient(mlflow_server)
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    # Whenever the kill lands, every epoch a checkpoint marks done has its metrics in MLflow already.
    done = max(int(path.name.split("-")[1]) for path in (run_dir / "checkpoints").glob("step-*.pt"))
    logged = {metric.step for metric in client.get_metric_history(run_id, "train_loss")}
    assert set(range(done)) <= logged
    result = probe(run_dir, 2, extra)
    assert "resuming at epoch" in result.stdout
    store = assert_complete_store(run_dir, 5)
    assert np.isfinite(store.group["lr"][:]).all()
    steps = [metric.step for metric in client.get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == list(range(5)), "each epoch logged exactly once across the crash"
    # The probe evaluates the test set after its last epoch only.
    assert [metric.step for metric in client.get_metric_history(run_id, "test_acc")] == [4]


def test_sigterm_saves_mid_epoch_and_the_same_command_finishes(tmp_path):
    run_dir = tmp_path / "run"
    # Batches of 8 give many steps per epoch, so the signal most likely lands inside an epoch.
    extra = ["probe.epochs=8", "data.batch_size=8"]
    process = start_probe(run_dir, 2, extra)
    wait_for(lambda: list((run_dir / "checkpoints").glob("step-00001-*.pt")), what="the first epoch")
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert "SIGTERM: saved" in output, output
    result = probe(run_dir, 2, extra)
    assert "resuming at epoch" in result.stdout
    assert_complete_store(run_dir, 8)


def test_mlflow_server_holds_params_metrics_and_artifacts(tmp_path, mlflow_server):
    run_dir = tmp_path / "run"
    probe(run_dir, 2, ["tracking.enabled=true", f"tracking.uri={mlflow_server}", "tracking.experiment=probe-test"])
    client = MlflowClient(mlflow_server)
    run = client.get_run((run_dir / "mlflow_run_id").read_text().strip())
    assert run.data.params["probe.epochs"] == "3" and run.data.params["bias.noise_type"] == "proportional"
    assert run.data.tags["stage"] == "probe" and run.data.tags["world_size"] == "2"
    assert {"train_loss", "test_acc", "lr", "many_acc", "few_acc", "samples_per_s"} <= run.data.metrics.keys()
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "loss_curves.png"} <= artifacts
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize("extra, message", [
    (["data.bogus=1"], "unknown key 'data.bogus'"),
    (["data.source=prepared", "data.path=/nonexistent/ds"], "/nonexistent/ds/classes.txt: missing"),
    (["data.source=fashion_mnist", "data.path=/nonexistent/fm"], "Install them with `sudo apt-get install dataset-fashion-mnist`"),
])
def test_bad_input_stops_with_one_clear_message(tmp_path, extra, message):
    assert_clean_error(probe(tmp_path / "run", 1, extra, check=False), message)


def test_world_size_the_data_cannot_be_sharded_over(tmp_path):
    dataset = tmp_path / "tiny"
    dataset.mkdir()
    (dataset / "classes.txt").write_text("a\nb\n")
    from PIL import Image
    Image.new("RGB", (8, 8)).save(dataset / "x.png")
    (dataset / "train.csv").write_text("path,label,true_label\nx.png,0,0\n")
    (dataset / "test.csv").write_text("path,label,true_label\nx.png,0,0\n")
    result = probe(tmp_path / "run", 2, ["data.source=prepared", f"data.path={dataset}", "bias.meta_per_class=0",
                                         "bias.imbalance_factor=1", "bias.noise_type=none"], check=False)
    assert_clean_error(result, "fewer than the world size 2")


def test_an_image_only_the_second_rank_reads_is_named_once(tmp_path):
    """A file that exists but does not decode stops the job mid-epoch on the one rank whose share holds it; that
    rank's `error:` line is printed, while the first rank waits in the step's collective."""
    from PIL import Image

    from curvenet_dist.data.sharding import epoch_order, rank_share

    dataset = tmp_path / "ds"
    dataset.mkdir()
    (dataset / "classes.txt").write_text("a\nb\n")
    rows = [f"{index}.png,{index % 2},{index % 2}" for index in range(8)]
    for index in range(8):
        Image.new("RGB", (8, 8), color=(30 * index, 0, 0)).save(dataset / f"{index}.png")
    (dataset / "train.csv").write_text("path,label,true_label\n" + "\n".join(rows) + "\n")
    (dataset / "test.csv").write_text("path,label,true_label\n" + "\n".join(rows) + "\n")
    first_epoch = epoch_order(8, shuffle=True, seed=0, epoch=0)
    broken = sorted(set(rank_share(first_epoch, 1, 2, 4)) - set(rank_share(first_epoch, 0, 2, 4)))[0]
    (dataset / f"{broken}.png").write_text("not an image")
    result = probe(tmp_path / "run", 2, ["data.source=prepared", f"data.path={dataset}", "data.loader=dali",
                                         "data.batch_size=4", "bias.meta_per_class=0", "bias.imbalance_factor=1",
                                         "bias.noise_type=none"], check=False)
    assert_clean_error(result, f"sample {broken} {dataset / f'{broken}.png'}: DALI cannot read or decode it")
    assert len([line for line in result.stderr.splitlines() if line.startswith("error: ")]) == 1, result.stderr


def test_missing_image_and_foreign_store_are_named(tmp_path):
    dataset = tmp_path / "ds"
    dataset.mkdir()
    (dataset / "classes.txt").write_text("a\nb\n")
    (dataset / "train.csv").write_text("path,label,true_label\nmissing.png,1,1\n")
    unbiased = ["data.source=prepared", f"data.path={dataset}", "bias.meta_per_class=0", "bias.noise_type=none"]
    result = probe(tmp_path / "run", 1, unbiased, check=False)
    assert_clean_error(result, "class 0 has no training samples; bias.imbalance_factor=10.0 needs samples of every class")
    unbiased.append("bias.imbalance_factor=1")
    result = probe(tmp_path / "run", 1, unbiased, check=False)
    assert_clean_error(result, "neither a test.csv nor a val.csv")
    (dataset / "test.csv").write_text("path,label,true_label\nmissing.png,1,1\n")
    result = probe(tmp_path / "run", 1, unbiased, check=False)
    assert_clean_error(result, "train sample 0: image")
    assert "missing.png is missing or unreadable" in result.stderr

    probe(tmp_path / "run2", 1, ["probe.epochs=1"])
    result = probe(tmp_path / "run2", 1, ["probe.epochs=2"], check=False)
    assert_clean_error(result, "recorded for another dataset or config")
    store = CurveStore.open(tmp_path / "run2" / "curves.zarr", mode="r")
    assert store.complete_epochs().tolist() == [0], "nothing already recorded is lost"


def test_a_killed_worker_is_restarted_by_torchrun_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    command = torchrun_command(2, REPO / "launch" / "probe.py", ["--config", str(QUICKSTART), f"run.dir={run_dir}",
                                                                  *TINY, "probe.epochs=5", "data.batch_size=16"],
                               ["--max-restarts=1"])
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: list((run_dir / "checkpoints").glob("step-00002-*.pt")), what="the epoch-2 checkpoint")
    workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(workers[1]), signal.SIGKILL)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert "resuming at epoch" in output
    assert_complete_store(run_dir, 5)
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 5



# Quickstart data (data.num_workers=0: augmentation in the rank's own process) in batches of 8, so that a
# SIGTERM is most likely noticed inside an epoch (ranks agree every 20 steps, an epoch has about 29).
RESUME = ["probe.epochs=5", "data.batch_size=8"]


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    probe(run_dir, 2, RESUME)
    return run_dir


def final_state(run_dir):
    store = CurveStore.open(run_dir / "curves.zarr", mode="r")
    checkpoint = torch.load(sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1], weights_only=True)
    assert (checkpoint["epoch"], checkpoint["batch"]) == (5, 0)
    return store.loss[:], store.group["lr"][:], checkpoint["model"]


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "preempted-mid-epoch"])
def test_an_interrupted_run_ends_with_the_curves_and_weights_of_an_uninterrupted_one(tmp_path, uninterrupted_run, stop):
    """Bit for bit: on CPU with gloo every kernel and reduction here is deterministic for a fixed thread count, so
    any difference would come from the data (order, augmentation) or the restored state."""
    run_dir = tmp_path / "run"
    process = start_probe(run_dir, 2, RESUME)
    wait_for(lambda: list((run_dir / "checkpoints").glob("step-00001-*.pt")), what="the first epoch")
    if stop == signal.SIGKILL:
        kill_job(process)
    else:
        os.killpg(process.pid, stop)  # torchrun forwards SIGTERM to its workers
    output, _ = process.communicate(timeout=120)
    assert not (run_dir / "metrics.json").exists(), "the run finished before it could be interrupted"
    if stop == signal.SIGTERM:
        assert "SIGTERM: saved" in output, output
    assert "resuming at epoch" in probe(run_dir, 2, RESUME).stdout

    loss, lr, model = final_state(run_dir)
    expected_loss, expected_lr, expected_model = final_state(uninterrupted_run)
    np.testing.assert_array_equal(loss, expected_loss)
    np.testing.assert_array_equal(lr, expected_lr)
    assert model.keys() == expected_model.keys()
    for name, tensor in model.items():
        assert torch.equal(tensor, expected_model[name]), name
