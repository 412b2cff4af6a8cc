"""MLflow tracking, used by rank 0 only; other ranks get a tracker that does nothing.

Tracking never stops or stalls training. A store that cannot be reached or read when the stage starts (a server
that is down is found within seconds), or a logging call that fails later, turns tracking off for the rest of the
stage with one line, and training goes on.

The run id is kept in the run folder, so a resumed stage logs into the same MLflow run, and epochs that were
already logged before a crash are not logged twice; a run folder moved away from the store its run is in logs to a
new run, saying so. A run that stops on an error ends FAILED, one stopped by SIGTERM ends KILLED (and is RUNNING
again when it resumes).

MLflow is imported when a tracker is made: it takes seconds, and runs without tracking never need it.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from curvenet_dist.config import Config

RUN_ID_FILE = "mlflow_run_id"
# MLflow's defaults retry an unreachable server for minutes (7 retries, 120 s per request): a logging call would
# stall training that long. The user's own settings of these variables win.
HTTP_REQUEST_LIMITS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
CONNECT_TIMEOUT_S = 3


def default_tracking_uri(run_dir: Path) -> str:
    """$MLFLOW_TRACKING_URI, else an SQLite store beside the run folder, shared by the runs next to it."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir.parent / 'mlflow.db').resolve()}"


def tracking_uri(config: Config, run_dir: Path) -> str:
    return config.tracking.uri or default_tracking_uri(run_dir)


def limit_http_requests() -> None:
    for key, value in HTTP_REQUEST_LIMITS.items():
        os.environ.setdefault(key, value)


def check_server_reachable(uri: str) -> None:
    """Raise OSError within seconds if `uri` is a server nothing answers at (down, unknown host, no route)."""
    url = urlparse(uri)
    if url.scheme not in ("http", "https"):
        return
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        raise OSError(f"cannot connect to {url.hostname}:{port} ({error.strerror or error})") from None


def first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def say_tracking_off(reason: str) -> None:
    print(f"note: MLflow tracking off for the rest of this stage: {reason}; training goes on", file=sys.stderr,
          flush=True)


class Tracker:
    """The tracking interface the trainers use."""

    run_id: str | None = None
    ui_hint: str = ""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: Path) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_model(self, model, input_example) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


_active: Tracker | None = None
"""The run this process logs to until it finishes: a process runs one stage, so one run at a time."""


def end_active_run(status: str) -> None:
    """Mark the run this process was logging to, if it did not finish, as `status` (FAILED or KILLED)."""
    if _active is not None:
        _active.finish(status)


def log_to_active_run(path: Path) -> None:
    """Log `path` as an artifact of the run this process logs to, if any (for outputs written below the trainer)."""
    if _active is not None:
        _active.log_artifact(path)


