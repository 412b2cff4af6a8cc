"""Allocate stage: `torchrun --nproc_per_node=N launch/allocate.py --config configs/X.yaml probe.dir=PROBE_RUN
run.dir=PATH method=curvenet|mwnet|ce [key=value ...]`."""
import sys

from curvenet_dist.engine.launch import run_stage

if __name__ == "__main__":
    run_stage("allocate", sys.argv[1:])
