"""Process-group set-up for torchrun workers: NCCL on GPU, gloo on CPU."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist


@dataclass
class DistributedContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_choice: str) -> DistributedContext:
    """Join the process group torchrun describes (RANK, LOCAL_RANK, WORLD_SIZE), or run alone without one."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    use_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("run.device='cuda' but no CUDA device is visible")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        # torchrun leaves OMP_NUM_THREADS=1 for several workers; share the cores between local ranks instead.
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size))
    if world_size > 1:
        timeout = timedelta(minutes=30)
        store = _restart_attempt_store(world_size, timeout)
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            device_id=device if use_cuda else None,
            timeout=timeout,
            **({"store": store, "rank": rank, "world_size": world_size} if store is not None else {}),
        )
    return DistributedContext(rank, local_rank, world_size, device)


def _restart_attempt_store(world_size: int, timeout: timedelta) -> dist.Store | None:
    """torchrun's agent keeps one TCPStore for the whole job. Workers it restarts (--max-restarts) would read the
    dead workers' gloo/NCCL addresses from it and fail to connect, so each restart attempt gets its own keys."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False,
                          timeout=timeout)
    return dist.PrefixStore(f"curvenet-attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_without_finalization(status: int) -> NoReturn:
    """End a worker process after `teardown_distributed`, skipping the interpreter's finalization. gloo's worker
    threads can still hold finished work whose tensors reference Python objects; freeing those while the
    interpreter is torn down aborts the process ("terminate called without an active exception", exit -6) after
    all its work was saved: seen twice in one test-suite run on 2 gloo ranks (pytorch/pytorch#179291 describes
    the mechanism). Everything a stage writes is closed by then; only the standard streams need flushing."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_model(module: torch.nn.Module) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any rank."""
    if not dist.is_initialized():
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def min_over_ranks(value: int, device: torch.device) -> int:
    """The smallest of every rank's `value`, on every rank."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())
