"""What recording loss curves costs a probe epoch.

The benchmark re-launches itself under torchrun (2 gloo ranks by default, as the quickstart runs), builds one
ProbeTrainer, and alternates epochs with and without recording (the per-sample losses kept in the step, the
once-per-epoch all-gather, the Zarr column write), so both are measured side by side on the same process,
data and model. Figures are medians over the rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from curvenet_dist.engine.launch import torchrun_command

REPO = Path(__file__).resolve().parents[2]


def _worker(arguments: argparse.Namespace) -> None:
    from curvenet_dist.config import load_config
    from curvenet_dist.engine.distributed import barrier, setup_distributed, teardown_distributed
    from curvenet_dist.engine.probe import ProbeTrainer

    with tempfile.TemporaryDirectory() as folder:
        config = load_config(arguments.config, [f"run.dir={folder}/run", "tracking.enabled=false",
                                                f"probe.epochs={2 * arguments.rounds + 1}", *arguments.overrides])
        context = setup_distributed("cpu")
        trainer = ProbeTrainer(config, context)
        store = trainer.open_store()
        times: dict[bool, list[float]] = {True: [], False: []}
        for epoch in range(2 * arguments.rounds + 1):
            record = epoch % 2 == 1
            barrier()
            start = time.perf_counter()
            trainer.train_and_record_epoch(epoch, store, record=record)
            barrier()
            if epoch > 0:  # epoch 0 warms up
                times[record].append(time.perf_counter() - start)
        teardown_distributed()
    if context.is_main:
        with_recording, without = statistics.median(times[True]), statistics.median(times[False])
        print(json.dumps({
            "epoch_s_with_recording": with_recording, "epoch_s_without_recording": without,
            "overhead_fraction": (with_recording - without) / without, "rounds": arguments.rounds,
            "samples": len(trainer.train_table), "world_size": context.world_size,
            "epoch_s_with_recording_all": times[True], "epoch_s_without_recording_all": times[False],
        }), flush=True)


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m curvenet_dist.bench curve_overhead")
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("--nproc", type=int, default=2, help="torchrun processes (gloo, CPU)")
    parser.add_argument("--rounds", type=int, default=5, help="pairs of epochs (with, without recording)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. bias.imbalance_factor=1")
    arguments = parser.parse_args(argv)
    if arguments.worker:
        _worker(arguments)
        sys.exit(0)
    command = torchrun_command(arguments.nproc, "curvenet_dist.bench.curve_overhead",
                               ["--worker", "--config", arguments.config, "--rounds", str(arguments.rounds),
                                *arguments.overrides], ["--module"])
    output = subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    return json.loads(output.strip().splitlines()[-1])


if __name__ == "__main__":
    main(sys.argv[1:])
