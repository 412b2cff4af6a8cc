"""Allocate stage: `torchrun --nproc_per_node=N launch/allocate.py --config configs/X.yaml
allocate.probe_dir=PROBE_RUN run.dir=PATH method=curvenet|mwnet|ce|balanced_ce|logit_adjust [key=value ...]`, or
without a probe `method=dynamic_loss` (with `dynamic_loss.clean_meta=true` to add the clean meta set)."""
import sys

from curvenet_dist.engine.launch import run_stage

if __name__ == "__main__":
    run_stage("allocate", sys.argv[1:])
