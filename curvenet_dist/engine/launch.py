"""What every entry point in launch/ does: check the config, set up the process group, build the trainer, run it;
`torchrun_command`, the one command line that starts a job of N processes on this machine; and `torchrun_stage`,
which runs a stage under torchrun for the project's own drivers (quickstart, benchmarks).

Exit status of a stage's worker process:
  0    done.
  2    bad input (config, data, curve store, checkpoint, run folder): one `error: ...` line naming the file, key or
       sample, printed once for the job (see `report_error`) and recorded for torchrun's failure summary, which
       shows it as the root cause.
  143  stopped by SIGTERM after saving its position: the same command resumes.
torchrun itself exits 1 whenever a worker fails; `torchrun_stage` turns that back into 2 (with the error line as
the last line printed) or 143 (with the resume hint as the last line).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from curvenet_dist.config import Config, ConfigError, load_config
from curvenet_dist.engine.run_folder import check_run_dir, lock_run_folder_for_job

TRAINERS = {"probe": "curvenet_dist.engine.probe:ProbeTrainer",
            "allocate": "curvenet_dist.engine.allocate:AllocateTrainer"}
USER_ERROR_EXIT_CODE = 2
SPEAKER_GRACE_S = 10.0


def parse_config(argv: list[str], stage: str) -> Config:
    parser = argparse.ArgumentParser(
        prog=f"torchrun --nproc_per_node=N launch/{stage}.py",
        description=f"The {stage} stage of curvenet-dist. Overrides look like data.batch_size=64.",
    )
    parser.add_argument("--config", required=True, help="experiment YAML under configs/")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, applied after the YAML")
    arguments = parser.parse_args(argv)
    return load_config(arguments.config, arguments.overrides)


def error_line(error: BaseException) -> str:
    # A DataLoader worker's error arrives with the worker's traceback folded into its message: its last line is ours.
    return f"error: {str(error).strip().splitlines()[-1]}"


def report_error(line: str, first: bool) -> None:
    """Record `line` where torchrun's summary reads it, and print it once for the job.

    The first process prints at once. Any other prints only if it is still running SPEAKER_GRACE_S later: torchrun
    stops every process when the first one exits, so an error every rank meets is printed once, by the first
    process, even when another rank met it sooner; an error that is this process's alone is still printed."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        # The layout torch.distributed.elastic's ErrorHandler writes; the summary shows py_callstack.
        message = {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}
        # Written whole or not at all: torchrun stops this process at any moment once another has exited, and it
        # reads every failed process's file as JSON; a half-written one crashes its summary.
        partial = Path(f"{error_file}.partial")
        partial.write_text(json.dumps({"message": message}))
        os.replace(partial, error_file)
    if not first:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # torchrun's SIGTERM ends the wait, not a stage's save
        time.sleep(SPEAKER_GRACE_S)
    print(line, file=sys.stderr, flush=True)


def lost_a_peer(error: RuntimeError) -> bool:
    """Whether a collective failed because another process of the job is gone (gloo's and NCCL's errors)."""
    import torch.distributed as dist

    # gloo says "closed" when the peer's socket shut down cleanly, "reset" when its process was gone first.
    return isinstance(error, dist.DistBackendError) or any(
        f"Connection {how} by peer" in str(error) for how in ("closed", "reset"))


def first_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def run_stage(stage: str, argv: list[str]) -> None:
    """Run launch/<stage>.py's work in this process; exits with the status the module docstring lists."""
    try:
        config = parse_config(argv, stage)
        check_run_dir(Path(config.run.dir))
    except ConfigError as error:
        report_error(error_line(error), first=first_process())
        sys.exit(USER_ERROR_EXIT_CODE)
    # Loaded only now: torch, the trainers and MLflow take many seconds to import, a bad key is reported at once.
    from curvenet_dist.engine.distributed import exit_without_finalization

    exit_without_finalization(run_trainer(stage, config))


