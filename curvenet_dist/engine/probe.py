"""The probe stage: plain CE under a cyclical LR, every sample's training loss and logit margin recorded every
epoch."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from curvenet_dist.config import Config
from curvenet_dist.curves.gather import all_gather_concat, gather_by_id
from curvenet_dist.curves.store import CurveStore, describe_damage
from curvenet_dist.data.bias import noise_rate_by_class
from curvenet_dist.data.datasets import build_splits
from curvenet_dist.data.loader import build_loader
from curvenet_dist.engine.checkpoint import Checkpointer
from curvenet_dist.engine.components import (
    autocast_for, build_model, check_images_exist, probe_fingerprint, write_json,
)
from curvenet_dist.engine.distributed import DistributedContext, barrier
from curvenet_dist.engine.evaluate import accuracy_report, near_chance_warning, predict
from curvenet_dist.engine.lr_schedule import probe_lr
from curvenet_dist.engine.model_file import publish_model
from curvenet_dist.engine.preemption import Preempted, StopSignal
from curvenet_dist.engine.progress import Progress
from curvenet_dist.engine.stage import Position, run_stage
from curvenet_dist.tracking.mlflow_tracker import Tracker
from curvenet_dist.tracking.plots import plot_loss_curves

CURVE_STORE = "curves.zarr"


def logit_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each sample's logit of its given label minus its largest other logit (AUM's margin, Pleiss et al. 2020)."""
    given = logits.gather(1, labels[:, None]).squeeze(1)
    return given - logits.scatter(1, labels[:, None], float("-inf")).amax(1)


