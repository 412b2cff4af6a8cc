"""The allocate stage: retrain the classifier as the configured method says (curvenet_dist/methods/: per-sample
weights, a training loss of its own, nets meta-learned on a clean meta set). The trainer knows no method by name."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from curvenet_dist.config import Config, ConfigError
from curvenet_dist.curves.features import probe_margins
from curvenet_dist.curves.store import CurveStore, CurveStoreError
from curvenet_dist.data.datasets import build_splits
from curvenet_dist.data.loader import build_loader
from curvenet_dist.engine.checkpoint import CheckpointError, Checkpointer
from curvenet_dist.engine.components import autocast_for, build_model, check_images_exist, fingerprint, write_json
from curvenet_dist.engine.distributed import DistributedContext, barrier, broadcast_model
from curvenet_dist.engine.evaluate import accuracy_report, near_chance_warning, predict
from curvenet_dist.engine.lr_schedule import step_lr
from curvenet_dist.engine.model_file import publish_model
from curvenet_dist.engine.preemption import Preempted, StopSignal
from curvenet_dist.engine.probe import CURVE_STORE
from curvenet_dist.engine.progress import Progress
from curvenet_dist.engine.stage import Position, run_stage
from curvenet_dist.meta.meta_iteration import IterationResult, MetaIteration
from curvenet_dist.methods.base import AllocateSetup
from curvenet_dist.methods.registry import METHODS
from curvenet_dist.tracking.mlflow_tracker import RUN_ID_FILE, Tracker
from curvenet_dist.tracking.report import write_allocate_report, wrong_labels_line

ARTIFACTS = ("config.yaml", "metrics.json", "weights.npy", "suspects.csv", "weights_by_class.png", "confusion_matrix.png")


class EpochTotals:
    """An epoch's sums, kept on the device so the hot path never waits for them: loss, weight, meta loss and
    meta-gradient norm, and the weight of the clean, mislabeled and unknown samples where true labels are known."""

    def __init__(self, device: torch.device):
        self.loss, self.weight, self.meta_loss, self.meta_gradient_norm = torch.zeros(4, device=device)
        self.group_weights, self.group_counts = torch.zeros(3, device=device), torch.zeros(3, device=device)
        self.samples = self.meta_steps = 0

    def add(self, result: IterationResult, group: torch.Tensor | None) -> None:
        self.loss += result.losses.sum()
        self.weight += result.weights.sum()
        if group is not None:
            self.group_weights.index_add_(0, group, result.weights)
            self.group_counts.index_add_(0, group, torch.ones_like(result.weights))
        if result.meta_loss is not None:
            self.meta_loss += result.meta_loss
            self.meta_gradient_norm += result.meta_gradient_norm
            self.meta_steps += 1
        self.samples += len(result.losses)

    def metrics(self, audited: bool) -> dict[str, float]:
        samples = max(self.samples, 1)
        metrics = {"train_loss": float(self.loss) / samples, "mean_weight": float(self.weight) / samples}
        if self.meta_steps:
            metrics["meta_loss"] = float(self.meta_loss) / self.meta_steps
            metrics["meta_gradient_norm"] = float(self.meta_gradient_norm) / self.meta_steps
        if audited:
            clean, mislabeled, _ = (self.group_weights / self.group_counts.clamp_min(1)).tolist()
            metrics.update(weight_clean=clean, weight_mislabeled=mislabeled)
        return metrics


class AllocateTrainer:
    name = "allocate"
    shown = ("train_loss", "mean_weight", "lr", "test_acc", "noise_auroc", "weight_change")
    evaluates_every_epoch = True

    def __init__(self, config: Config, context: DistributedContext):
        self.config, self.context = config, context
        self.run_dir = Path(config.run.dir)
        self.epochs = config.allocate.epochs
        self.splits = build_splits(config.data, config.bias)
        train, device = self.splits.train, context.device
        self.num_samples = len(train)
        check_images_exist(train, "train", context)
        check_images_exist(self.splits.test, "test", context)
        self.probe_dir = Path(config.allocate.probe_dir) if config.allocate.probe_dir else None
        self.probe_store = store = self._probe_store(METHODS[config.method].needs_probe)
        # Where true labels are known (synthetic noise, audited samples), each epoch logs the mean weight of clean and
        # of mislabeled samples: how the weights separate over epochs. Group 0 clean, 1 mislabeled, 2 unknown.
        true_labels = train.true_labels
        self.audit_group = (torch.from_numpy(np.where(true_labels < 0, 2, true_labels != train.labels)).to(device)
                            if (true_labels >= 0).any() else None)

        self.model = build_model(config, self.splits.num_classes, device)
        loader_arguments = dict(rank=context.rank, world_size=context.world_size, seed=config.run.seed, device=device)
        self.train_loader = build_loader(config.data, train, train=True, **loader_arguments)
        self.train_eval_loader = build_loader(config.data, train, train=False, **loader_arguments)
        self.test_loader = build_loader(config.data, self.splits.test, train=False, **loader_arguments)
        self.autocast = autocast_for(config, device)
        self.method = METHODS[config.method](AllocateSetup(
            config, context, self.splits, store, self.model, self.train_loader, self.train_eval_loader,
            loader_arguments, self.autocast))
        broadcast_model(self.model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.optim.lr, momentum=config.optim.momentum,
                                         weight_decay=config.optim.weight_decay, nesterov=config.optim.nesterov)
        data_parallel = (DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None,
                                                 forward_sync_buffers=False) if context.world_size > 1 else None)
        self.iteration = MetaIteration(self.model, self.method.weighting_net, self.optimizer,
                                       self.method.weighting_optimizer, self.method.skip_layers, config.meta.sync,
                                       virtual_rule=self.method.virtual_rule,
                                       training_loss=self.method.training_loss(), data_parallel=data_parallel,
                                       logit_adjustment=self.method.logit_adjustment())
        self.fingerprint = fingerprint(store.fingerprint if store else train.fingerprint(), config.method,
                                       *self.method.fingerprint(), vars(config.allocate), vars(config.optim),
                                       config.run.seed)
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", self.fingerprint, config.run.keep_checkpoints)
        self.stop = StopSignal(device)
        self.progress = Progress(context.is_main, f"allocate {config.method}", self.epochs)
        self.test_predictions: np.ndarray | None = None

    def _probe_store(self, needed: bool) -> CurveStore | None:
        """The probe run's curve store, checked to be of this config's training set."""
        if self.probe_dir is None:
            if needed:
                raise ConfigError(f"allocate.probe_dir must name the probe run folder whose curve store "
                                  f"method={self.config.method} reads")
            return None
        store = CurveStore.open(self.probe_dir / CURVE_STORE, mode="r")
        train = self.splits.train
        if store.dataset_fingerprint != train.fingerprint():
            raise CurveStoreError(
                f"{store.path} was recorded on another dataset ({store.num_samples} samples, fingerprint "
                f"{store.dataset_fingerprint}) than this config's training set ({len(train)} samples, fingerprint "
                f"{train.fingerprint()}); use the same data and bias settings as the probe run"
            )
        return store

    def run(self) -> dict:
        return run_stage(self)

    def open_run_folder(self) -> None:
        if self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.config.save(self.run_dir / "config.yaml")

    def tags(self) -> dict[str, str]:
        config = self.config
        bias = config.bias
        tags = {"dataset": config.data.source, "noise_type": bias.noise_type, "noise_rate": str(bias.noise_rate),
                "imbalance_factor": str(bias.imbalance_factor), "world_size": str(self.context.world_size),
                "method": config.method, "meta_sync": config.meta.sync, "model": config.model.name,
                **self.method.tags()}
        if self.probe_dir is None:
            return tags
        tags["probe_dir"] = str(self.probe_dir.resolve())
        probe_run_id = self.probe_dir / RUN_ID_FILE
        if probe_run_id.is_file():
            tags["probe_run_id"] = probe_run_id.read_text().strip()
        return tags

    def opening_line(self) -> str:
        return (f"method {self.config.method}, {self.num_samples} training samples, {self.method.describe()}"
                f"{self.context.world_size} rank(s) x batch {self.config.data.batch_size}: "
                f"{len(self.train_loader)} steps an epoch")

    def train_epoch(self, epoch: int, start_batch: int, wall_s: float) -> dict[str, float]:
        device = self.context.device
        if self.stop.agreed():
            # Between epochs, after the last one's evaluation and checkpoint: that checkpoint (or the one this run
            # resumed from) holds this position already.
            self._preempt(epoch, start_batch, wall_s, save=False)
        lr = step_lr(self.config.allocate, self.config.optim.lr, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        plan = self.method.start_epoch(epoch, start_batch)
        plan.loader.set_epoch(epoch, start_batch)
        batches = len(plan.loader) + start_batch
        self.progress.start_epoch(epoch, batches)
        totals = EpochTotals(device)
        self.model.train()
        for batch, (images, labels, ids) in enumerate(plan.loader, start=start_batch):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            ids = ids.to(device, non_blocking=True)
            inputs = plan.inputs[ids] if plan.inputs is not None else None
            meta_batch = self.method.meta_batch(batch)
            self.method.before_step(epoch, batch, labels, inputs, ids)
            with self.autocast():
                result = self.iteration.step(images, labels, inputs, meta_batch, fixed_weights=(
                    None if plan.fixed_weights is None else plan.fixed_weights[ids]))
            totals.add(result, None if self.audit_group is None else self.audit_group[ids])
            self.method.after_step(ids, result)
            self.progress.step(batch, totals.samples)
            # After the last batch the next epoch's start asks instead, once this epoch is evaluated and saved: a
            # run resumed after an epoch's last batch would log no training metrics for that epoch.
            if batch + 1 < batches and self.stop.agreed():
                self._preempt(epoch, batch + 1, wall_s)
        metrics = {**totals.metrics(self.audit_group is not None), "lr": lr}
        self.method.end_epoch(metrics)
        return metrics

    def evaluate(self) -> dict:
        """The accuracy report on the test set; every test sample's prediction is kept for the confusion matrix."""
        self.test_predictions, _ = predict(self.model, self.test_loader, self.context.device, len(self.splits.test),
                                           self.autocast)
        return accuracy_report(self.test_predictions, self.splits.test.labels, self.splits.train.class_counts())

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        return self.method.epoch_metrics(epoch)

    def finish(self, tracker: Tracker, report: dict, elapsed: Callable[[], float]) -> dict:
        config, context = self.config, self.context
        # One pass over the training set (no augmentation) gives the suspects' predictions and the losses a final
        # weight may depend on; it is a collective, so every rank takes part.
        train_predictions, train_losses = predict(self.model, self.train_eval_loader, context.device,
                                                  self.num_samples, self.autocast)
        weights = self.method.final_weights(train_losses)
        summary = self.method.summary(weights)
        result = {**report, "method": config.method, "skip_layers": self.method.skip_layers,
                  "meta_sync": config.meta.sync, "epochs": self.epochs, "world_size": context.world_size,
                  "wall_s": elapsed(), "num_samples": self.num_samples, "mlflow_run_id": tracker.run_id,
                  **summary}
        if not context.is_main:
            return result
        result.update(write_allocate_report(self.run_dir, self.splits, weights, train_predictions, train_losses,
                                            probe_margins(self.probe_store), self.test_predictions,
                                            self.method.ranks_samples))
        publish_model(self.run_dir, self.model, config, self.splits.class_names, "allocate", tracker)
        write_json(self.run_dir / "metrics.json", result)
        for name in ARTIFACTS:
            if (self.run_dir / name).exists():
                tracker.log_artifact(self.run_dir / name)
        tracker.log_metrics({k: v for k, v in result.items() if k in ("noise_auroc", "noise_auroc_raw", "noise_ap",
                                                                       "wall_s")}, step=self.epochs)
        tracker.finish()
        auroc = f", weights' noise AUROC {result['noise_auroc']:.3f}" if "noise_auroc" in result else ""
        self.progress.say(f"done: test accuracy {result['test_acc']:.4f}{auroc}; run folder {self.run_dir}; "
                          f"{tracker.ui_hint or 'MLflow tracking off'}")
        steps = len(self.train_loader) * self.epochs
        warning = near_chance_warning(result["test_acc"], self.splits.num_classes, steps,
                                      "and no weighting can help that")
        for line in ([warning] if warning else []) + self.method.warnings(summary):
            self.progress.say(line)
        self.progress.say(wrong_labels_line(result["flagged"], self.num_samples))
        return result

    def state(self, wall_s: float) -> dict:
        # The position (epoch, batch) counts batches of this world size and batch size: see resume.
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "wall_s": wall_s,
                "world_size": self.context.world_size, "batch_size": self.config.data.batch_size,
                **self.method.state_dict()}

    def _preempt(self, epoch: int, batch: int, wall_s: float, save: bool = True) -> None:
        """Save the position (epoch, batch) with the classifier and the method's state (unless the newest
        checkpoint holds it already), then stop."""
        if self.context.is_main and save:
            path = self.checkpointer.save(self.state(wall_s), epoch, batch)
            self.progress.say(f"SIGTERM: saved {path}; the same command resumes at epoch {epoch + 1}, batch {batch}")
        elif self.context.is_main:
            self.progress.say(f"SIGTERM: stopped before epoch {epoch + 1}, batch {batch}; the same command resumes there")
        barrier()
        raise Preempted()

    def resume(self) -> Position:
        loaded = self.checkpointer.load_latest(self.progress.say, map_location=self.context.device)
        if loaded is None:
            return Position()
        path, state = loaded
        saved, now = (state["world_size"], state["batch_size"]), (self.context.world_size, self.config.data.batch_size)
        if state["batch"] and saved != now:
            # Each rank's batch b holds other samples under another world size or batch size.
            raise CheckpointError(
                f"{path} stopped inside epoch {state['epoch'] + 1} after batch {state['batch']} of {saved[0]} "
                f"process(es) x data.batch_size={saved[1]}; this run has {now[0]} x {now[1]}, which would skip or "
                f"repeat samples of that epoch: rerun with {saved[0]} process(es) and data.batch_size={saved[1]}, or "
                f"move that file away to resume from the checkpoint before it"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state)
        return Position(state["epoch"], state["batch"], state["wall_s"])
