"""Which training samples are mislabeled: the project's detectors beside the peers a user would pick, on the same
data, seed and network.

For each seed, the probe run (under torchrun, or a finished one from --probe-dir) gives two scores from its curve
store: the mean probe loss and AUM (Pleiss et al. 2020: the mean logit margin over the probe epochs, low =
suspect). cleanlab scores the same samples from K-fold out-of-sample predicted probabilities of the probe's network,
optimizer and LR schedule, trained in this one process on K-1 folds (each step on the probe's batch summed over its
ranks, as many samples as a probe step) and predicting the held-out fold: `get_label_quality_scores`
(self_confidence, with and without `adjust_pred_probs`) and `find_label_issues`. Each --allocate-dir adds that
allocate run's suspect order (the rank of each sample in its suspects.csv, the most suspect first) and its flagged
set (the `flagged` column).

Figures per detector, against the true labels (mislabeled = positive): AUROC and AP of its score; for
find_label_issues and the allocate runs the precision, recall and F1 of the samples they flag (find_label_issues'
AUROC and AP are those of its 0/1 flag); and the wall time of everything the score needs: the probe run's (its
metrics.json wall_s) and the reading for the store's scores, the fold trainings and the call for cleanlab's, the
allocate run's and, where it read a probe, this seed's probe run's for an allocate run's. The JSON line holds each
as its mean and std over seeds.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
import torch.nn.functional as F
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold

from curvenet_dist.config import Config, ConfigError, DataConfig, load_config
from curvenet_dist.curves.features import mean_margin, mean_probe_loss
from curvenet_dist.curves.gather import first_value_by_id
from curvenet_dist.curves.store import CurveStore, CurveStoreError
from curvenet_dist.data.datasets import Splits, build_splits
from curvenet_dist.data.loader import build_loader
from curvenet_dist.data.sample_table import DataError, SampleTable
from curvenet_dist.engine.components import autocast_for, build_model, probe_fingerprint
from curvenet_dist.engine.launch import USER_ERROR_EXIT_CODE, error_line, torchrun_stage
from curvenet_dist.engine.lr_schedule import probe_lr
from curvenet_dist.engine.probe import CURVE_STORE
from curvenet_dist.models.staged import StagedNet
from curvenet_dist.tracking.report import SUSPECTS_CSV, read_suspects_table
from curvenet_dist.tracking.suspects import flagged_scores

REPO = Path(__file__).resolve().parents[2]
SEED = "{seed}"
"""In a --probe-dir or --allocate-dir path: replaced by each seed."""


class DetectError(ValueError):
    """A run folder the benchmark cannot score; the message names it."""


@dataclasses.dataclass(frozen=True)
class Truth:
    """The training samples whose true label is known, which every score is judged on, and which of them are
    mislabeled."""

    known: np.ndarray
    mislabeled: np.ndarray


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m curvenet_dist.bench detect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"),
                        help="the probe's config (with --probe-dir, that run's own config.yaml is used)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--probe-dir", default="", help=f"a finished probe run to score instead of running one; "
                                                        f"{SEED} in the path stands for each seed")
    parser.add_argument("--allocate-dir", nargs="+", default=[],
                        help=f"finished allocate runs on the same data whose weights are scored too ({SEED} as above)")
    parser.add_argument("--folds", type=int, default=4, help="K of cleanlab's K-fold predicted probabilities")
    parser.add_argument("--nproc", type=int, default=2, help="torchrun processes of the probe run")
    parser.add_argument("--run-dir", default="", help="keep the probe runs here (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="config overrides for the probe and the folds")
    arguments = parser.parse_args(argv)
    if arguments.folds < 2:
        parser.error(f"--folds {arguments.folds}: K-fold predictions need at least 2 folds")
    for path in [arguments.probe_dir, *arguments.allocate_dir]:
        if path and len(arguments.seeds) > 1 and SEED not in path:
            parser.error(f"{path}: with several --seeds, a run folder's path holds {SEED}, so each seed has its own")
    return arguments


def main(argv: list[str]) -> dict:
    arguments = parse_arguments(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="curvenet-detect-") as scratch:
            root = Path(arguments.run_dir or scratch).resolve()
            runs = [score_seed(arguments, seed, root) for seed in arguments.seeds]
    except (ConfigError, DataError, CurveStoreError, DetectError) as error:
        stop(error_line(error))
    summary = summarize(runs)
    for detector in runs[0]:
        print(describe(detector, summary), flush=True)
    return {"seeds": arguments.seeds, "folds": arguments.folds, "config": arguments.config,
            "probe_dir": arguments.probe_dir, "overrides": arguments.overrides, **summary}


def stop(line: str) -> NoReturn:
    print(line, file=sys.stderr, flush=True)
    sys.exit(USER_ERROR_EXIT_CODE)


def score_seed(arguments: argparse.Namespace, seed: int, root: Path) -> dict[str, dict[str, float]]:
    """{detector: its figures} for one seed."""
    probe_dir = probe_run(arguments, seed, root)
    # The probe run's own settings; one run here has the overrides in its config.yaml already.
    config = load_config(probe_dir / "config.yaml", arguments.overrides if arguments.probe_dir else [])
    store = CurveStore.open(probe_dir / CURVE_STORE, mode="r")
    if store.margin is None:
        raise DetectError(f"{store.path} holds no logit margins (it was recorded before the probe kept them) and "
                          f"bench detect needs a store with margins: run the probe again into a new run.dir")
    splits = build_splits(config.data, config.bias)
    if store.fingerprint != probe_fingerprint(config, splits.train):
        raise DetectError(f"{store.path} was recorded with other settings or data than its config.yaml and the "
                          f"overrides given; leave out the overrides that change what the probe trained")
    truth = judged_samples(store)
    probe = json.loads((probe_dir / "metrics.json").read_text())
    results = {"mean_loss": timed_score(lambda: mean_probe_loss(store), truth, probe["wall_s"]),
               "aum": timed_score(lambda: -mean_margin(store), truth, probe["wall_s"])}
    results.update(cleanlab_detectors(config, splits, probe["world_size"], arguments.folds, truth))
    for folder in arguments.allocate_dir:
        method, figures = allocate_detector(Path(folder.replace(SEED, str(seed))), store, truth, probe["wall_s"])
        if method in results:
            raise DetectError(f"--allocate-dir names two runs of method {method}: give one run of each method")
        results[method] = figures
    return results


def probe_run(arguments: argparse.Namespace, seed: int, root: Path) -> Path:
    """The seed's finished probe run: --probe-dir's, or one run now under torchrun."""
    if arguments.probe_dir:
        probe_dir = Path(arguments.probe_dir.replace(SEED, str(seed))).resolve()
        if not (probe_dir / "metrics.json").is_file():
            raise DetectError(f"{probe_dir} holds no metrics.json: --probe-dir names a finished probe run")
        return probe_dir
    probe_dir = root / f"seed{seed}" / "probe"
    print(f"seed {seed}: probe on {arguments.nproc} ranks in {probe_dir}", flush=True)
    torchrun_stage(arguments.nproc, "probe", ["--config", arguments.config, *arguments.overrides, f"run.seed={seed}",
                                              f"bias.seed={seed}", "tracking.enabled=false", f"run.dir={probe_dir}"],
                   quiet=True)
    return probe_dir


def judged_samples(store: CurveStore) -> Truth:
    known = store.true_labels >= 0
    mislabeled = store.labels[known] != store.true_labels[known]
    if not mislabeled.any() or mislabeled.all():
        raise DetectError(f"{store.path}: {int(mislabeled.sum())} of the {int(known.sum())} samples whose true label "
                          f"is known are mislabeled; scoring a detector needs clean and mislabeled samples")
    return Truth(known, mislabeled)


def detection_figures(suspicion: np.ndarray, truth: Truth) -> dict[str, float]:
    """AUROC and AP of `suspicion` (one per training sample, higher = more likely mislabeled)."""
    score = suspicion[truth.known]
    return {"auroc": float(roc_auc_score(truth.mislabeled, score)),
            "ap": float(average_precision_score(truth.mislabeled, score))}


def timed_score(suspicion: Callable[[], np.ndarray], truth: Truth, before_s: float) -> dict[str, float]:
    """`detection_figures` of what `suspicion()` returns, and its wall time on top of `before_s`."""
    start = time.perf_counter()
    scores = suspicion()
    return {**detection_figures(scores, truth), "wall_s": before_s + time.perf_counter() - start}


def cleanlab_detectors(config: Config, splits: Splits, probe_world_size: int, folds: int,
                       truth: Truth) -> dict[str, dict[str, float]]:
    start = time.perf_counter()
    probabilities = out_of_sample_probabilities(config, splits, probe_world_size, folds)
    folds_s = time.perf_counter() - start
    labels = splits.train.labels
    results = {
        name: timed_score(lambda: 1 - get_label_quality_scores(labels, probabilities, method="self_confidence",
                                                               adjust_pred_probs=adjust), truth, folds_s)
        for name, adjust in (("cl_self_confidence", False), ("cl_self_confidence_adjusted", True))
    }
    start = time.perf_counter()
    flagged = find_label_issues(labels, probabilities)
    results["cl_find_label_issues"] = {**flag_figures(flagged, truth), "wall_s": folds_s + time.perf_counter() - start}
    return results


def flag_figures(flagged: np.ndarray, truth: Truth) -> dict[str, float]:
    """`flagged_set_figures` and the AUROC and AP of the 0/1 flag."""
    return {**detection_figures(flagged.astype(np.float64), truth), **flagged_set_figures(flagged, truth)}


def flagged_set_figures(flagged: np.ndarray, truth: Truth) -> dict[str, float]:
    """Precision, recall and F1 of the flagged samples, and how many there are."""
    scores = flagged_scores(flagged[truth.known], truth.mislabeled)
    return {"precision": scores["flagged_precision"], "recall": scores["flagged_recall"], "f1": scores["flagged_f1"],
            "flagged": int(flagged.sum())}


def out_of_sample_probabilities(config: Config, splits: Splits, probe_world_size: int, folds: int) -> np.ndarray:
    """[N, classes]: each training sample's predicted probabilities from the network trained on the other folds
    (stratified by given label, seeded by run.seed)."""
    train = splits.train
    data = dataclasses.replace(config.data, batch_size=config.data.batch_size * probe_world_size)
    device = torch.device("cuda", 0) if config.run.device != "cpu" and torch.cuda.is_available() else torch.device("cpu")
    probabilities = np.empty((len(train), splits.num_classes), np.float32)
    split = StratifiedKFold(folds, shuffle=True, random_state=config.run.seed).split(train.labels, train.labels)
    for fold, (trained, held_out) in enumerate(split, start=1):
        start = time.perf_counter()
        model = train_plain_ce(config, data, train.select(trained), splits.num_classes, device)
        probabilities[held_out] = predicted_probabilities(model, config, data, train.select(held_out), device)
        print(f"fold {fold}/{folds}: trained on {len(trained)} samples, predicted {len(held_out)}, "
              f"{time.perf_counter() - start:.1f} s", flush=True)
    return probabilities


def train_plain_ce(config: Config, data: DataConfig, table: SampleTable, num_classes: int,
                   device: torch.device) -> StagedNet:
    """The probe's network, optimizer and LR schedule over the probe's epochs, plain CE on `table`."""
    model = build_model(config, num_classes, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.optim.lr, momentum=config.optim.momentum,
                                weight_decay=config.optim.weight_decay, nesterov=config.optim.nesterov)
    loader = build_loader(data, table, train=True, rank=0, world_size=1, seed=config.run.seed, device=device)
    autocast = autocast_for(config, device)
    model.train()
    for epoch in range(config.probe.epochs):
        loader.set_epoch(epoch)
        batches = len(loader)
        for batch, (images, labels, _) in enumerate(loader):
            for group in optimizer.param_groups:
                group["lr"] = probe_lr(config.probe, config.optim.lr, epoch + batch / batches)
            with autocast():
                logits = model(images.to(device, non_blocking=True))
            loss = F.cross_entropy(logits.float(), labels.to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


def predicted_probabilities(model: StagedNet, config: Config, data: DataConfig, table: SampleTable,
                            device: torch.device) -> np.ndarray:
    """[len(table), classes]: the softmax of `model` on each sample of `table`, without augmentation."""
    loader = build_loader(data, table, train=False, rank=0, world_size=1, seed=config.run.seed, device=device)
    autocast = autocast_for(config, device)
    model.eval()
    ids, probabilities = [], []
    with torch.no_grad():
        for images, _, batch_ids in loader:
            with autocast():
                logits = model(images.to(device, non_blocking=True))
            probabilities.append(logits.float().softmax(1).cpu())
            ids.append(batch_ids)
    return first_value_by_id(torch.cat(ids).numpy(), torch.cat(probabilities).numpy(), len(table))


def allocate_detector(folder: Path, store: CurveStore, truth: Truth, probe_s: float) -> tuple[str, dict[str, float]]:
    """The allocate run's method and the figures of its suspect order."""
    for name in ("config.yaml", "metrics.json", SUSPECTS_CSV):
        if not (folder / name).is_file():
            raise DetectError(f"{folder} holds no {name}: --allocate-dir names a finished allocate run")
    config = load_config(folder / "config.yaml")
    train = build_splits(config.data, config.bias).train
    if train.fingerprint() != store.dataset_fingerprint:
        raise DetectError(f"{folder} was trained on other samples than {store.path} was recorded on; score allocate "
                          f"runs with the probe's data and bias settings")
    metrics = json.loads((folder / "metrics.json").read_text())
    before_s = metrics["wall_s"] + (probe_s if config.allocate.probe_dir else 0.0)
    suspicion, flagged = suspects_by_id(folder / SUSPECTS_CSV, len(train))
    return metrics["method"], {**timed_score(lambda: suspicion, truth, before_s),
                               **flagged_set_figures(flagged, truth)}


