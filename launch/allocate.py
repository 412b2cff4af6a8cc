"""Allocate stage: `torchrun --nproc_per_node=N launch/allocate.py --config configs/X.yaml probe.dir=PROBE_RUN
run.dir=PATH method=curvenet|mwnet|ce [key=value ...]`, or without a probe `method=dynamic_loss
meta.source=hierarchical|hierarchical_clean`."""
import sys

from curvenet_dist.engine.launch import run_stage

if __name__ == "__main__":
    run_stage("allocate", sys.argv[1:])
