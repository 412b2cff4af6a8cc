"""MLflow tracking, used by rank 0 only; other ranks get a tracker that does nothing.

The run id is kept in the run folder, so a resumed stage logs into the same MLflow run, and epochs that were
already logged before a crash are not logged twice. A run that stops on an error ends FAILED, one stopped by
SIGTERM ends KILLED (and is RUNNING again when it resumes).

MLflow is imported when a tracker is made: it takes seconds, and runs without tracking never need it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from curvenet_dist.config import Config

RUN_ID_FILE = "mlflow_run_id"


def default_tracking_uri(run_dir: Path) -> str:
    """$MLFLOW_TRACKING_URI, else an SQLite store beside the run folder, shared by the runs next to it."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir.parent / 'mlflow.db').resolve()}"


class Tracker:
    """The tracking interface the trainers use."""

    run_id: str | None = None
    ui_hint: str = ""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: Path) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


_active: Tracker | None = None
"""The run this process logs to until it finishes: a process runs one stage, so one run at a time."""


def end_active_run(status: str) -> None:
    """Mark the run this process was logging to, if it did not finish, as `status` (FAILED or KILLED)."""
    if _active is None:
        return
    try:
        _active.finish(status)
    except Exception as error:  # the tracking server may be what failed; the stage's own error matters more
        print(f"note: could not mark MLflow run {_active.run_id} {status}: {error}", file=sys.stderr, flush=True)


def log_to_active_run(path: Path) -> None:
    """Log `path` as an artifact of the run this process logs to, if any (for outputs written below the trainer)."""
    if _active is not None:
        _active.log_artifact(path)


class MlflowTracker(Tracker):
    def __init__(self, config: Config, run_dir: Path, stage: str, tags: dict[str, str]):
        global _active
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.uri = config.tracking.uri or default_tracking_uri(run_dir)
        self.client = MlflowClient(tracking_uri=self.uri)
        experiment = self.client.get_experiment_by_name(config.tracking.experiment)
        if experiment is None:
            # A local store keeps artifacts beside itself; a server decides its own artifact location.
            local = self.uri.startswith("sqlite:") or self.uri.startswith("file:")
            location = (run_dir.parent / "mlartifacts").resolve().as_uri() if local else None
            experiment_id = self.client.create_experiment(config.tracking.experiment, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
        id_file = run_dir / RUN_ID_FILE
        self.logged_steps: dict[str, set[int]] = {}
        if id_file.is_file():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            for key in self.client.get_run(self.run_id).data.metrics:
                self.logged_steps[key] = {m.step for m in self.client.get_metric_history(self.run_id, key)}
        else:
            run = self.client.create_run(experiment_id, run_name=run_dir.name, tags={"stage": stage, **tags})
            self.run_id = run.info.run_id
            params = [Param(key, str(value)) for key, value in config.flat().items()]
            for start in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[start : start + 100])
            id_file.write_text(self.run_id)
        self.ui_hint = f"MLflow run {self.run_id} in experiment '{config.tracking.experiment}' at {self.uri}"
        _active = self

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        fresh = [Metric(key, float(value), 0, step) for key, value in metrics.items()
                 if step not in self.logged_steps.get(key, set())]
        if fresh:
            self.client.log_batch(self.run_id, metrics=fresh)

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def finish(self, status: str = "FINISHED") -> None:
        global _active
        self.client.set_terminated(self.run_id, status=status)
        if _active is self:
            _active = None


def build_tracker(config: Config, run_dir: Path, stage: str, tags: dict[str, str], is_main: bool) -> Tracker:
    if is_main and config.tracking.enabled:
        return MlflowTracker(config, run_dir, stage, tags)
    return Tracker()