class ProbeTrainer:
    name = "probe"
    shown = ("train_loss", "lr", "test_acc")
    # Mid-probe accuracy swings with the cyclical LR and nothing reads it; on small sets a test pass costs over half
    # an epoch (DESIGN §8).
    evaluates_every_epoch = False

    def __init__(self, config: Config, context: DistributedContext):
        self.config, self.context = config, context
        self.run_dir = Path(config.run.dir)
        self.epochs = config.probe.epochs
        self.splits = build_splits(config.data, config.bias)
        self.train_table = self.splits.train
        self.num_samples = len(self.train_table)
        check_images_exist(self.train_table, "train", context)
        check_images_exist(self.splits.test, "test", context)
        self.fingerprint = probe_fingerprint(config, self.train_table)
        self.store_path = self.run_dir / CURVE_STORE
        # Every rank checks, so a store from another run stops all of them with the same message.
        CurveStore.check_belongs(self.store_path, self.fingerprint)
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", self.fingerprint, config.run.keep_checkpoints)

        device = context.device
        self.model = build_model(config, self.splits.num_classes, device)
        self.ddp_model = (DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
                          if context.world_size > 1 else self.model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.optim.lr, momentum=config.optim.momentum,
                                         weight_decay=config.optim.weight_decay, nesterov=config.optim.nesterov)
        loader_arguments = dict(rank=context.rank, world_size=context.world_size, seed=config.run.seed, device=device)
        self.train_loader = build_loader(config.data, self.train_table, train=True, **loader_arguments)
        self.test_loader = build_loader(config.data, self.splits.test, train=False, **loader_arguments)
        self.autocast = autocast_for(config, device)
        self.stop = StopSignal(device)
        self.progress = Progress(context.is_main, "probe", config.probe.epochs)
        # Rank 0's curve store, once the run folder is open; a resumed epoch's recordings before the interruption.
        self.store: CurveStore | None = None
        self.partial: dict | None = None

    def tags(self) -> dict[str, str]:
        bias = self.config.bias
        return {"dataset": self.config.data.source, "noise_type": bias.noise_type, "noise_rate": str(bias.noise_rate),
                "imbalance_factor": str(bias.imbalance_factor), "world_size": str(self.context.world_size),
                "method": "probe", "model": self.config.model.name}

    def open_run_folder(self) -> None:
        self.store = self.open_store()

    def open_store(self) -> CurveStore | None:
        """Rank 0 writes the run folder and the curve store; other ranks only compute."""
        if not self.context.is_main:
            return None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config.save(self.run_dir / "config.yaml")
        return CurveStore.open_or_create(self.store_path, fingerprint=self.fingerprint,
                                         dataset_fingerprint=self.train_table.fingerprint(), labels=self.train_table.labels,
                                         true_labels=self.train_table.true_labels, num_epochs=self.config.probe.epochs,
                                         with_margins=True)

    def train_and_record_epoch(self, epoch: int, store: CurveStore | None, start_batch: int = 0,
                               partial: dict | None = None, wall_s: float = 0.0,
                               record: bool = True) -> tuple[float, float]:
        """One probe epoch, recorded as column `epoch` of the curve store. Returns (mean loss, last LR); rank 0's
        mean loss is the recorded column's. `record=False` trains the epoch without keeping, gathering or writing
        the per-sample losses and margins: what bench curve_overhead compares against."""
        ids, recorded, mean_loss, lr = self._train_epoch(epoch, start_batch, partial, wall_s, record)
        if record:
            # Only rank 0, which holds the store (and logs), receives the epoch's losses and margins, in one gather.
            epoch_recorded = gather_by_id(ids, recorded, len(self.train_table), dst=0)
            if store is not None:
                epoch_losses, epoch_margins = epoch_recorded[:, 0], epoch_recorded[:, 1]
                # Includes the part of the epoch trained before a pre-emption, which the running sum does not.
                mean_loss = float(epoch_losses.mean())
                store.write_epoch(epoch, epoch_losses, lr, epoch_margins)
        return mean_loss, lr

    def evaluate(self) -> dict:
        predictions, _ = predict(self.ddp_model, self.test_loader, self.context.device, len(self.splits.test), self.autocast)
        return accuracy_report(predictions, self.splits.test.labels, self.train_table.class_counts())

    def run(self) -> dict:
        return run_stage(self)

    def opening_line(self) -> str:
        steps, config = len(self.train_loader), self.config
        return (f"{len(self.train_table)} training samples, {self.splits.num_classes} classes, "
                f"{self.context.world_size} rank(s) x batch {config.data.batch_size}: {steps} steps an epoch, "
                f"{steps * config.probe.epochs} in all; device {self.context.device}; run folder {self.run_dir}")

    def train_epoch(self, epoch: int, start_batch: int, wall_s: float) -> dict[str, float]:
        # The recordings of a resumed epoch's first part belong to the first epoch this run trains only.
        partial, self.partial = self.partial, None
        mean_loss, lr = self.train_and_record_epoch(epoch, self.store, start_batch, partial, wall_s)
        return {"train_loss": mean_loss, "lr": lr}

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        return {}

    def state(self, wall_s: float) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "partial": None,
                "wall_s": wall_s}

    def finish(self, tracker: Tracker, report: dict, elapsed: Callable[[], float]) -> dict:
        config = self.config
        result = {**report, "epochs": config.probe.epochs, "world_size": self.context.world_size,
                  "wall_s": elapsed(), "num_samples": len(self.train_table),
                  "curve_store": str(self.store_path.resolve()), "mlflow_run_id": tracker.run_id}
        if (self.train_table.true_labels >= 0).any():
            # NaN (no known true label in the class) becomes None: JSON has no NaN.
            result["noise_rate_by_class"] = [None if rate != rate else float(rate)
                                             for rate in noise_rate_by_class(self.train_table)]
        if self.context.is_main:
            publish_model(self.run_dir, self.model, config, self.splits.class_names, "probe", tracker)
            self._finish(tracker, result)
            steps = len(self.train_loader) * config.probe.epochs
            warning = near_chance_warning(result["test_acc"], self.splits.num_classes, steps,
                                          "so its loss curves cannot tell mislabeled samples from clean ones")
            if warning:
                self.progress.say(warning)
        return result

    def _train_epoch(self, epoch: int, start_batch: int, partial: dict | None, wall_s: float, record: bool):
        config, device = self.config, self.context.device
        self.train_loader.set_epoch(epoch, start_batch)
        batches = len(self.train_loader) + start_batch
        ids_seen = [partial["ids"].to(device)] if partial else []
        recorded_seen = [partial["recorded"].to(device)] if partial else []
        loss_sum = torch.zeros((), device=device)
        samples = 0
        self.progress.start_epoch(epoch, batches)
        self.ddp_model.train()
        lr = probe_lr(config.probe, config.optim.lr, epoch)
        for batch, (images, labels, ids) in enumerate(self.train_loader, start=start_batch):
            lr = probe_lr(config.probe, config.optim.lr, epoch + batch / batches)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with self.autocast():
                logits = self.ddp_model(images)
            if record:
                per_sample = F.cross_entropy(logits.float(), labels, reduction="none")
                loss = per_sample.mean()
                ids_seen.append(ids.to(device, non_blocking=True))
                margin = logit_margin(logits.detach().float(), labels)
                recorded_seen.append(torch.stack([per_sample.detach(), margin], 1))
            else:
                loss = F.cross_entropy(logits.float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach() * len(labels)
            samples += len(labels)
            self.progress.step(batch, samples)
            # After the last batch too, before the epoch is recorded: the next start records it from the checkpoint.
            if self.stop.agreed():
                self._preempt(epoch, batch + 1, ids_seen, recorded_seen, wall_s)
        mean_loss = float(all_gather_concat(loss_sum.reshape(1)).sum() / max(1, samples * self.context.world_size))
        return *self._recordings(ids_seen, recorded_seen), mean_loss, lr

    def _recordings(self, ids_seen: list, recorded_seen: list) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's ids [n] and (loss, margin) rows [n, 2] of the epoch so far (empty when nothing was
        recorded)."""
        if not ids_seen:
            device = self.context.device
            return torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, 2, device=device)
        return torch.cat(ids_seen), torch.cat(recorded_seen)

    def _preempt(self, epoch: int, batch: int, ids_seen: list, recorded_seen: list, wall_s: float) -> None:
        """Save the position inside the epoch, with every rank's recordings so far, then stop."""
        ids, recorded = self._recordings(ids_seen, recorded_seen)
        # Every rank is at the same batch, so the recordings have the same length and can be all-gathered.
        partial = {"ids": all_gather_concat(ids).cpu(), "recorded": all_gather_concat(recorded).cpu(),
                   "world_size": self.context.world_size}
        if self.context.is_main:
            path = self.checkpointer.save({**self.state(wall_s), "partial": partial}, epoch, batch)
            self.progress.say(f"SIGTERM: saved {path}; the same command resumes at epoch {epoch + 1}, batch {batch}")
        barrier()
        raise Preempted()

    def resume(self) -> Position:
        """The newest checkpoint's position, not past an epoch the curve store lacks (rank 0's store), with this
        rank's share of the interrupted epoch's recordings; the store forgets every epoch from there on."""
        self.partial = None
        if self.store is not None:
            self._remove_checkpoints_past_the_store(self.store)
        barrier()
        loaded = self.checkpointer.load_latest(self.progress.say, map_location=self.context.device)
        position = Position()
        if loaded is not None:
            _, state = loaded
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            position = Position(state["epoch"], state["batch"], state["wall_s"])
            self.partial = self._my_share(state["partial"], position)
        if self.store is not None:
            self.store.discard_from(position.epoch)
        return position

    def _my_share(self, partial: dict | None, position: Position) -> dict | None:
        if partial is None:
            return None
        if partial["world_size"] != self.context.world_size:
            # The epoch's sharding depends on the world size: replay the interrupted epoch from its start.
            self.progress.say(f"world size changed ({partial['world_size']} -> {self.context.world_size}): "
                              f"epoch {position.epoch + 1} restarts from its first batch")
            position.batch = 0
            return None
        if "recorded" not in partial:
            # Saved before the probe recorded margins: the epoch's first part has losses only.
            self.progress.say(f"the checkpoint holds no margins of epoch {position.epoch + 1}'s first batches: it "
                              f"restarts from its first batch")
            position.batch = 0
            return None
        share = len(partial["ids"]) // self.context.world_size
        rows = slice(self.context.rank * share, (self.context.rank + 1) * share)
        return {"ids": partial["ids"][rows], "recorded": partial["recorded"][rows]}

    def _remove_checkpoints_past_the_store(self, store: CurveStore) -> None:
        """Remove the checkpoints past the first epoch the store does not hold whole (naming its damaged complete
        epochs): training resumes from the newest one left, or from the start, so that epoch and every later one
        are recorded again, each once."""
        complete = store.complete_epochs().tolist()
        damage = store.damage(complete)
        first = min((set(range(store.num_epochs)) - set(complete)) | set(damage), default=store.num_epochs)
        # A checkpoint's files are named step-<epoch>-<batch>...: the position training resumes at.
        past = [path for path in self.checkpointer.folder.glob("step-*") if int(path.name.split("-")[1]) > first]
        for path in past:
            path.unlink()
        if damage or past:
            reason = describe_damage(damage) if damage else f"probe epoch {first + 1} is not recorded"
            self.progress.say(f"{store.path}: {reason}; the probe records epoch {first + 1} and every later one "
                              f"again, from the newest checkpoint before it (the start if none)")

    def _finish(self, tracker, result: dict) -> None:
        write_json(self.run_dir / "metrics.json", result)
        tracker.log_metrics({"wall_s": result["wall_s"]}, step=self.config.probe.epochs)
        tracker.log_artifact(self.run_dir / "config.yaml")
        tracker.log_artifact(self.run_dir / "metrics.json")
        store = CurveStore.open(self.store_path, mode="r")
        if len(store.complete_epochs()) == store.num_epochs:
            figure = plot_loss_curves(store.loss[:], store.labels, store.true_labels, self.run_dir / "loss_curves.png")
            if figure is not None:
                tracker.log_artifact(figure)
        tracker.finish()
        self.progress.say(f"done: test accuracy {result['test_acc']:.4f}; curve store {result['curve_store']}; "
                          f"{tracker.ui_hint or 'MLflow tracking off'}")
