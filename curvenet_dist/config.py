"""Typed experiment configuration: YAML files plus `key.sub=value` overrides, validated before any work.

One YAML per experiment serves both stages. Every field has a default; a YAML or override names only
what differs. Unknown keys and bad values stop with a message naming the dotted key.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A bad configuration value: the message names the dotted key."""


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}={value} must be {'>= 0' if allow_zero else '> 0'}")


def _fraction(key: str, value: float, *, low_open: bool, high_open: bool) -> None:
    """`value` in [0, 1] with each end open or closed as given."""
    if value < 0 or value > 1 or (low_open and value == 0) or (high_open and value == 1):
        raise ConfigError(f"{key}={value} must be in {'(' if low_open else '['}0, 1{')' if high_open else ']'}")


def _layer_sizes(key: str, sizes: list[int], allow_empty: bool) -> None:
    if not sizes and not allow_empty:
        raise ConfigError(f"{key}=[] must list at least one layer size")
    for i, size in enumerate(sizes):
        _positive(f"{key}[{i}]", size)


@dataclass
class RunConfig:
    dir: str = "runs/default"
    """The run folder: resolved config, checkpoints, curve store, metrics. A rerun with the same folder resumes."""
    seed: int = 0
    """Seed for model initialisation, data order and augmentation."""
    device: str = "auto"
    """`auto` (CUDA when present), `cpu` or `cuda`. DDP uses NCCL on CUDA and gloo on CPU."""
    keep_checkpoints: int = 2
    """How many of the newest epoch checkpoints to keep."""

    def validate(self) -> None:
        if not self.dir:
            raise ConfigError("run.dir must name the run folder")
        _positive("run.seed", self.seed, allow_zero=True)
        _choice("run.device", self.device, ("auto", "cpu", "cuda"))
        _positive("run.keep_checkpoints", self.keep_checkpoints)


@dataclass
class DataConfig:
    source: str = "digits"
    """`digits` (scikit-learn's, embedded), `fashion_mnist` (Debian's dataset-fashion-mnist) or `prepared`
    (a folder made by data_prep/: classes.txt plus train/meta/val/test CSVs)."""
    path: str = ""
    """For `prepared`: the dataset folder. For `fashion_mnist`: the folder of Debian's idx files. For `digits`:
    where the image files are written (default: a cache folder in the user's home)."""
    image_size: int = 32
    """Side of the square image the network sees."""
    loader: str = "torch"
    """`torch` (DataLoader) or `dali` (NVIDIA DALI; GPU decode where there is a GPU)."""
    batch_size: int = 128
    """Training batch size per rank."""
    eval_batch_size: int = 256
    """Evaluation batch size per rank."""
    num_workers: int = 2
    """Loader worker processes (torch) or threads (DALI) per rank."""
    test_fraction: float = 0.3
    """For `digits`: the fraction of each class held out as the clean, balanced test set."""
    train_per_class: int = 0
    """Train on a seeded (bias.seed), class-balanced subset of at most this many samples per class of the
    training split, taken before any synthetic bias (0: the whole split). For benchmarks on a machine's budget."""
    test_per_class: int = 0
    """Evaluate on a fixed (seed 0, the same for every run) class-balanced subset of at most this many test samples
    per class (0: the whole test split). Every epoch is evaluated, so a large test set can cost as much as the
    training."""
    augment: str = "crop_flip"
    """Training augmentation: `crop_flip` (padded random crop + flip, small images), `crop` (the same without
    the flip, for classes a mirror changes, like digits), `resized_crop` (random resized crop + flip, ImageNet
    style) or `none`."""
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    """Per-channel normalisation mean (RGB, 0-1 scale)."""
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    """Per-channel normalisation std (RGB, 0-1 scale)."""

    def validate(self) -> None:
        _choice("data.source", self.source, ("digits", "fashion_mnist", "prepared"))
        _choice("data.loader", self.loader, ("torch", "dali"))
        _choice("data.augment", self.augment, ("crop_flip", "crop", "resized_crop", "none"))
        if self.source == "prepared" and not self.path:
            raise ConfigError("data.path must name the prepared dataset folder when data.source='prepared'")
        for key in ("image_size", "batch_size", "eval_batch_size"):
            _positive(f"data.{key}", getattr(self, key))
        _positive("data.num_workers", self.num_workers, allow_zero=True)
        _positive("data.train_per_class", self.train_per_class, allow_zero=True)
        _positive("data.test_per_class", self.test_per_class, allow_zero=True)
        _fraction("data.test_fraction", self.test_fraction, low_open=True, high_open=True)
        for key in ("mean", "std"):
            if len(getattr(self, key)) != 3:
                raise ConfigError(f"data.{key} must list 3 values (R, G, B)")
        for i, std in enumerate(self.std):
            _positive(f"data.std[{i}]", std)


