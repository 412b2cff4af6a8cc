"""The run's model file: written atomically with the weights alone, read back into the same network, refused with one
line when it is not whole or not of the network it describes; logging it to MLflow cannot fail a stage."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file

from curvenet_dist.config import load_config
from curvenet_dist.engine.components import build_model
from curvenet_dist.engine.model_file import (
    MODEL_DESCRIPTION, MODEL_WEIGHTS, ClassProbabilities, ModelFileError, describe_model, load_run_model,
    write_model_file,
)
from curvenet_dist.tracking.mlflow_tracker import MlflowTracker
from tests.conftest import QUICKSTART, TINY

CLASS_NAMES = [f"class {c}" for c in range(10)]


def trained_looking_model(config):
    """A network whose BatchNorm statistics are not the defaults, as after training."""
    model = build_model(config, len(CLASS_NAMES), torch.device("cpu"))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, config.data.image_size, config.data.image_size) * 2 + 1)
    return model.eval()


def finished_run(tmp_path, overrides=()):
    """A run folder as a finished allocate stage leaves it: model file and metrics.json."""
    config = load_config(QUICKSTART, [*TINY, f"run.dir={tmp_path}", *overrides])
    model = trained_looking_model(config)
    write_model_file(tmp_path, model, describe_model(config, CLASS_NAMES, "allocate"))
    (tmp_path / "metrics.json").write_text(json.dumps({"test_acc": 0.5}))
    return config, model


def test_model_file_holds_the_weights_alone_and_loads_into_the_same_network(tmp_path):
    config, model = finished_run(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.json", MODEL_WEIGHTS, MODEL_DESCRIPTION]
    assert load_file(str(tmp_path / MODEL_WEIGHTS)).keys() == model.state_dict().keys()
    description = yaml.safe_load((tmp_path / MODEL_DESCRIPTION).read_text())
    assert description == {
        "stage": "allocate", "method": "curvenet", "num_classes": 10, "class_names": CLASS_NAMES,
        "model": {"name": "cifar_resnet", "depth": 8, "width": 8, "channels_last": True, "amp": "bf16"},
        "input": {"image_size": 8, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "augment": "crop",
                  "loader": "torch"},
    }
    loaded, read = load_run_model(tmp_path, torch.device("cpu"))
    images = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
        probabilities = ClassProbabilities(loaded)(images)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(5))
    assert read.class_names == CLASS_NAMES and read.data.augment == "crop" and not loaded.training


def test_a_folder_that_is_not_a_finished_run_is_refused(tmp_path):
    with pytest.raises(ModelFileError, match="no such run folder"):
        load_run_model(tmp_path / "absent", torch.device("cpu"))
    config = load_config(QUICKSTART, [*TINY, f"run.dir={tmp_path}"])
    # Killed after the model file, before metrics.json: not finished.
    write_model_file(tmp_path, trained_looking_model(config), describe_model(config, CLASS_NAMES, "probe"))
    with pytest.raises(ModelFileError, match="not a finished probe or allocate run: it lacks metrics.json, which"):
        load_run_model(tmp_path, torch.device("cpu"))


def test_weights_of_another_network_are_refused_naming_the_first_difference(tmp_path):
    finished_run(tmp_path)
    wider = build_model(load_config(QUICKSTART, [*TINY, "model.width=16"]), 10, torch.device("cpu"))
    save_file(wider.state_dict(), str(tmp_path / MODEL_WEIGHTS))
    with pytest.raises(ModelFileError) as error:
        load_run_model(tmp_path, torch.device("cpu"))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / MODEL_WEIGHTS}: these weights are not of the network")
    assert "(cifar_resnet depth 8 width 8, 10 classes): parts.0.0.weight is [16, 3, 3, 3] in the file, [8, 3, 3, 3]" \
        in message

    (tmp_path / MODEL_WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(ModelFileError, match="cannot be read as safetensors"):
        load_run_model(tmp_path, torch.device("cpu"))


def test_a_damaged_description_is_refused_naming_the_file_and_key(tmp_path):
    finished_run(tmp_path)
    path = tmp_path / MODEL_DESCRIPTION
    description = yaml.safe_load(path.read_text())
    description["model"]["name"] = "vit"
    path.write_text(yaml.safe_dump(description))
    with pytest.raises(ModelFileError, match=f"{path}: model.name='vit' is not allowed"):
        load_run_model(tmp_path, torch.device("cpu"))
    del description["input"]
    path.write_text(yaml.safe_dump(description))
    with pytest.raises(ModelFileError, match=f"{path}: 'input' must hold exactly image_size, mean, std"):
        load_run_model(tmp_path, torch.device("cpu"))


def test_a_model_mlflow_cannot_log_costs_one_line_and_the_run_still_finishes(tmp_path, mlflow_server, capsys,
                                                                               monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = load_config(QUICKSTART, [*TINY, f"run.dir={tmp_path}", "tracking.enabled=true",
                                      f"tracking.uri={mlflow_server}", "tracking.experiment=model-file"])
    tracker = MlflowTracker(config, tmp_path, "allocate", {})
    # An input example the network cannot take (one channel): MLflow's export of the model fails.
    tracker.log_model(ClassProbabilities(trained_looking_model(config)), np.zeros((2, 1, 8, 8), np.float32))
    tracker.finish()
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and notes[0].startswith(f"note: the model was not logged to MLflow run {tracker.run_id}: ")
    assert notes[0].endswith("the run folder's model.safetensors holds it")
    run = MlflowClient(mlflow_server).get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and "model_uri" not in run.data.tags
    # Logging the model leaves the environment as it was: later trackers and child processes use their own store.
    assert "MLFLOW_TRACKING_URI" not in os.environ

