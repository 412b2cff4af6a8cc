"""Clean-test accuracy: overall, per class and many/medium/few-shot, counting every test sample once."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from curvenet_dist.curves.gather import gather_by_id
from curvenet_dist.data.datasets import shot_groups


def predict(model: torch.nn.Module, loader, device: torch.device, num_samples: int,
            autocast) -> tuple[np.ndarray, np.ndarray]:
    """Every sample's predicted class and its cross-entropy against the loader's (given) label, indexed by id
    (padding repeats dropped). One pass serves accuracy, suspects and loss-based weights alike."""
    model.eval()
    ids, predictions, losses = [], [], []
    with torch.no_grad():
        for images, labels, batch_ids in loader:
            with autocast():
                logits = model(images.to(device, non_blocking=True))
            predictions.append(logits.argmax(1))
            losses.append(F.cross_entropy(logits.float(), labels.to(device, non_blocking=True), reduction="none"))
            ids.append(batch_ids.to(device))
    model.train()
    ids = torch.cat(ids)
    return (gather_by_id(ids, torch.cat(predictions), num_samples),
            gather_by_id(ids, torch.cat(losses), num_samples))


def losses_and_samples(model: torch.nn.Module, loader, device: torch.device, num_samples: int, autocast,
                       generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Every sample's cross-entropy against its given label and one class drawn from its predicted distribution
    (a hard Gumbel-softmax sample at tau 1), indexed by id; `generator` (on the model's device) draws the classes."""
    model.eval()
    ids, losses, samples = [], [], []
    with torch.no_grad():
        for images, labels, batch_ids in loader:
            with autocast():
                logits = model(images.to(device, non_blocking=True))
            logits = logits.float()
            losses.append(F.cross_entropy(logits, labels.to(device, non_blocking=True), reduction="none"))
            samples.append(torch.multinomial(logits.softmax(1), 1, generator=generator).squeeze(1))
            ids.append(batch_ids.to(device))
    model.train()
    ids = torch.cat(ids)
    return gather_by_id(ids, torch.cat(losses), num_samples), gather_by_id(ids, torch.cat(samples), num_samples)


def accuracy_report(predictions: np.ndarray, labels: np.ndarray, train_counts: np.ndarray) -> dict:
    """test_acc, per_class_acc (list), many_acc, medium_acc, few_acc: fractions."""
    num_classes = len(train_counts)
    correct = predictions == labels
    per_class = np.array([correct[labels == c].mean() if np.any(labels == c) else np.nan for c in range(num_classes)])
    report = {"test_acc": float(correct.mean()), "per_class_acc": [round(float(a), 4) for a in per_class]}
    for group, classes in shot_groups(train_counts).items():
        report[f"{group}_acc"] = float(np.nanmean(per_class[classes])) if len(classes) else float("nan")
    return report


def near_chance_warning(test_acc: float, num_classes: int, steps: int, consequence: str) -> str | None:
    """A warning line when a finished stage's `test_acc` is near chance (below twice 1 / num_classes, and within a
    tenth of the way from chance to perfect), else None. The usual cause is a small dataset under a config sized
    for a large one: an epoch is then a few optimizer steps, `steps` in all."""
    chance = 1 / num_classes
    if test_acc >= min(2 * chance, chance + (1 - chance) / 10):
        return None
    return (f"warning: test accuracy {test_acc:.4f} is near chance ({chance:.3f} for {num_classes} classes) after "
            f"{steps} optimizer steps: the network learned next to nothing, {consequence}; for a few thousand images "
            f"or fewer start from configs/prepared_small.yaml (README, \"Small datasets\")")


WEIGHT_SPREAD_FLOOR = 0.05
"""Below this spread of the class-relative weight a run's weights are called constant: within every class each
sample then weighs within about 5% of the others, and the weighting did next to nothing beyond its class totals."""


def constant_weights_warning(spread: float, meta_updates: int, meta_gradient_norm: float | None) -> str | None:
    """A warning line when a weighting net's final weights are (nearly) the same for every sample of a class, with
    the likely cause, else None."""
    if spread >= WEIGHT_SPREAD_FLOOR:
        return None
    if meta_gradient_norm is None:
        cause = "no meta update ran in this process (resumed after the freeze?)"
    elif meta_updates < 200:
        cause = (f"{meta_updates} meta updates are few: give the allocate stage more steps before its first "
                 f"milestone (more epochs, or a smaller data.batch_size)")
    else:
        cause = (f"the meta-gradient was weak (mean norm {meta_gradient_norm:.1e} in the last meta epoch): the clean "
                 f"meta set barely prefers any weighting; check that it is clean and that the curves separate the "
                 f"samples (loss_curves.png of the probe run)")
    return (f"warning: the weights ended nearly constant (spread {spread:.4f} of the class-relative weight, below "
            f"{WEIGHT_SPREAD_FLOOR}): the weighting net learned next to nothing and the run trained as its class "
            f"totals alone; likely cause: {cause}")