@dataclass
class BiasConfig:
    """Synthetic bias (DESIGN.md §1), a benchmarking tool: applied to the training split only, after the meta
    carve-out. The defaults apply none, so a dataset is used as it is unless a config asks for bias."""

    meta_per_class: int = 0
    """Clean samples per class carved out of the training split as the meta set before corruption (0: none)."""
    imbalance_factor: float = 1.0
    """n_max / n_min of the exponential long tail; 1 keeps the classes as they are."""
    noise_type: str = "none"
    """`none`, `uniform` (any class incl. the true one), `flip` (to one other class), `flip2` (to two), `pair` (to
    the next class of a seeded cycle through all classes, so each class takes one other's errors), `instance` (the
    samples a pixel model, scoring each without having seen it, finds most confusable go to the class it confuses
    them with, as web labels err on look-alike images: data/bias.py), each by exact counts per class, or
    `proportional` (the CurveNet reference code's: each label redrawn with probability noise_rate, in proportion to
    the class sizes)."""
    noise_rate: float = 0.0
    """Probability p that a training label is corrupted."""
    seed: int = 0
    """Seed of the carve-out, tail and noise (recorded so runs compare on the same data)."""

    def validate(self) -> None:
        _choice("bias.noise_type", self.noise_type,
                ("none", "uniform", "flip", "flip2", "pair", "instance", "proportional"))
        _positive("bias.meta_per_class", self.meta_per_class, allow_zero=True)
        if self.imbalance_factor < 1:
            raise ConfigError(f"bias.imbalance_factor={self.imbalance_factor} must be >= 1")
        _fraction("bias.noise_rate", self.noise_rate, low_open=False, high_open=True)
        _positive("bias.seed", self.seed, allow_zero=True)

    def describe(self) -> str:
        """The bias in words, e.g. 'meta carve-out 10/class, long tail x10, flip2 noise 40% (seed 0)', or 'none'."""
        parts = []
        if self.meta_per_class:
            parts.append(f"meta carve-out {self.meta_per_class}/class")
        if self.imbalance_factor > 1:
            parts.append(f"long tail x{self.imbalance_factor:g}")
        if self.noise_type != "none" and self.noise_rate > 0:
            parts.append(f"{self.noise_type} noise {100 * self.noise_rate:g}%")
        return f"{', '.join(parts)} (seed {self.seed})" if parts else "none"