def run_trainer(stage: str, config: Config) -> int:
    """Build the stage's trainer in this process of the job and run it; returns the exit status."""
    from curvenet_dist.curves.store import CurveStoreError
    from curvenet_dist.data.sample_table import DataError
    from curvenet_dist.engine.checkpoint import CheckpointError
    from curvenet_dist.engine.distributed import setup_distributed, teardown_distributed
    from curvenet_dist.engine.preemption import PREEMPTED_EXIT_CODE, Preempted
    from curvenet_dist.tracking.mlflow_tracker import end_active_run

    module, name = TRAINERS[stage].split(":")
    trainer_class = getattr(importlib.import_module(module), name)
    context = None
    try:
        context = setup_distributed(config.run.device)
        # Rank 0 holds the lock while the file stays open: until this process exits, however it exits.
        run_folder_lock = lock_run_folder_for_job(Path(config.run.dir), context.is_main)  # noqa: F841
        trainer_class(config, context).run()
        return 0
    except (ConfigError, DataError, CurveStoreError, CheckpointError) as error:
        end_active_run("FAILED")
        report_error(error_line(error), first=context.rank == 0 if context is not None else first_process())
        return USER_ERROR_EXIT_CODE
    except Preempted:
        end_active_run("KILLED")
        return PREEMPTED_EXIT_CODE
    except KeyboardInterrupt:
        end_active_run("KILLED")
        raise
    except RuntimeError as error:
        end_active_run("FAILED")
        if context is None or context.world_size == 1 or not lost_a_peer(error):
            raise
        # Another process stopped first, with its own error (the root cause in torchrun's summary); this
        # process's traceback of the broken collective would only bury it.
        print(f"note: rank {context.rank} stopped because another process of the job ended", file=sys.stderr,
              flush=True)
        return 1
    except BaseException:
        end_active_run("FAILED")
        raise
    finally:
        teardown_distributed()


def recorded_error(error_file: Path) -> str | None:
    """The `error: ...` line a failed torchrun recorded (its root-cause worker's), if the failure was bad input."""
    try:
        message = json.loads(error_file.read_text())["message"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    line = message.get("message", "") if isinstance(message, dict) else message
    return line if isinstance(line, str) and line.startswith("error: ") else None


def torchrun_command(nproc: int, script: str | Path, arguments: Sequence[str] = (),
                     torchrun_options: Sequence[str] = ()) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc_per_node=N [torchrun_options] script arguments`: a job of
    `nproc` processes on this machine, torchrun and workers under this interpreter. `torchrun_options` are torchrun's
    own flags, e.g. --max-restarts=1, or --module to run `script` as a module."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            *torchrun_options, str(script), *arguments]


def torchrun_stage(nproc: int, stage: str, arguments: list[str], quiet: bool = False) -> None:
    """Run launch/<stage>.py under torchrun in a child process, as a user would. On failure, exit with the stage's
    error line (status 2), the resume hint after SIGTERM (143), or the status and a hint otherwise; the line
    is the last thing printed."""
    try:
        # Checked here first: a bad key stops the driver at once instead of after torchrun's start-up.
        check_run_dir(Path(parse_config(arguments, stage).run.dir))
    except ConfigError as error:
        print(error_line(error), file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT_CODE)
    command = torchrun_command(nproc, Path(__file__).resolve().parents[2] / "launch" / f"{stage}.py", arguments)
    if not quiet:
        print(f"$ {' '.join(command)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="torchrun-") as folder:
        error_file = Path(folder) / "error.json"
        # torchrun gets its own session, so a signal reaches it once, from here: a second SIGTERM would cut short
        # its wait for the workers to save.
        process = subprocess.Popen(command, env={**os.environ, "TORCHELASTIC_ERROR_FILE": str(error_file)},
                                   start_new_session=True, text=True,
                                   stdout=subprocess.PIPE if quiet else None, stderr=subprocess.PIPE if quiet else None)
        signalled = []

        def forward(signum, frame) -> None:
            if not signalled:
                # SIGTERM for Ctrl-C too: the workers save their position on SIGTERM.
                process.send_signal(signal.SIGTERM)
            signalled.append(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            _, stderr = process.communicate()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if process.returncode == 0:
            return
        exit_after_failure(stage, process.returncode, recorded_error(error_file), stderr if quiet else None,
                           signalled[0] if signalled else None)


def exit_after_failure(stage: str, returncode: int, line: str | None, stderr: str | None, signum: int | None) -> None:
    """Exit as a failed torchrun of `stage` asks, its last line printed: the resume hint after a signal (143), the
    stage's recorded error line (2), else the status with a hint; `stderr` (a quiet run's) is shown first when
    there is no error line to tell what went wrong."""
    from curvenet_dist.engine.preemption import PREEMPTED_EXIT_CODE

    if stderr and line is None:
        print(stderr[-3000:], file=sys.stderr)
    if signum is not None:
        print(f"{stage} stopped by {signal.Signals(signum).name} after saving; rerun the same command to resume",
              file=sys.stderr, flush=True)
        sys.exit(PREEMPTED_EXIT_CODE)
    if line is not None:
        print(line, file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT_CODE)
    print(f"error: {stage} failed (torchrun exit {returncode}); rerun the same command to resume",
          file=sys.stderr, flush=True)
    sys.exit(1)
