"""The run's model file: the trained classifier as a finished stage leaves it for inference.

`model.safetensors` holds the classifier's weights only (parameters and BatchNorm statistics: no optimizer, no
weighting net, nothing pickled). `model.yaml` holds everything else inference needs: the backbone and its settings,
the class names, and the evaluation's input (image size, normalisation, `data.augment`, which decides the eval
transform, and the loader that decodes). Rank 0 writes both when a stage finishes, each atomically, before
metrics.json: a run folder with metrics.json holds a whole model file.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from curvenet_dist.config import Config, ConfigError, DataConfig, ModelConfig
from curvenet_dist.engine.components import build_model, write_atomically
from curvenet_dist.models.staged import StagedNet

MODEL_WEIGHTS = "model.safetensors"
MODEL_DESCRIPTION = "model.yaml"
FINISHED_MARK = "metrics.json"
MODEL_KEYS = ("name", "depth", "width", "channels_last", "amp")
"""ModelConfig's keys but `weights` (the pretrained start, which the trained weights replace)."""
INPUT_KEYS = ("image_size", "mean", "std", "augment", "loader")
"""DataConfig's keys that decide how evaluation decodes and normalises an image."""


class ModelFileError(ValueError):
    """A run folder without a whole model file, or a model file whose weights do not fit its description."""


@dataclass
class ModelDescription:
    """model.yaml: all that inference needs besides the weights."""

    stage: str
    method: str
    """`probe` for a probe run, else the allocate run's method."""
    class_names: list[str]
    model: ModelConfig
    data: DataConfig
    """The evaluation's input settings; only INPUT_KEYS are kept, the rest are defaults."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        return {"stage": self.stage, "method": self.method, "num_classes": self.num_classes,
                "class_names": list(self.class_names),
                "model": {key: getattr(self.model, key) for key in MODEL_KEYS},
                "input": {key: getattr(self.data, key) for key in INPUT_KEYS}}


def describe_model(config: Config, class_names: list[str], stage: str) -> ModelDescription:
    method = "probe" if stage == "probe" else config.method
    return ModelDescription(stage, method, list(class_names), dataclasses.replace(config.model, weights=""),
                            DataConfig(**{key: getattr(config.data, key) for key in INPUT_KEYS}))


class ClassProbabilities(nn.Module):
    """A classifier with its softmax: an image batch [B, 3, H, W], normalised as model.yaml says, to class
    probabilities [B, C] in float32. What `predict` computes and what MLflow serves."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(images).float().softmax(dim=1)


def write_model_file(run_dir: Path, model: nn.Module, description: ModelDescription) -> None:
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    write_atomically(run_dir / MODEL_WEIGHTS, lambda path: save_file(weights, str(path)))
    text = yaml.safe_dump(description.to_dict(), sort_keys=False)
    write_atomically(run_dir / MODEL_DESCRIPTION, lambda path: path.write_text(text))


def example_batch(description: ModelDescription) -> np.ndarray:
    """An input example for MLflow: two mean images (all zeros once normalised). Two, not one: an exported
    batch dimension of size 1 would be fixed at 1."""
    size = description.data.image_size
    return np.zeros((2, 3, size, size), dtype=np.float32)


def publish_model(run_dir: Path, model: nn.Module, config: Config, class_names: list[str], stage: str,
                  tracker) -> None:
    """Rank 0, when a stage finishes: write the run's model file, then log the model it holds to MLflow."""
    description = describe_model(config, class_names, stage)
    write_model_file(run_dir, model, description)
    served, _ = load_model_file(run_dir, torch.device("cpu"))
    tracker.log_model(ClassProbabilities(served), example_batch(description))


def _section(raw: dict, key: str, keys: tuple[str, ...], path: Path) -> dict:
    section = raw.get(key)
    if not isinstance(section, dict) or set(section) != set(keys):
        raise ModelFileError(f"{path}: '{key}' must hold exactly {', '.join(keys)}")
    return section


def read_description(run_dir: Path) -> ModelDescription:
    path = run_dir / MODEL_DESCRIPTION
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ModelFileError(f"{path}: cannot be read ({' '.join(str(error).split())})") from None
    if not isinstance(raw, dict):
        raise ModelFileError(f"{path}: not a model description (a mapping of stage, class_names, model, input)")
    names = raw.get("class_names")
    if not (isinstance(names, list) and names and all(isinstance(name, str) for name in names)):
        raise ModelFileError(f"{path}: 'class_names' must list the class names")
    if raw.get("num_classes") != len(names):
        raise ModelFileError(f"{path}: num_classes {raw.get('num_classes')!r} but {len(names)} class names")
    try:
        model = ModelConfig(**_section(raw, "model", MODEL_KEYS, path))
        data = DataConfig(**_section(raw, "input", INPUT_KEYS, path))
        model.validate()
        data.validate()
    except (TypeError, ConfigError) as error:
        raise ModelFileError(f"{path}: {error}") from None
    return ModelDescription(str(raw.get("stage")), str(raw.get("method")), names, model, data)


def _network(description: ModelDescription) -> str:
    model = description.model
    shape = f" depth {model.depth} width {model.width}" if model.name == "cifar_resnet" else ""
    return f"{model.name}{shape}, {description.num_classes} classes"


def check_weights_fit(weights: dict[str, torch.Tensor], model: nn.Module, path: Path,
                      description: ModelDescription) -> None:
    """Raise naming the first difference if `weights` are not `model`'s tensors, name for name and shape for
    shape (a file from another backbone, depth, width or class count)."""
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    found = {name: tuple(tensor.shape) for name, tensor in weights.items()}
    problems = [f"{name} is {list(found[name])} in the file, {list(expected[name])} in the network"
                for name in expected if name in found and found[name] != expected[name]]
    problems += [f"no tensor {name}" for name in expected if name not in found]
    problems += [f"a tensor {name} the network lacks" for name in found if name not in expected]
    if problems:
        more = f" (and {len(problems) - 1} more differences)" if len(problems) > 1 else ""
        raise ModelFileError(f"{path}: these weights are not of the network {path.parent / MODEL_DESCRIPTION} "
                             f"describes ({_network(description)}): {problems[0]}{more}")


def load_model_file(run_dir: Path, device: torch.device) -> tuple[StagedNet, ModelDescription]:
    """The network model.yaml describes, with model.safetensors' weights, in eval mode on `device`."""
    description = read_description(run_dir)
    path = run_dir / MODEL_WEIGHTS
    try:
        weights = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise ModelFileError(f"{path}: cannot be read as safetensors ({error})") from None
    model = build_model(Config(model=description.model), description.num_classes, device)
    check_weights_fit(weights, model, path, description)
    model.load_state_dict(weights)
    return model.eval(), description


def load_run_model(run_dir: Path, device: torch.device) -> tuple[StagedNet, ModelDescription]:
    """The model of a finished probe or allocate run folder."""
    if not run_dir.is_dir():
        raise ModelFileError(f"{run_dir}: no such run folder")
    missing = [name for name in (FINISHED_MARK, MODEL_DESCRIPTION, MODEL_WEIGHTS) if not (run_dir / name).is_file()]
    if missing:
        raise ModelFileError(f"{run_dir}: not a finished probe or allocate run: it lacks {', '.join(missing)}, which "
                             f"a stage writes when it ends")
    return load_model_file(run_dir, device)