def check_cifar_resnet_depth(depth: int) -> None:
    """The one rule for a CIFAR ResNet's depth: checked when a config is validated (before any data is read) and
    by the model builder."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ConfigError(f"model.depth={depth}: a CIFAR ResNet has depth 6n+2 (8, 14, 20, 32, 44, 56, 110)")


@dataclass
class ModelConfig:
    name: str = "cifar_resnet"
    """Backbone from the registry: `cifar_resnet` (He et al.'s CIFAR ResNet) or `resnet50` (timm)."""
    depth: int = 32
    """CIFAR ResNet depth, 6n+2 (ResNet-32 is the papers' CIFAR backbone)."""
    width: int = 16
    """CIFAR ResNet channels of the first stage."""
    weights: str = ""
    """A local file of pretrained weights (state dict); never downloaded."""
    channels_last: bool = True
    """Use channels_last memory format on GPU."""
    amp: str = "bf16"
    """Mixed precision on GPU: `bf16` or `off`. CPU runs always use float32."""

    def validate(self) -> None:
        _choice("model.name", self.name, ("cifar_resnet", "resnet50"))
        _choice("model.amp", self.amp, ("bf16", "off"))
        if self.name == "cifar_resnet":
            check_cifar_resnet_depth(self.depth)
            _positive("model.width", self.width)


@dataclass
class OptimConfig:
    """SGD of the classifier (both stages)."""

    lr: float = 0.1
    """Base learning rate."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 5e-4
    """L2 weight decay."""
    nesterov: bool = True
    """Nesterov momentum (the reference code's, in both stages; needs momentum > 0)."""

    def validate(self) -> None:
        _positive("optim.lr", self.lr)
        _positive("optim.weight_decay", self.weight_decay, allow_zero=True)
        _fraction("optim.momentum", self.momentum, low_open=False, high_open=True)
        if self.nesterov and self.momentum == 0:
            raise ConfigError("optim.nesterov=true needs optim.momentum > 0; set optim.nesterov=false for plain SGD")


@dataclass
class ProbeConfig:
    """The probe stage: plain CE with a cyclical LR, recording every sample's loss each epoch."""

    epochs: int = 30
    """Probe epochs T: the curve length."""
    schedule: str = "square"
    """`square` (the reference code: optim.lr for the first warm_fraction of epochs, then a square wave between
    high_lr and low_lr every cycle_epochs) or `triangular` (Smith's cycle between low_lr and high_lr)."""
    warm_fraction: float = 0.4
    """`square`: fraction of epochs held at optim.lr before cycling."""
    high_lr: float = 0.01
    """Upper LR of the cycle."""
    low_lr: float = 0.001
    """Lower LR of the cycle."""
    cycle_epochs: int = 15
    """`square`: epochs per half wave. `triangular`: epochs per half cycle (Smith's step size)."""

    def validate(self) -> None:
        _choice("probe.schedule", self.schedule, ("square", "triangular"))
        _positive("probe.epochs", self.epochs)
        _positive("probe.cycle_epochs", self.cycle_epochs)
        _fraction("probe.warm_fraction", self.warm_fraction, low_open=False, high_open=False)
        if not 0 < self.low_lr <= self.high_lr:
            raise ConfigError(f"probe.low_lr={self.low_lr} must be > 0 and <= probe.high_lr={self.high_lr}")


@dataclass
class AllocateConfig:
    """The allocate stage's classifier training (step LR)."""

    epochs: int = 30
    """Allocate epochs."""
    milestones: list[int] = field(default_factory=lambda: [20, 25])
    """Epochs at which the LR is multiplied by gamma. A meta-learned weighting net is frozen at the first."""
    gamma: float = 0.1
    """LR decay factor."""
    warmup_epochs: int = 0
    """The first this many epochs ramp the LR up linearly, epoch e (from 0) at lr * (e + 1) / warmup_epochs (the
    reference code's allocate stage uses 5). 0: no warm-up."""
    probe_dir: str = ""
    """The probe run folder whose curve store this stage reads. Dynamic Loss, which ranks samples by their current
    loss, runs without one."""

    def validate(self) -> None:
        _positive("allocate.epochs", self.epochs)
        _positive("allocate.warmup_epochs", self.warmup_epochs, allow_zero=True)
        _fraction("allocate.gamma", self.gamma, low_open=True, high_open=False)
        increasing = all(a < b for a, b in zip(self.milestones, self.milestones[1:]))
        if not increasing or any(m <= 0 for m in self.milestones):
            raise ConfigError(f"allocate.milestones={self.milestones} must be increasing positive epochs")
        if self.milestones and self.warmup_epochs > self.milestones[0]:
            raise ConfigError(f"allocate.warmup_epochs={self.warmup_epochs} must end by the first of "
                              f"allocate.milestones={self.milestones}")


@dataclass
class MetaLearningConfig:
    """What every meta-learned weighting has: the optimizer of its network, how often it takes a meta update, and
    how much of the classifier its virtual step leaves out (SLMO). CurveNet, Meta-Weight-Net and Dynamic Loss each
    extend it in their own section, with their own defaults."""

    section: typing.ClassVar[str]
    """The config section, which names the keys in errors."""
    meta_lr: float = 1e-3
    """AdamW LR of the weighting network."""
    meta_weight_decay: float = 1e-4
    """AdamW weight decay of the weighting network."""
    meta_interval: int = 1
    """A meta update every this many training iterations."""
    skip_layers: int = 2
    """Keep the stem and the first k stages of the classifier out of the virtual step (0: full meta step); at most
    the backbone's stage count. 2 is the CurveNet paper's SL=3: the stem and stages 1-2 out, the last stage and the
    head virtually updated."""

    def validate(self) -> None:
        _positive(f"{self.section}.meta_lr", self.meta_lr)
        _positive(f"{self.section}.meta_weight_decay", self.meta_weight_decay, allow_zero=True)
        _positive(f"{self.section}.meta_interval", self.meta_interval)
        _positive(f"{self.section}.skip_layers", self.skip_layers, allow_zero=True)


# Over which samples CurveNet's curves are standardised (curves/features.py).
CURVE_NORMALIZATIONS = ("dataset", "class", "class_mean")


@dataclass
class CurveNetConfig(MetaLearningConfig):
    """`method=curvenet`: a network that weighs each sample from its probe loss curve and given label."""

    section = "curvenet"
    meta_interval: int = 2
    """A meta update every 2nd training iteration: the stage costs about what a CE stage costs, with accuracy and
    noise detection within the seeds' spread of every iteration's (DESIGN.md §9)."""
    skip_epochs: int = 5
    """S: the first S probe epochs are dropped from each curve."""
    curve_normalization: str = "dataset"
    """Over which samples each epoch of the curves is standardised: `dataset` (every training sample: a wrong
    label's curve sits where every class's wrong labels do, whatever share of its class is wrong), `class` (the
    samples of its given class, mean and std: the paper's text) or `class_mean` (the same, centring only: the
    reference code)."""
    prior_slope: float = 2.0
    """CurveNet's output corrects the probe's own judgment of each label: a weight starts at sigmoid(prior_slope x
    the sample's mean standardised margin over the curve's epochs) + 0.02 (minus its mean standardised loss for a
    store without margins). 0: no prior, every weight starts at 0.52 and the net alone decides. DESIGN.md §4."""
    embedding_dim: int = 64
    """P: width of the curve feature and of the label embedding."""
    curve_hidden: list[int] = field(default_factory=lambda: [128, 128])
    """Hidden sizes of the curve branch before the P-wide layer."""
    head_hidden: list[int] = field(default_factory=lambda: [128, 64])
    """Hidden sizes after curve and label features are summed."""
    weight_scale: str = "class"
    """What the weights are divided by before they weigh the loss, so that the meta step cannot lower the meta loss
    by raising every weight: `class` (the mean weight of the sample's given class, times the class's factor from
    `rebalance`: CurveNet shares each class's total out within the class), `dataset` (the mean weight over the
    training set), `batch` (the batch mean over all ranks) or `none` (the plain weighted mean). `class` and
    `dataset` estimate their means on scale_samples fixed training samples."""
    rebalance: str = "class_totals"
    """How the long tail is met: `class_totals` (under the `class` scale, each class's total is class-balanced CE's
    for the share of its labels the probe finds right and CE's for the rest; plain logits) or `logit_adjust` (every
    class keeps CE's total and the classifier trains on its logits plus the log of the given-label prior: ahead at
    imbalance 50, behind on small data and where a head class's errors swamp a small class). DESIGN.md §5."""
    scale_samples: int = 1024
    """For weight_scale `dataset`: how many training samples estimate the mean weight (all, if fewer); for
    `class`: this many divided by the class count, per class."""
    settle_tolerance: float = 0.05
    """Meta-learning stops before the first LR decay once the weights have settled: when, in settle_epochs meta
    epochs in a row, the class-relative weight moved less than this fraction of its spread (mean absolute change
    over std, meta/settling.py). 0: meta-learn until the first LR decay, as the paper."""
    settle_epochs: int = 2
    """How many calm meta epochs in a row make the weights settled."""

    def validate(self) -> None:
        super().validate()
        _positive("curvenet.skip_epochs", self.skip_epochs, allow_zero=True)
        _positive("curvenet.embedding_dim", self.embedding_dim)
        _layer_sizes("curvenet.curve_hidden", self.curve_hidden, allow_empty=True)
        # The head's last hidden layer feeds the output layer, so the head needs one.
        _layer_sizes("curvenet.head_hidden", self.head_hidden, allow_empty=False)
        _choice("curvenet.weight_scale", self.weight_scale, ("class", "dataset", "batch", "none"))
        _choice("curvenet.rebalance", self.rebalance, ("class_totals", "logit_adjust"))
        _choice("curvenet.curve_normalization", self.curve_normalization, CURVE_NORMALIZATIONS)
        _positive("curvenet.prior_slope", self.prior_slope, allow_zero=True)
        _positive("curvenet.settle_tolerance", self.settle_tolerance, allow_zero=True)
        _positive("curvenet.settle_epochs", self.settle_epochs)
        _positive("curvenet.scale_samples", self.scale_samples)


@dataclass
class MWNetConfig(MetaLearningConfig):
    """`method=mwnet`: Meta-Weight-Net, a 1-h-1 MLP that weighs each sample from its current loss."""

    section = "mwnet"
    hidden: int = 100
    """Width of the MLP's hidden layer."""
    weight_scale: str = "none"
    """What the weights are divided by before they weigh the loss: `batch` (the batch mean over all ranks,
    Meta-Weight-Net's own normalisation) or `none` (the plain weighted mean, its reference code's). Its input is
    the current loss, so the means over fixed samples that CurveNet can use do not apply."""

    def validate(self) -> None:
        super().validate()
        _positive("mwnet.hidden", self.hidden)
        _choice("mwnet.weight_scale", self.weight_scale, ("batch", "none"))


@dataclass
class MetaConfig:
    """The clean meta set and the meta-gradient's sync, shared by every meta-learned method."""

    sync: str = "exact"
    """`exact`: the meta-gradient equals one process on the union of all ranks' batches. `local`: each rank's
    virtual step sees only its own batch (cheaper, approximate)."""
    batch_size: int = 128
    """Meta batch size per rank. The reference code draws meta batches of the train batch's size, and so does every
    shipped config: a larger one makes each meta step dearer (the meta batch's forward and second-order backward)."""
    source: str = "carved"
    """`carved` (bias.meta_per_class clean samples), `split` (the dataset's own meta split) or `lowest_loss`
    (the per_class lowest mean-probe-loss samples of each class; no clean data needed)."""
    per_class: int = 10
    """For `lowest_loss`: samples per class."""

    def validate(self) -> None:
        _choice("meta.sync", self.sync, ("exact", "local"))
        if self.source in MOVED_META_SOURCES:
            raise ConfigError(MOVED_META_SOURCES[self.source])
        _choice("meta.source", self.source, ("carved", "split", "lowest_loss"))
        _positive("meta.batch_size", self.batch_size)
        _positive("meta.per_class", self.per_class)


@dataclass
class DynamicLossConfig(MetaLearningConfig):
    """`method=dynamic_loss`: a label corrector and a margin generator, meta-learned on a sample of the training set
    drawn each epoch; the defaults are the reference code's."""

    section = "dynamic_loss"
    meta_lr: float = 3e-3
    meta_weight_decay: float = 0.0
    meta_interval: int = 2
    skip_layers: int = 3
    """3 leaves only the head of a CIFAR ResNet in the virtual step."""
    buckets: int = 100
    """How many loss-rank buckets per class the label corrector tells apart."""
    hidden: int = 64
    """Width of the bucket and class embeddings and of the corrector's and generator's hidden layers."""
    warmup_epochs: int = 5
    """Plain CE epochs first, in which the corrector learns to reproduce the given labels."""
    warmup_corrector_steps: int = 0
    """The corrector learns the given labels for at most this many of the warm-up's iterations (the reference:
    2000); 0 leaves it at its initial trust of 0.98, from where the meta step can still move it."""
    clean_meta: bool = False
    """The meta set of each epoch: false, the epoch's hierarchical sample (per class, half the smallest class's
    count drawn from the training set, the lower-loss half kept; no clean data needed); true, that sample plus the
    clean set meta.source names."""

    def validate(self) -> None:
        super().validate()
        if self.buckets < 2:
            raise ConfigError(f"dynamic_loss.buckets={self.buckets} must be >= 2: one bucket cannot rank samples")
        _positive("dynamic_loss.hidden", self.hidden)
        _positive("dynamic_loss.warmup_epochs", self.warmup_epochs, allow_zero=True)
        _positive("dynamic_loss.warmup_corrector_steps", self.warmup_corrector_steps, allow_zero=True)


@dataclass
class LogitAdjustConfig:
    """`method=logit_adjust`: logit-adjusted cross-entropy (Menon et al. 2021), no weighting net."""

    tau: float = 1.0
    """The classifier trains on logits + tau * log(class prior), the prior being the training set's class
    frequencies; predictions use the plain logits. 0 is plain CE."""

    def validate(self) -> None:
        _positive("logit_adjust.tau", self.tau, allow_zero=True)


@dataclass
class TrackingConfig:
    experiment: str = "curvenet-dist"
    """MLflow experiment name."""
    uri: str = ""
    """MLflow tracking URI; empty: $MLFLOW_TRACKING_URI, else a local store inside the run folder."""
    enabled: bool = True
    """Log to MLflow (rank 0 only)."""

    def validate(self) -> None:
        if self.enabled and not self.experiment:
            raise ConfigError("tracking.experiment must name the MLflow experiment when tracking.enabled=true")


METHODS = ("ce", "balanced_ce", "logit_adjust", "mwnet", "curvenet", "dynamic_loss")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    bias: BiasConfig = field(default_factory=BiasConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    allocate: AllocateConfig = field(default_factory=AllocateConfig)
    method: str = "curvenet"
    """Allocate-stage training: `ce` (every weight 1), `balanced_ce` (every sample of given class c weighs
    N / (C n_c), so each class carries the same total weight), `logit_adjust` (logit-adjusted CE), `mwnet`
    (Meta-Weight-Net), `curvenet` or `dynamic_loss` (label corrector and margin generator). Each has its section
    below; the meta-learned ones also read `meta`."""
    meta: MetaConfig = field(default_factory=MetaConfig)
    curvenet: CurveNetConfig = field(default_factory=CurveNetConfig)
    mwnet: MWNetConfig = field(default_factory=MWNetConfig)
    dynamic_loss: DynamicLossConfig = field(default_factory=DynamicLossConfig)
    logit_adjust: LogitAdjustConfig = field(default_factory=LogitAdjustConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self) -> None:
        for key, value in _float_values(self, ""):
            if not math.isfinite(value):
                raise ConfigError(f"{key}={value} must be a finite number")
        _choice("method", self.method, METHODS)
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section) and hasattr(section, "validate"):
                section.validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, object]:
        """Dotted keys to values, e.g. {'data.batch_size': 128}: MLflow params."""
        out: dict[str, object] = {}

        def walk(prefix: str, value: object) -> None:
            if isinstance(value, dict):
                for key, sub in value.items():
                    walk(f"{prefix}{key}.", sub)
            else:
                out[prefix[:-1]] = value

        walk("", self.to_dict())
        return out

    def save(self, path: Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _float_values(section: object, prefix: str) -> Iterator[tuple[str, float]]:
    """(dotted key, value) for every float field, and every item of a list of floats, of `section` and its
    subsections."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        key, value = f"{prefix}{f.name}", getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            yield from _float_values(value, f"{key}.")
        elif hints[f.name] is float:
            yield key, value
        elif hints[f.name] == list[float]:
            yield from ((f"{key}[{i}]", item) for i, item in enumerate(value))


def _coerce(key: str, value: object, annotation: object) -> object:
    origin = typing.get_origin(annotation)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r} must be a list, e.g. {key}=[1,2]")
        (item_type,) = typing.get_args(annotation)
        return [_coerce(f"{key}[{i}]", item, item_type) for i, item in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} must be an integer")
        return value
    if annotation is float:
        # A string too: YAML 1.1 reads an exponent without a dot (1e-3) as one.
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key}={value!r} must be a number")
        try:
            return float(value)
        except (ValueError, OverflowError):
            raise ConfigError(f"{key}={value!r} must be a number") from None
    if annotation is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be a string")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {annotation}")


# Keys of earlier layouts: a config that still names one stops with the line that says where it went.
MOVED_KEYS = {
    "probe.dir": "probe.dir has moved: set allocate.probe_dir",
    "probe.record": "probe.record is removed: the probe always records every sample's loss",
    "slmo.skip_layers": "slmo.skip_layers has moved: set curvenet.skip_layers (CurveNet), mwnet.skip_layers "
                        "(Meta-Weight-Net) or dynamic_loss.skip_layers",
    "meta.lr": "meta.lr has moved: set curvenet.meta_lr (CurveNet) or mwnet.meta_lr (Meta-Weight-Net)",
    "meta.weight_decay": "meta.weight_decay has moved: set curvenet.meta_weight_decay (CurveNet) or "
                         "mwnet.meta_weight_decay (Meta-Weight-Net)",
    "meta.interval": "meta.interval has moved: set curvenet.meta_interval (CurveNet) or mwnet.meta_interval "
                     "(Meta-Weight-Net)",
    "meta.weight_scale": "meta.weight_scale has moved: set curvenet.weight_scale (CurveNet) or mwnet.weight_scale "
                         "(Meta-Weight-Net)",
    "meta.scale_samples": "meta.scale_samples has moved: set curvenet.scale_samples",
    "curvenet.mwnet_hidden": "curvenet.mwnet_hidden has moved: set mwnet.hidden",
    "curvenet.normalize_std": "curvenet.normalize_std has moved: set curvenet.curve_normalization (class: the given "
                              "class's mean and std, class_mean: its mean only)",
    "dynamic_loss.lr": "dynamic_loss.lr has moved: set dynamic_loss.meta_lr",
    "dynamic_loss.weight_decay": "dynamic_loss.weight_decay has moved: set dynamic_loss.meta_weight_decay",
}
MOVED_META_SOURCES = {
    "hierarchical": "meta.source='hierarchical' has moved: set method=dynamic_loss with dynamic_loss.clean_meta=false",
    "hierarchical_clean": "meta.source='hierarchical_clean' has moved: set method=dynamic_loss with "
                          "dynamic_loss.clean_meta=true (the clean set is the one meta.source names)",
}


def _moved_key(dotted: str, value: object) -> str | None:
    """MOVED_KEYS's line for `dotted`, or for a key inside it when it is a section that is gone (slmo)."""
    if dotted in MOVED_KEYS:
        return MOVED_KEYS[dotted]
    if isinstance(value, dict):
        return next((MOVED_KEYS[f"{dotted}.{key}"] for key in value if f"{dotted}.{key}" in MOVED_KEYS), None)
    return None


def _apply(target: object, values: dict, prefix: str, source: str) -> None:
    hints = typing.get_type_hints(type(target))
    names = {f.name for f in dataclasses.fields(target)}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            moved = _moved_key(dotted, value)
            if moved is not None:
                raise ConfigError(f"{source}: {moved}")
            raise ConfigError(f"{source}: unknown key {dotted!r}; known keys here: {', '.join(sorted(names))}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {dotted} is a section; give its keys, e.g. {dotted}.<key>=...")
            _apply(current, value, f"{dotted}.", source)
        else:
            setattr(target, key, _coerce(f"{source}: {dotted}", value, hints[key]))


def _yaml_problem(error: yaml.YAMLError) -> str:
    """What yaml found wrong, on one line (its own message spans several)."""
    problem = getattr(error, "problem", None) or getattr(error, "context", None) or str(error)
    return " ".join(problem.split())


def _read_yaml(path: Path) -> object:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte offset {error.start}: {error.reason}); "
                          "save it as UTF-8") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {_yaml_problem(error)}") from None


def parse_override(text: str) -> dict:
    """`a.b=value` -> {'a': {'b': value}}, the value parsed as YAML (so 3, 0.1, true, [1,2] are typed)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    dotted, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"command line: {dotted}={raw!r} is not valid YAML: {_yaml_problem(error)}") from None
    nested: dict = value
    for part in reversed(dotted.strip().split(".")):
        nested = {part: nested}
    return nested


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file, then each override in order; validated."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        values = _read_yaml(path) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        _apply(config, values, "", str(path))
    for text in overrides:
        _apply(config, parse_override(text), "", "command line")
    config.validate()
    return config
