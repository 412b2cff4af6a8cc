"""The allocate stage: retrain the classifier with per-sample weights from CurveNet, Meta-Weight-Net or none (CE),
the weighting net meta-learned on a clean meta set (DESIGN.md §5), or with Dynamic Loss's corrected targets and
margins, meta-learned on each epoch's hierarchical sample (§6)."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from curvenet_dist.config import FIXED_INPUT_SCALES, PLAIN_METHODS, Config, ConfigError
from curvenet_dist.curves.features import curve_features
from curvenet_dist.curves.store import CurveStore, CurveStoreError
from curvenet_dist.data.datasets import build_splits
from curvenet_dist.data.loader import build_loader
from curvenet_dist.engine.checkpoint import CheckpointError, Checkpointer
from curvenet_dist.engine.batched import weights_by_chunks
from curvenet_dist.engine.components import autocast_for, build_model, check_images_exist, fingerprint, write_json
from curvenet_dist.engine.distributed import DistributedContext, barrier, broadcast_model
from curvenet_dist.engine.evaluate import (
    accuracy_report, constant_weights_warning, losses_and_samples, near_chance_warning, predict,
)
from curvenet_dist.engine.lr_schedule import step_lr
from curvenet_dist.engine.model_file import publish_model
from curvenet_dist.engine.preemption import Preempted, StopSignal
from curvenet_dist.engine.probe import CURVE_STORE
from curvenet_dist.engine.progress import Progress
from curvenet_dist.meta.distributed import all_reduce_mean_
from curvenet_dist.meta.hierarchical import hierarchical_sample, rank_buckets, union
from curvenet_dist.meta.meta_iteration import MetaIteration
from curvenet_dist.meta.meta_set import select_meta_set
from curvenet_dist.meta.weight_scale import WeightScale, balanced_class_factors, reference_sample
from curvenet_dist.meta.weighting_optimizer import weighting_optimizer
from curvenet_dist.models.dynamic_loss import DynamicLoss, DynamicLossTraining, warmup_corrector_loss
from curvenet_dist.models.weighting import CurveNet, MetaWeightNet
from curvenet_dist.tracking.mlflow_tracker import RUN_ID_FILE, build_tracker
from curvenet_dist.tracking.report import audited_noise_scores, weight_spread, write_allocate_report


class MetaBatches:
    """An endless stream of meta batches: the meta loader, reshuffled each time it runs out. Its position (epoch,
    batch) is checkpointed, so a resumed run draws the same meta batches as an uninterrupted one."""

    def __init__(self, loader):
        self.loader, self.epoch, self.batch, self.iterator = loader, 0, 0, None

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        while True:
            if self.iterator is None:
                self.loader.set_epoch(self.epoch, self.batch)
                self.iterator = iter(self.loader)
            try:
                images, labels, _ = next(self.iterator)
                self.batch += 1
                return images, labels
            except StopIteration:
                self.iterator, self.epoch, self.batch = None, self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch, self.iterator = state["epoch"], state["batch"], None


class AllocateTrainer:
    def __init__(self, config: Config, context: DistributedContext):
        self.config, self.context = config, context
        self.method = config.method
        # Dynamic Loss ranks samples by their current loss: it needs no probe.
        if not config.probe.dir and self.method != "dynamic_loss":
            raise ConfigError("probe.dir must name the probe run folder whose curve store this stage reads")
        self.run_dir = Path(config.run.dir)
        self.probe_dir = Path(config.probe.dir) if config.probe.dir else None
        self.splits = build_splits(config.data, config.bias)
        train = self.splits.train
        check_images_exist(train, "train", context)
        check_images_exist(self.splits.test, "test", context)
        store = CurveStore.open(self.probe_dir / CURVE_STORE, mode="r") if self.probe_dir else None
        if store is not None and store.dataset_fingerprint != train.fingerprint():
            raise CurveStoreError(
                f"{store.path} was recorded on another dataset ({store.num_samples} samples, fingerprint "
                f"{store.dataset_fingerprint}) than this config's training set ({len(train)} samples, fingerprint "
                f"{train.fingerprint()}); use the same data and bias settings as the probe run"
            )
        device = context.device
        # Plain and class-balanced CE have no weighting net to meta-learn, so they need no meta set; Dynamic Loss
        # draws its own each epoch, to which `hierarchical_clean` adds this fixed clean set.
        self.meta_table = None
        if self.method == "dynamic_loss":
            if config.meta.source == "hierarchical_clean":
                clean = dataclasses.replace(config.meta, source="carved" if len(self.splits.carved_meta) else "split")
                self.meta_table = select_meta_set(clean, self.splits, store)
        elif self.method not in PLAIN_METHODS:
            self.meta_table = select_meta_set(config.meta, self.splits, store)
        if self.meta_table is not None:
            check_images_exist(self.meta_table, "meta", context)
        # Where true labels are known (synthetic noise, audited samples), the epoch's mean weight of clean and of
        # mislabeled samples is logged: how the weights separate over epochs, not only at the end.
        # Each sample's group: 0 clean, 1 mislabeled, 2 true label unknown (summed apart, not reported).
        true_labels = train.true_labels
        self.audit_group = (torch.from_numpy(np.where(true_labels < 0, 2, true_labels != train.labels)).to(device)
                            if (true_labels >= 0).any() else None)
        self.curves = None
        if self.method == "curvenet":
            features = curve_features(store, config.curvenet.skip_epochs, config.curvenet.normalize_std)
            self.curves = torch.from_numpy(features).to(device)

        self.model = build_model(config, self.splits.num_classes, device)
        dynamic_loss = self.method == "dynamic_loss"
        self.skip_layers = config.dynamic_loss.skip_layers if dynamic_loss else config.slmo.skip_layers
        self.meta_interval = config.dynamic_loss.meta_interval if dynamic_loss else config.meta.interval
        # A clear error, before any training, if skip_layers exceeds the backbone's depth.
        self.model.bottom_part_count(self.skip_layers,
                                     "dynamic_loss.skip_layers" if dynamic_loss else "slmo.skip_layers")
        self.weighting_net = self._build_weighting_net().to(device) if self.method not in PLAIN_METHODS else None
        broadcast_model(self.model)
        if self.weighting_net is not None:
            broadcast_model(self.weighting_net)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.optim.lr, momentum=config.optim.momentum,
                                         weight_decay=config.optim.weight_decay, nesterov=config.optim.nesterov)
        meta_optim = config.dynamic_loss if self.method == "dynamic_loss" else config.meta
        self.weighting_optimizer = (weighting_optimizer(self.weighting_net.parameters(), meta_optim.lr,
                                                        meta_optim.weight_decay)
                                    if self.weighting_net is not None else None)
        self.weight_scale = self._build_weight_scale()
        # CurveNet's weights once it is frozen; class-balanced CE's throughout.
        self.fixed_weights: torch.Tensor | None = None
        # The frozen CurveNet's noise AUROC: its weights no longer change, so it is scored once, not every epoch.
        self.frozen_auroc: dict[str, float] | None = None
        if self.method == "balanced_ce":
            self.fixed_weights = balanced_class_factors(train.class_counts()).float().to(device)[self.train_labels()]
        # Each method's virtual step is its reference code's: CurveNet's follows the classifier's optimizer,
        # Meta-Weight-Net's is a plain SGD step.
        data_parallel = (DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None,
                                                 forward_sync_buffers=False) if context.world_size > 1 else None)
        self.iteration = MetaIteration(self.model, self.weighting_net, self.optimizer, self.weighting_optimizer,
                                       self.skip_layers, config.meta.sync, self.weight_scale,
                                       virtual_rule="sgd" if self.method == "mwnet" else "optimizer",
                                       training_loss=(DynamicLossTraining(self.weighting_net)
                                                      if self.method == "dynamic_loss" else None),
                                       data_parallel=data_parallel)
        # Dynamic Loss's per-sample inputs (rank bucket, sampled prediction) and eval losses of the current epoch,
        # the training rows left after its hierarchical sample, and a resumed run's meta-batch position.
        self.sample_inputs = self.eval_losses = self.train_rows = self.resumed_meta_position = None
        # The last meta epoch's mean meta-gradient norm, for the end-of-run line on weights that never moved.
        self.last_meta_gradient_norm: float | None = None

        loader_arguments = dict(rank=context.rank, world_size=context.world_size, seed=config.run.seed, device=device)
        self.loader_arguments = loader_arguments
        self.train_loader = build_loader(config.data, train, train=True, **loader_arguments)
        self.train_eval_loader = build_loader(config.data, train, train=False, **loader_arguments)
        self.test_loader = build_loader(config.data, self.splits.test, train=False, **loader_arguments)
        self.meta_batches = None
        if self.meta_table is not None and self.method != "dynamic_loss":
            self.meta_batches = MetaBatches(self._meta_loader(self.meta_table))
        self.autocast = autocast_for(config, device)

        self.fingerprint = fingerprint(store.fingerprint if store else train.fingerprint(), config.method,
                                       vars(config.dynamic_loss) if self.method == "dynamic_loss" else None, vars(config.allocate), vars(config.curvenet),
                                       vars(config.meta), self.skip_layers, vars(config.optim), config.run.seed)
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", self.fingerprint, config.run.keep_checkpoints)
        self.stop = StopSignal(device)
        self.progress = Progress(context.is_main, f"allocate {self.method}", config.allocate.epochs)

    def _meta_loader(self, table):
        meta_data = dataclasses.replace(self.config.data, batch_size=self.config.meta.batch_size)
        return build_loader(meta_data, table, train=True, **self.loader_arguments)

    def _build_weighting_net(self) -> torch.nn.Module:
        torch.manual_seed(self.config.run.seed)
        if self.method == "dynamic_loss":
            return DynamicLoss(self.splits.num_classes, self.config.dynamic_loss.buckets, self.config.dynamic_loss.hidden)
        if self.method == "mwnet":
            return MetaWeightNet(self.config.curvenet.mwnet_hidden)
        settings = self.config.curvenet
        return CurveNet(self.curves.shape[1], self.splits.num_classes, settings.embedding_dim,
                        tuple(settings.curve_hidden), tuple(settings.head_hidden))

    def _build_weight_scale(self) -> WeightScale:
        mode = self.config.weight_scale()
        if mode not in FIXED_INPUT_SCALES:
            return WeightScale(mode, self.config.meta.sync)
        train = self.splits.train
        ids = reference_sample(train.labels, self.config.meta.scale_samples, self.config.run.seed,
                               by_class=mode == "class")
        labels = torch.from_numpy(train.labels)[ids].to(self.context.device)
        return WeightScale(mode, self.config.meta.sync, self.curves[ids.to(self.context.device)], labels,
                           train.class_counts())

    def _tags(self) -> dict[str, str]:
        bias = self.config.bias
        tags = {"dataset": self.config.data.source, "noise_type": bias.noise_type, "noise_rate": str(bias.noise_rate),
                "imbalance_factor": str(bias.imbalance_factor), "world_size": str(self.context.world_size),
                "method": self.method, "skip_layers": str(self.skip_layers), "meta_sync": self.config.meta.sync,
                "model": self.config.model.name}
        if self.method not in PLAIN_METHODS:
            tags["meta_source"] = self.config.meta.source
        if self.probe_dir is None:
            return tags
        tags["probe_dir"] = str(self.probe_dir.resolve())
        probe_run_id = self.probe_dir / RUN_ID_FILE
        if probe_run_id.is_file():
            tags["probe_run_id"] = probe_run_id.read_text().strip()
        return tags

    def weighting_frozen(self, epoch: int) -> bool:
        """CurveNet is frozen after the classifier's first LR decay (the paper's Training Method)."""
        milestones = self.config.allocate.milestones
        return bool(milestones) and epoch >= milestones[0]

    def run(self) -> dict:
        config, context = self.config, self.context
        if context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            config.save(self.run_dir / "config.yaml")
        start_epoch, start_batch, wall_before = self._resume()
        barrier()
        tracker = build_tracker(config, self.run_dir, "allocate", self._tags(), context.is_main)
        meta_size = f"{len(self.meta_table)} " if self.meta_table is not None else ""
        steps = len(self.train_loader)
        # How many meta updates the weighting net gets: a small dataset gets few (DESIGN §9, the initial output).
        # Dynamic Loss's epochs draw their own sample and skip the warm-up, so its count is not this product.
        updates = (f" ({self.meta_update_count()} before the freeze)"
                   if self.method != "dynamic_loss" else "")
        meta = (f"meta set {meta_size}({config.meta.source}), skip_layers {self.skip_layers}, a meta update every "
                f"{self.meta_interval} batch(es){updates}, meta.sync {config.meta.sync}, "
                if self.weighting_net is not None else "")
        self.progress.say(f"method {self.method}, {len(self.splits.train)} training samples, {meta}"
                          f"{context.world_size} rank(s) x batch {config.data.batch_size}: {steps} steps an epoch")
        if start_epoch or start_batch:
            self.progress.say(f"resuming at epoch {start_epoch + 1}, batch {start_batch}")
        run_start = time.monotonic()
        report: dict = {}
        for epoch in range(start_epoch, config.allocate.epochs):
            epoch_start = time.monotonic()
            train_metrics = self._train_epoch(epoch, start_batch if epoch == start_epoch else 0,
                                              wall_before + time.monotonic() - run_start)
            report, test_predictions = self._evaluate()
            epoch_s = time.monotonic() - epoch_start
            metrics = {**train_metrics, "test_acc": report["test_acc"], "many_acc": report["many_acc"],
                       "medium_acc": report["medium_acc"], "few_acc": report["few_acc"],
                       "samples_per_s": len(self.splits.train) / epoch_s, "epoch_s": epoch_s}
            if context.is_main:
                metrics.update(self._curvenet_auroc(epoch))
                self.checkpointer.save(self._state(wall_before + time.monotonic() - run_start), epoch + 1)
            tracker.log_metrics(metrics, step=epoch)
            self.progress.end_epoch(epoch, len(self.splits.train),
                                    {k: metrics[k] for k in ("train_loss", "mean_weight", "lr", "test_acc", "noise_auroc")
                                     if k in metrics})
        if not report:
            report, test_predictions = self._evaluate()
        # One pass over the training set (no augmentation) gives the suspects' predictions and MW-Net's losses;
        # it is a collective, so every rank takes part.
        train_predictions, train_losses = predict(self.model, self.train_eval_loader, context.device,
                                                  len(self.splits.train), self.autocast)
        weights = self.final_weights(train_losses)
        wall_s = wall_before + time.monotonic() - run_start
        result = {**report, "method": self.method, "skip_layers": self.skip_layers, "meta_sync": config.meta.sync,
                  "epochs": config.allocate.epochs, "world_size": context.world_size, "wall_s": wall_s,
                  "num_samples": len(self.splits.train), "mlflow_run_id": tracker.run_id}
        if self.method == "dynamic_loss":
            with torch.no_grad():
                result["margins"] = [round(m, 6) for m in self.weighting_net.margins().tolist()]
        if self.weighting_net is not None:
            result["weight_spread"] = weight_spread(weights, self.splits.train.labels)
        if context.is_main:
            result.update(write_allocate_report(self.run_dir, self.splits, weights, train_predictions,
                                                test_predictions, self.method))
            publish_model(self.run_dir, self.model, config, self.splits.class_names, "allocate", tracker)
            write_json(self.run_dir / "metrics.json", result)
            for name in ("config.yaml", "metrics.json", "weights.npy", "suspects.csv", "weights_by_class.png",
                         "confusion_matrix.png"):
                if (self.run_dir / name).exists():
                    tracker.log_artifact(self.run_dir / name)
            tracker.log_metrics({k: v for k, v in result.items() if k in ("noise_auroc", "noise_auroc_raw", "noise_ap", "wall_s")},
                                step=config.allocate.epochs)
            tracker.finish()
            auroc = f", weights' noise AUROC {result['noise_auroc']:.3f}" if "noise_auroc" in result else ""
            self.progress.say(f"done: test accuracy {result['test_acc']:.4f}{auroc}; run folder {self.run_dir}; "
                              f"{tracker.ui_hint or 'MLflow tracking off'}")
            warning = near_chance_warning(result["test_acc"], self.splits.num_classes,
                                          steps * config.allocate.epochs,
                                          "and no weighting can help that")
            if warning:
                self.progress.say(warning)
            if self.weighting_net is not None:
                warning = constant_weights_warning(result["weight_spread"], self.meta_update_count(),
                                                   self.last_meta_gradient_norm)
                if warning:
                    self.progress.say(warning)
        barrier()
        return result

    def meta_update_count(self) -> int:
        """How many meta updates the weighting net gets before its freeze (Dynamic Loss: an upper bound, its
        epochs drawing their own sample)."""
        meta_epochs = sum(not self.weighting_frozen(epoch) for epoch in range(self.config.allocate.epochs))
        return -(-len(self.train_loader) // self.meta_interval) * meta_epochs

    def _train_epoch(self, epoch: int, start_batch: int, wall_s: float) -> dict:
        config, device = self.config, self.context.device
        if self.stop.agreed():
            # Between epochs, after the last one's evaluation and checkpoint: that checkpoint (or the one this run
            # resumed from) holds this position already.
            self._preempt(epoch, start_batch, wall_s, save=False)
        lr = step_lr(config.allocate, config.optim.lr, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        frozen = self.weighting_frozen(epoch)
        warm = self.method == "dynamic_loss" and epoch < config.dynamic_loss.warmup_epochs and not frozen
        train_loader = (self._start_dynamic_epoch(epoch, start_batch, warm or frozen)
                        if self.method == "dynamic_loss" else self.train_loader)
        if self.weighting_net is not None and frozen:
            self.weighting_net.requires_grad_(False)
            if self.method == "curvenet" and self.fixed_weights is None:
                # A frozen CurveNet's weight depends only on the curve and label: compute all of them once.
                self.fixed_weights = self.weight_scale.frozen(self.curvenet_weights(), self.train_labels())
        # A method without a weighting net trains on its fixed weights throughout (plain CE's are None: all 1).
        fixed_weights = self.fixed_weights if frozen or self.weighting_net is None else None
        if warm:
            # The reference's warm-up: plain CE for the classifier (while the corrector learns the given labels, for
            # dynamic_loss.warmup_corrector_steps iterations).
            fixed_weights = torch.ones(len(self.splits.train), device=device)
        train_loader.set_epoch(epoch, start_batch)
        self.progress.start_epoch(epoch, len(train_loader) + start_batch)
        loss_sum = torch.zeros((), device=device)
        weight_sum = torch.zeros((), device=device)
        meta_loss_sum = torch.zeros((), device=device)
        meta_gradient_norm_sum = torch.zeros((), device=device)
        # [clean, mislabeled, unknown] weight sums and sample counts over the epoch.
        group_weight_sums = torch.zeros(3, device=device)
        group_counts = torch.zeros(3, device=device)
        meta_steps = 0
        samples = 0
        self.model.train()
        for batch, (images, labels, ids) in enumerate(train_loader, start=start_batch):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if self.train_rows is not None:
                ids = self.train_rows[ids]
            ids = ids.to(device, non_blocking=True)
            inputs = self.curves[ids] if self.curves is not None else None
            if self.sample_inputs is not None:
                inputs = self.sample_inputs[ids]
            meta_batch = None
            if self.weighting_net is not None and not frozen and not warm and batch % self.meta_interval == 0:
                meta_batch = tuple(t.to(device, non_blocking=True) for t in self.meta_batches.next())
            if warm and epoch * len(self.train_loader) + batch < config.dynamic_loss.warmup_corrector_steps:
                self._warm_up_corrector(inputs[:, 0], labels, torch.exp(-self.eval_losses[ids]))
            with self.autocast():
                result = self.iteration.step(images, labels, inputs, meta_batch,
                                             fixed_weights=None if fixed_weights is None else fixed_weights[ids])
            loss_sum += result.losses.sum()
            weight_sum += result.weights.sum()
            if self.audit_group is not None:
                group = self.audit_group[ids]
                group_weight_sums.index_add_(0, group, result.weights)
                group_counts.index_add_(0, group, torch.ones_like(result.weights))
            if result.meta_loss is not None:
                meta_loss_sum += result.meta_loss
                meta_gradient_norm_sum += result.meta_gradient_norm
                meta_steps += 1
            samples += len(labels)
            self.progress.step(batch, samples)
            # After the last batch the next epoch's start asks instead, once this epoch is evaluated and saved: a
            # run resumed after an epoch's last batch would log no training metrics for that epoch.
            if batch + 1 < len(train_loader) + start_batch and self.stop.agreed():
                self._preempt(epoch, batch + 1, wall_s)
        samples = max(samples, 1)
        metrics = {"train_loss": float(loss_sum) / samples, "mean_weight": float(weight_sum) / samples, "lr": lr}
        if meta_steps:
            metrics["meta_loss"] = float(meta_loss_sum) / meta_steps
            metrics["meta_gradient_norm"] = self.last_meta_gradient_norm = float(meta_gradient_norm_sum) / meta_steps
        if self.audit_group is not None:
            clean, mislabeled, _ = (group_weight_sums / group_counts.clamp_min(1)).tolist()
            metrics.update(weight_clean=clean, weight_mislabeled=mislabeled)
        return metrics

    def _curvenet_auroc(self, epoch: int) -> dict[str, float]:
        """The noise AUROC of CurveNet's current class-relative weights over the samples whose true label is known,
        logged every epoch: how the separation grows (or decays) while CurveNet is meta-learned. Empty for the
        other methods and where no true label is known."""
        if self.method != "curvenet" or self.audit_group is None:
            return {}
        if self.frozen_auroc is not None:
            return self.frozen_auroc
        scores = audited_noise_scores(self.curvenet_weights().cpu().numpy(), self.splits.train)
        auroc = {"noise_auroc": scores["noise_auroc"]} if scores else {}
        if self.weighting_frozen(epoch):
            self.frozen_auroc = auroc
        return auroc

    def _start_dynamic_epoch(self, epoch: int, start_batch: int, train_on_all: bool):
        """Dynamic Loss's epoch inputs from one evaluation pass over the training set: every sample's eval loss,
        rank bucket and sampled prediction, then (unless `train_on_all`: warm-up, or the corrector frozen) the
        hierarchical meta sample, which leaves the epoch's training set. Returns the epoch's train loader."""
        config, device, train = self.config, self.context.device, self.splits.train
        # A run resumed inside an epoch reuses that epoch's pass, so it trains on the same split as before.
        if self.eval_losses is None or start_batch == 0:
            generator = torch.Generator(device).manual_seed(hash((config.run.seed, epoch, self.context.rank)) % 2**32)
            losses, samples = losses_and_samples(self.model, self.train_eval_loader, device, len(train),
                                                 self.autocast, generator)
            self.eval_losses = torch.from_numpy(losses).to(device)
            self.predicted = torch.from_numpy(samples).to(device)
        losses = self.eval_losses.cpu().numpy()
        buckets = rank_buckets(losses, train.labels, config.dynamic_loss.buckets)
        self.sample_inputs = torch.stack([torch.from_numpy(buckets).to(device), self.predicted], dim=1)
        if train_on_all:
            self.train_rows = None
            return self.train_loader
        meta_rows = hierarchical_sample(losses, train.labels, self.splits.num_classes,
                                        config.run.seed, epoch)
        train_rows = np.setdiff1d(train.ids, meta_rows)
        self.train_rows = torch.from_numpy(train_rows)
        meta_table = train.select(meta_rows)
        if self.meta_table is not None:
            meta_table = union(meta_table, self.meta_table)
        self.meta_batches = MetaBatches(self._meta_loader(meta_table))
        # Each epoch's meta set is new; its shuffle starts at the epoch's number, or where a resumed epoch left it.
        self.meta_batches.load_state_dict(self.resumed_meta_position if start_batch else {"epoch": epoch, "batch": 0})
        return build_loader(config.data, train.select(train_rows), train=True, **self.loader_arguments)

    def _warm_up_corrector(self, buckets: torch.Tensor, labels: torch.Tensor, given_probability: torch.Tensor) -> None:
        self.weighting_optimizer.zero_grad(set_to_none=True)
        warmup_corrector_loss(self.weighting_net, buckets, labels, given_probability).backward()
        parameters = [param for param in self.weighting_net.parameters() if param.grad is not None]
        all_reduce_mean_([param.grad for param in parameters])
        self.weighting_optimizer.step()

    def _evaluate(self) -> tuple[dict, np.ndarray]:
        """The accuracy report on the test set, and every test sample's prediction."""
        predictions, _ = predict(self.model, self.test_loader, self.context.device, len(self.splits.test),
                                 self.autocast)
        return accuracy_report(predictions, self.splits.test.labels, self.splits.train.class_counts()), predictions

    def train_labels(self) -> torch.Tensor:
        """Every training sample's given label, indexed by sample id, on the device."""
        return torch.from_numpy(self.splits.train.labels).to(self.context.device)

    @torch.no_grad()
    def curvenet_weights(self) -> torch.Tensor:
        """CurveNet's weight for every training sample, indexed by sample id."""
        return weights_by_chunks(self.weighting_net, self.train_labels(), self.curves)

    @torch.no_grad()
    def final_weights(self, train_losses: np.ndarray) -> np.ndarray:
        """Every training sample's final weight. CurveNet's depends only on the curve and label; Meta-Weight-Net's
        on the sample's loss under the final classifier (`train_losses`, taken without augmentation); Dynamic
        Loss's is the trust weight w of the sample's rank bucket under those losses; plain CE's is 1 and
        class-balanced CE's its class's N / (C n_c)."""
        if self.method == "ce":
            return np.ones(len(train_losses), np.float32)
        if self.method == "balanced_ce":
            return self.fixed_weights.cpu().numpy()
        if self.method == "curvenet":
            return self.curvenet_weights().cpu().numpy()
        device = self.context.device
        if self.method == "dynamic_loss":
            labels = self.splits.train.labels
            buckets = rank_buckets(train_losses, labels, self.config.dynamic_loss.buckets)
            return self.weighting_net.trust(torch.from_numpy(buckets).to(device),
                                            torch.from_numpy(labels).to(device)).cpu().numpy()
        losses = torch.from_numpy(train_losses).to(device)
        return weights_by_chunks(self.weighting_net, self.train_labels(), losses=losses).cpu().numpy()

    def _state(self, wall_s: float) -> dict:
        # The position (epoch, batch) counts batches of this world size and batch size: see _resume.
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "wall_s": wall_s,
                 "world_size": self.context.world_size, "batch_size": self.config.data.batch_size}
        if self.eval_losses is not None:
            state["eval_losses"], state["predicted"] = self.eval_losses, self.predicted
        if self.weighting_net is not None:
            state["meta_batches"] = (self.meta_batches.state_dict() if self.meta_batches is not None
                                     else {"epoch": 0, "batch": 0})
            state["weighting_net"] = self.weighting_net.state_dict()
            state["weighting_optimizer"] = self.weighting_optimizer.state_dict()
        return state

    def _preempt(self, epoch: int, batch: int, wall_s: float, save: bool = True) -> None:
        """Save the position (epoch, batch) with both networks and optimizers (unless the newest checkpoint holds
        it already), then stop."""
        if self.context.is_main and save:
            path = self.checkpointer.save(self._state(wall_s), epoch, batch)
            self.progress.say(f"SIGTERM: saved {path}; the same command resumes at epoch {epoch + 1}, batch {batch}")
        elif self.context.is_main:
            self.progress.say(f"SIGTERM: stopped before epoch {epoch + 1}, batch {batch}; the same command resumes there")
        barrier()
        raise Preempted()

    def _resume(self) -> tuple[int, int, float]:
        """(epoch, batch, wall seconds so far) from the newest checkpoint."""
        loaded = self.checkpointer.load_latest(self.progress.say, map_location=self.context.device)
        if loaded is None:
            return 0, 0, 0.0
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
        if self.weighting_net is not None:
            self.weighting_net.load_state_dict(state["weighting_net"])
            self.weighting_optimizer.load_state_dict(state["weighting_optimizer"])
            self.resumed_meta_position = state["meta_batches"]
            if self.meta_batches is not None:
                self.meta_batches.load_state_dict(self.resumed_meta_position)
        if "eval_losses" in state:
            self.eval_losses, self.predicted = state["eval_losses"], state["predicted"]
        return state["epoch"], state["batch"], state["wall_s"]
