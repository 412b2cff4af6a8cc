"""Probe stage: `torchrun --nproc_per_node=N launch/probe.py --config configs/X.yaml [key=value ...]`."""
import sys

from curvenet_dist.engine.launch import run_stage

if __name__ == "__main__":
    run_stage("probe", sys.argv[1:])
