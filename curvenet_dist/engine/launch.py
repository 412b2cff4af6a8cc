"""What every entry point in launch/ does: parse, set up the process group, build the trainer, run it.

Bad input stops with one line naming the file, key or sample instead of a traceback.
"""
from __future__ import annotations

import argparse
import sys

from curvenet_dist.config import Config, ConfigError, load_config
from curvenet_dist.curves.store import CurveStoreError
from curvenet_dist.data.sample_table import DataError
from curvenet_dist.engine.checkpoint import CheckpointError
from curvenet_dist.engine.distributed import setup_distributed, teardown_distributed
from curvenet_dist.engine.preemption import PREEMPTED_EXIT_CODE, Preempted

USER_ERRORS = (ConfigError, DataError, CurveStoreError, CheckpointError)


def parse_config(argv: list[str], stage: str) -> Config:
    parser = argparse.ArgumentParser(
        prog=f"torchrun --nproc_per_node=N launch/{stage}.py",
        description=f"The {stage} stage of curvenet-dist. Overrides look like data.batch_size=64.",
    )
    parser.add_argument("--config", required=True, help="experiment YAML under configs/")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, applied after the YAML")
    arguments = parser.parse_args(argv)
    return load_config(arguments.config, arguments.overrides)


def run_stage(trainer_class, argv: list[str], stage: str) -> None:
    context = None
    try:
        config = parse_config(argv, stage)
        context = setup_distributed(config.run.device)
        trainer_class(config, context).run()
    except USER_ERRORS as error:
        if context is None or context.rank == 0 or isinstance(error, DataError):
            # A DataLoader worker's error arrives with the worker's traceback folded into its message.
            print(f"error: {str(error).strip().splitlines()[-1]}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Preempted:
        sys.exit(PREEMPTED_EXIT_CODE)
    finally:
        teardown_distributed()


def torchrun_stage(nproc: int, stage: str, arguments: list[str], quiet: bool = False) -> None:
    """Run launch/<stage>.py under torchrun in a child process, as a user would; exit with a hint on failure."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "launch" / f"{stage}.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(script), *arguments]
    if not quiet:
        print(f"$ {' '.join(command)}", flush=True)
    result = subprocess.run(command, capture_output=quiet, text=True)
    if result.returncode != 0:
        sys.exit(f"{stage} failed (exit {result.returncode}); rerun the same command to resume"
                 + (f"\n{result.stderr[-3000:]}" if quiet else ""))