class MlflowTracker(Tracker):
    """Logs to one MLflow run. A call that fails turns it off: it says so once and does nothing from then on."""

    def __init__(self, config: Config, run_dir: Path, stage: str, tags: dict[str, str]):
        global _active
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(config, run_dir)
        limit_http_requests()
        check_server_reachable(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.logged_steps: dict[str, set[int]] = {}
        id_file = run_dir / RUN_ID_FILE
        self.run_id = self._resume_run(id_file) if id_file.is_file() else None
        if self.run_id is None:
            self.run_id = self._start_run(config, run_dir, stage, tags)
            id_file.write_text(self.run_id)
        self.off = False
        self.ui_hint = f"MLflow run {self.run_id} in experiment '{config.tracking.experiment}' at {self.uri}"
        _active = self

    def _experiment_id(self, name: str, run_dir: Path) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        # A local store keeps artifacts beside itself; a server decides its own artifact location.
        local = self.uri.startswith("sqlite:") or self.uri.startswith("file:")
        location = (run_dir.parent / "mlartifacts").resolve().as_uri() if local else None
        return self.client.create_experiment(name, artifact_location=location)

    def _start_run(self, config: Config, run_dir: Path, stage: str, tags: dict[str, str]) -> str:
        from mlflow.entities import Param

        experiment_id = self._experiment_id(config.tracking.experiment, run_dir)
        run_id = self.client.create_run(experiment_id, run_name=run_dir.name, tags={"stage": stage, **tags}).info.run_id
        params = [Param(key, str(value)) for key, value in config.flat().items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[start : start + 100])
        return run_id

    def _resume_run(self, id_file: Path) -> str | None:
        """The run `id_file` names, RUNNING again with its logged steps known; None if the store does not hold it."""
        from mlflow.exceptions import MlflowException

        run_id = id_file.read_text().strip()
        try:
            run = self.client.get_run(run_id)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            print(f"note: MLflow run {run_id} named in {id_file} is not in {self.uri} (was the run folder moved?); "
                  f"this stage logs to a new run", file=sys.stderr, flush=True)
            return None
        self.client.update_run(run_id, status="RUNNING")
        for key in run.data.metrics:
            self.logged_steps[key] = {m.step for m in self.client.get_metric_history(run_id, key)}
        return run_id

    def _call(self, what: str, call, *arguments, **keywords) -> None:
        if self.off:
            return
        try:
            call(*arguments, **keywords)
        except Exception as error:  # whatever fails in tracking, training goes on
            self.off, self.ui_hint = True, ""
            say_tracking_off(f"{what} failed at {self.uri}: {first_line(error)}")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        fresh = [Metric(key, float(value), 0, step) for key, value in metrics.items()
                 if step not in self.logged_steps.get(key, set())]
        if fresh:
            self._call("logging metrics", self.client.log_batch, self.run_id, metrics=fresh)

    def log_artifact(self, path: Path) -> None:
        self._call(f"logging {path.name}", self.client.log_artifact, self.run_id, str(path))

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._call("setting tags", self.client.log_batch, self.run_id,
                   tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def log_model(self, model, input_example) -> None:
        """Log `model` (a torch module on the CPU) as this run's MLflow model, exported with torch.export so that
        MLflow's own tools load and serve it without this project's code, and tag the run with its URI
        (`model_uri`); `input_example` (a numpy batch) gives its signature. A failure loses only the MLflow copy:
        one line, and the stage goes on."""
        if self.off:
            return
        import mlflow
        import mlflow.pytorch

        exported = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)
        try:
            # MLflow files a logged model under the process's current experiment, not its run's.
            mlflow.set_experiment(experiment_id=self.client.get_run(self.run_id).info.experiment_id)
            # Requirements given, not inferred: inferring them loads the model again in a subprocess (seconds).
            logged = mlflow.pytorch.log_model(model, name="model", run_id=self.run_id, input_example=input_example,
                                              serialization_format="pt2",
                                              pip_requirements=mlflow.pytorch.get_default_pip_requirements())
            # The URI (models:/<id>) that `mlflow models serve -m` and mlflow.pyfunc.load_model take.
            self.client.set_tag(self.run_id, "model_uri", logged.model_uri)
        except Exception as error:  # whatever fails here, the run folder has the model and the stage goes on
            print(f"note: the model was not logged to MLflow run {self.run_id}: {first_line(error)}; the run "
                  f"folder's model.safetensors holds it", file=sys.stderr, flush=True)
        finally:
            # set_tracking_uri also exports the URI to the environment, where every later tracker in this process
            # and every child process would take it for the user's choice.
            if exported is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = exported

    def finish(self, status: str = "FINISHED") -> None:
        global _active
        self._call(f"marking the run {status}", self.client.set_terminated, self.run_id, status=status)
        if _active is self:
            _active = None


def build_tracker(config: Config, run_dir: Path, stage: str, tags: dict[str, str], is_main: bool) -> Tracker:
    if not (is_main and config.tracking.enabled):
        return Tracker()
    try:
        return MlflowTracker(config, run_dir, stage, tags)
    except Exception as error:  # whatever fails in tracking, training goes on
        say_tracking_off(f"cannot use the MLflow store at {tracking_uri(config, run_dir)}: {first_line(error)}")
        return Tracker()
