"""The skeleton both stages share: resume, the epoch loop with its evaluation, checkpoint, tracking and progress
line, then the stage's own finish. A stage supplies what differs (engine/probe.py, engine/allocate.py)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from curvenet_dist.config import Config
from curvenet_dist.engine.checkpoint import Checkpointer
from curvenet_dist.engine.distributed import DistributedContext, barrier
from curvenet_dist.engine.progress import Progress
from curvenet_dist.tracking.mlflow_tracker import Tracker, build_tracker

ACCURACY_KEYS = ("test_acc", "many_acc", "medium_acc", "few_acc")


@dataclass
class Position:
    """Where a stage resumes: before batch `batch` of epoch `epoch`, after `wall_s` seconds of earlier runs."""
    epoch: int = 0
    batch: int = 0
    wall_s: float = 0.0


class Stage(Protocol):
    name: str
    config: Config
    context: DistributedContext
    run_dir: Path
    epochs: int
    num_samples: int
    checkpointer: Checkpointer
    progress: Progress
    shown: tuple[str, ...]
    """The metrics of each epoch's progress line."""
    evaluates_every_epoch: bool
    """Whether the test set is evaluated after every epoch, or after the last one only."""

    def open_run_folder(self) -> None:
        """Rank 0 creates the run folder (and whatever else the stage keeps there) before resuming."""

    def resume(self) -> Position: ...

    def tags(self) -> dict[str, str]: ...

    def opening_line(self) -> str: ...

    def train_epoch(self, epoch: int, start_batch: int, wall_s: float) -> dict[str, float]: ...

    def evaluate(self) -> dict: ...

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        """Rank 0's extra figures of the epoch, after its evaluation."""

    def state(self, wall_s: float) -> dict: ...

    def finish(self, tracker: Tracker, report: dict, elapsed: Callable[[], float]) -> dict:
        """The stage's outputs from the last evaluation's `report`; `elapsed()` is the stage's wall time so far."""


def run_stage(stage: Stage) -> dict:
    """Runs `stage` from where its checkpoints left it to its last epoch, then its finish; returns its result."""
    context = stage.context
    stage.open_run_folder()
    position = stage.resume()
    barrier()
    tracker = build_tracker(stage.config, stage.run_dir, stage.name, stage.tags(), context.is_main)
    stage.progress.say(stage.opening_line())
    if position.epoch or position.batch:
        stage.progress.say(f"resuming at epoch {position.epoch + 1}, batch {position.batch}")
    run_start = time.monotonic()

    def wall_s() -> float:
        return position.wall_s + time.monotonic() - run_start

    report: dict = {}
    for epoch in range(position.epoch, stage.epochs):
        epoch_start = time.monotonic()
        metrics = stage.train_epoch(epoch, position.batch if epoch == position.epoch else 0, wall_s())
        if stage.evaluates_every_epoch or epoch == stage.epochs - 1:
            report = stage.evaluate()
            metrics.update({key: report[key] for key in ACCURACY_KEYS})
        epoch_s = time.monotonic() - epoch_start
        metrics.update(samples_per_s=stage.num_samples / epoch_s, epoch_s=epoch_s)
        if context.is_main:
            metrics.update(stage.epoch_metrics(epoch))
            # Logged before the checkpoint that marks the epoch done: a crash between the two reruns the epoch,
            # whose metrics the resumed tracker knows it holds; the other order would lose them.
            tracker.log_metrics(metrics, step=epoch)
            stage.checkpointer.save(stage.state(wall_s()), epoch + 1)
        stage.progress.end_epoch(epoch, stage.num_samples, {key: metrics[key] for key in stage.shown if key in metrics})
    result = stage.finish(tracker, report or stage.evaluate(), wall_s)
    barrier()
    return result
