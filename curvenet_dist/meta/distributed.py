"""All-reduce-mean across ranks, plain (for gradients) and differentiable (for the exact meta-gradient).

Each call flattens its tensors into one buffer for a single collective. Both are no-ops when torch.distributed
is not initialised or the world has one rank.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_mean(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    flat = torch.cat([tensor.reshape(-1) for tensor in tensors])
    # SUM then divide: ReduceOp.AVG exists only on NCCL, and the run must work on gloo too.
    dist.all_reduce(flat)
    flat /= world_size()
    pieces = flat.split([tensor.numel() for tensor in tensors])
    return [piece.view_as(tensor).to(tensor.dtype) for piece, tensor in zip(pieces, tensors)]


class _DifferentiableAllReduceMean(torch.autograd.Function):
    """y = mean over ranks of x. With every rank backpropagating its own loss L_r, the gradient of sum_r L_r
    w.r.t. each rank's x is the mean over ranks of dL_r/dy: the backward is again an all-reduce-mean."""

    @staticmethod
    def forward(ctx, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(_all_reduce_mean(list(tensors)))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _DifferentiableAllReduceMean.apply(*grads)


def differentiable_all_reduce_mean(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    if world_size() == 1 or not tensors:
        return list(tensors)
    return list(_DifferentiableAllReduceMean.apply(*tensors))


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """Replace every tensor, in place, by its mean over ranks."""
    if world_size() == 1 or not tensors:
        return
    with torch.no_grad():
        for tensor, mean in zip(tensors, _all_reduce_mean(tensors)):
            tensor.copy_(mean)
