"""`python -m curvenet_dist.predict` on real probe and allocate runs (torchrun, gloo, 2 ranks): the run's own test
images get the run's own test accuracy, MLflow serves the same probabilities, and bad input is one line."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from safetensors.torch import save_file

from curvenet_dist.config import load_config
from curvenet_dist.data.loader import build_loader
from curvenet_dist.data.sample_table import PreparedDataset
from curvenet_dist.engine.classify import class_probabilities, images_table, input_config
from curvenet_dist.engine.components import build_model
from curvenet_dist.engine.model_file import describe_model, load_run_model, write_model_file
from tests.conftest import QUICKSTART, REPO, TINY, torchrun

pytestmark = pytest.mark.slow
ALLOCATE = ["allocate.epochs=2", "allocate.milestones=[1]", "curvenet.skip_epochs=1", "meta.batch_size=20"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mlflow_server):
    """A probe and a CurveNet allocate run on digits written to a folder of the test's own; the allocate run
    tracked in the loopback MLflow server."""
    folder = tmp_path_factory.mktemp("predict")
    data = [f"data.path={folder / 'digits'}"]
    torchrun("probe.py", 2, ["--config", str(QUICKSTART), f"run.dir={folder / 'probe'}", *TINY, *data])
    torchrun("allocate.py", 2, ["--config", str(QUICKSTART), f"allocate.probe_dir={folder / 'probe'}",
                                f"run.dir={folder / 'curvenet'}", *TINY, *ALLOCATE, *data, "tracking.enabled=true",
                                f"tracking.uri={mlflow_server}", "tracking.experiment=predict"])
    return folder


def predict(*arguments, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "curvenet_dist.predict", *map(str, arguments)], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("stage", ["probe", "curvenet"])
def test_the_runs_test_images_get_the_runs_test_accuracy(runs, stage, tmp_path):
    test_csv = runs / "digits" / "test.csv"
    out = tmp_path / "predictions.csv"
    result = predict(runs / stage, test_csv, "--top", 3, "--csv", out, "--batch-size", 100)
    truth = read_rows(test_csv)
    top1 = [row for row in read_rows(out) if row["rank"] == "1"]
    assert [row["path"] for row in top1] == [str(runs / "digits" / row["path"]) for row in truth]
    accuracy = np.mean([int(row["class_index"]) == int(label["label"]) for row, label in zip(top1, truth)])
    assert accuracy == json.loads((runs / stage / "metrics.json").read_text())["test_acc"]
    # Printed: path, then class name and probability of the top 3, most probable first.
    lines = result.stdout.splitlines()
    assert len(lines) == len(truth)
    fields = lines[0].split("\t")
    assert fields[0] == top1[0]["path"] and fields[1] == top1[0]["class"] and len(fields) == 7
    probabilities = [float(p) for p in fields[2::2]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001


def test_images_a_list_file_and_the_dataset_csv_get_the_same_predictions(runs, tmp_path):
    test_csv = runs / "digits" / "test.csv"
    rows = read_rows(test_csv)[:5]
    list_file = tmp_path / "mine.txt"
    lines = [f"{row['path']} {row['label']}\n" for row in rows]
    list_file.write_text("# a data_prep list: path, label\n" + "".join(lines))
    images = [runs / "digits" / row["path"] for row in rows]
    from_list = predict(runs / "curvenet", list_file, "--images", runs / "digits", "--top", 2).stdout.splitlines()
    from_files = predict(runs / "curvenet", *images, "--top", 2).stdout.splitlines()
    from_csv = predict(runs / "curvenet", test_csv, "--top", 2).stdout.splitlines()[:5]
    assert from_list == from_files == from_csv


def test_the_mlflow_model_serves_the_probabilities_of_the_run_model_file(runs, mlflow_server):
    run_dir = runs / "curvenet"
    run = MlflowClient(mlflow_server).get_run((run_dir / "mlflow_run_id").read_text().strip())
    mlflow.set_tracking_uri(mlflow_server)
    model_uri = run.data.tags["model_uri"]
    assert mlflow.get_logged_model(model_uri.removeprefix("models:/")).experiment_id == run.info.experiment_id
    served = mlflow.pyfunc.load_model(model_uri)
    model, description = load_run_model(run_dir, torch.device("cpu"))
    test = PreparedDataset.read(runs / "digits").splits["test"].select(np.arange(64))
    data = input_config(description, batch_size=64, workers=0)
    images, _, _ = next(iter(build_loader(data, test, train=False, rank=0, world_size=1, seed=0,
                                          device=torch.device("cpu"))))
    expected = class_probabilities(model, description, test, data, torch.device("cpu"))
    np.testing.assert_allclose(served.predict(images.numpy()), expected, rtol=0, atol=1e-6)
    signature = served.metadata.signature
    assert signature.inputs.inputs[0].shape == (-1, 3, 8, 8) and signature.outputs.inputs[0].shape == (-1, 10)


def assert_one_error_line(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0] and "Traceback" not in result.stderr, result.stderr


def test_bad_input_is_one_error_line_and_exit_2(runs, tmp_path):
    image = runs / "digits" / "images" / "test" / "00000.png"
    assert_one_error_line(predict(runs / "digits", image, check=False),
                          f"error: {runs / 'digits'}: not a finished probe or allocate run: it lacks metrics.json, "
                          f"model.yaml, model.safetensors")

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    assert_one_error_line(predict(runs / "curvenet", image, broken, check=False),
                          f"1 of 2 images cannot be read: sample 1 {broken}")
    assert_one_error_line(predict(runs / "curvenet", tmp_path / "absent.png", check=False),
                          f"error: {tmp_path / 'absent.png'}: no such file")

    other = tmp_path / "other-run"
    shutil.copytree(runs / "curvenet", other, ignore=shutil.ignore_patterns("checkpoints", "curves.zarr*"))
    wider = build_model(load_config(QUICKSTART, [*TINY, "model.width=16"]), 10, torch.device("cpu"))
    save_file(wider.state_dict(), str(other / "model.safetensors"))
    assert_one_error_line(predict(other, image, check=False),
                          f"error: {other / 'model.safetensors'}: these weights are not of the network")


def test_bench_times_predict_beside_the_evaluation_pass_on_the_same_images():
    result = subprocess.run([sys.executable, "-m", "curvenet_dist.bench", "predict", "--rounds", "2",
                             "data.image_size=8", "model.width=8"], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["images"] == 539 and figures["image_size"] == 8
    assert len(figures["evaluation_s_all"]) == len(figures["predict_s_all"]) == 2
    assert figures["evaluation_images_per_s"] > 0 and figures["predict_images_per_s"] > 0
    assert figures["predict_vs_evaluation"] > 0 and figures["predict_vs_evaluation_cpu"] > 0
    assert figures["evaluation_images_per_cpu_s"] > 0 and figures["predict_images_per_cpu_s"] > 0


def test_probabilities_do_not_depend_on_the_mode_the_network_comes_in(tmp_path):
    config = load_config(QUICKSTART, [*TINY, f"run.dir={tmp_path}"])
    write_model_file(tmp_path, build_model(config, 10, torch.device("cpu")),
                     describe_model(config, [str(c) for c in range(10)], "allocate"))
    (tmp_path / "metrics.json").write_text("{}")
    model, description = load_run_model(tmp_path, torch.device("cpu"))
    images = [tmp_path / f"{seed}.png" for seed in range(3)]
    for seed, path in enumerate(images):
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    table = images_table(images, None, 10)
    data = input_config(description, batch_size=3, workers=0)
    in_eval_mode = class_probabilities(model, description, table, data, torch.device("cpu"))
    # A training loop hands its network over in train mode: BatchNorm would use the batch's statistics.
    in_train_mode = class_probabilities(model.train(), description, table, data, torch.device("cpu"))
    np.testing.assert_array_equal(in_train_mode, in_eval_mode)