def suspects_by_id(path: Path, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Each training sample's suspicion from its rank in suspects.csv (minus the rank, so rank 1 scores highest)
    and its `flagged` column, by sample id."""
    table = read_suspects_table(path)
    ids, ranks = table.column("sample_id").to_numpy(), table.column("rank").to_numpy()
    if len(ids) != num_samples or not np.array_equal(np.sort(ids), np.arange(num_samples)):
        raise DetectError(f"{path} does not list each of the {num_samples} training samples once")
    suspicion, flagged = np.empty(num_samples), np.empty(num_samples, bool)
    suspicion[ids] = -ranks
    flagged[ids] = table.column("flagged").to_numpy(zero_copy_only=False)
    return suspicion, flagged


def summarize(runs: list[dict[str, dict[str, float]]]) -> dict[str, float]:
    """{<detector>_<figure>_mean / _std: over the seeds' runs}."""
    summary = {}
    for detector, figures in runs[0].items():
        for figure in figures:
            values = [run[detector][figure] for run in runs]
            summary[f"{detector}_{figure}_mean"] = statistics.mean(values)
            summary[f"{detector}_{figure}_std"] = statistics.pstdev(values)
    return summary


def describe(detector: str, summary: dict[str, float]) -> str:
    """One line: the detector's figures, mean ± std over the seeds."""
    def figure(name: str, label: str, digits: int = 3) -> str:
        mean, std = summary[f"{detector}_{name}_mean"], summary[f"{detector}_{name}_std"]
        return f"{label} {mean:.{digits}f} ± {std:.{digits}f}"

    parts = [figure("auroc", "AUROC"), figure("ap", "AP")]
    if f"{detector}_f1_mean" in summary:
        parts += [figure("precision", "precision"), figure("recall", "recall"), figure("f1", "F1"),
                  figure("flagged", "flagged", 0)]
    return f"{detector:28s} " + ", ".join(parts + [figure("wall_s", "wall s", 1)])
