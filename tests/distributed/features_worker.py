"""Run by tests/test_scale.py under `python -m torch.distributed.run`: every rank asks for the curve features of
<folder>/curves.zarr at once, then writes what it got to <folder>/rank<r>.npy."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist

from curvenet_dist.curves.features import curve_features
from curvenet_dist.curves.store import CurveStore
from curvenet_dist.engine.distributed import exit_without_finalization


def main() -> None:
    folder = Path(sys.argv[1])
    dist.init_process_group("gloo")
    features = curve_features(CurveStore.open(folder / "curves.zarr", mode="r"), skip_epochs=1, normalization="dataset")
    np.save(folder / f"rank{dist.get_rank()}.npy", features)
    dist.destroy_process_group()
    exit_without_finalization(0)


if __name__ == "__main__":
    main()
