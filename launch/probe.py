"""Probe stage: `torchrun --nproc_per_node=N launch/probe.py --config configs/X.yaml [key=value ...]`."""
import sys

from curvenet_dist.engine.launch import run_stage
from curvenet_dist.engine.probe import ProbeTrainer

if __name__ == "__main__":
    run_stage(ProbeTrainer, sys.argv[1:], "probe")
