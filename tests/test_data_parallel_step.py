"""Steps without a meta update (plain CE, a frozen CurveNet's fixed weights) go through DistributedDataParallel, whose
all-reduce overlaps the backward; they must still compute what one process computes on the union batch."""
from __future__ import annotations

import os
import subprocess

import pytest
import torch

from curvenet_dist.engine.launch import torchrun_command
from tests.conftest import REPO


def run_worker(nproc: int, out) -> list[list[torch.Tensor]]:
    out.mkdir()
    command = torchrun_command(nproc, REPO / "tests/distributed/plain_step_worker.py", ["--out", str(out)])
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return [torch.load(out / f"rank{rank}.pt") for rank in range(nproc)]


@pytest.mark.timeout(300)
def test_two_rank_data_parallel_steps_equal_one_process_on_the_union_batch(tmp_path):
    rank0, rank1 = run_worker(2, tmp_path / "two_ranks")
    [union] = run_worker(1, tmp_path / "union")
    for a, b, expected in zip(rank0, rank1, union, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, expected)
