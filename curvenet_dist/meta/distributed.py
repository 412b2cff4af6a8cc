"""All-reduce-mean across ranks: plain, differentiable (for the exact meta-gradient), and overlapped with a
backward (for the classifier's gradients after a meta update).

Each call flattens its tensors into one buffer for a single collective. All are no-ops when torch.distributed
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


class OverlappedGradientMean:
    """Averages the gradients of `parameters` over ranks while the backward that produces them still runs, as
    DDP's reducer does: the parameters are cut into buckets of about `bucket_mb` in reverse registration order
    (roughly the order the backward reaches them), and a bucket's asynchronous all-reduce starts as soon as the
    last gradient in it and in every bucket before it has been accumulated: the buckets go out in one order on
    every rank, so each rank's collectives pair up with the same bucket on the others. DDP cannot do this for the
    allocate stage's meta step: its hooks only act after a forward through the wrapper, and the meta step's
    forward goes through the bottom/top split.

    Call `start()` before the backward and `finish()` after it; outside that window the hooks do nothing (the
    virtual and meta steps take gradients with autograd.grad, which accumulates nothing)."""

    def __init__(self, parameters: list[torch.nn.Parameter], bucket_mb: float = 25.0):
        self.buckets: list[list[torch.nn.Parameter]] = [[]]
        bucket_bytes = 0
        for param in reversed(parameters):
            if self.buckets[-1] and bucket_bytes + param.numel() * param.element_size() > bucket_mb * 2**20:
                self.buckets.append([])
                bucket_bytes = 0
            self.buckets[-1].append(param)
            bucket_bytes += param.numel() * param.element_size()
        self.bucket_of = {param: index for index, bucket in enumerate(self.buckets) for param in bucket}
        self.active = False
        if world_size() > 1:
            for param in parameters:
                param.register_post_accumulate_grad_hook(self._accumulated)

    def start(self) -> None:
        self.active = world_size() > 1
        self.waiting = [len(bucket) for bucket in self.buckets]
        self.next_bucket = 0
        self.in_flight: list[tuple[list[torch.Tensor], torch.Tensor, object]] = []

    def _accumulated(self, param: torch.nn.Parameter) -> None:
        if not self.active:
            return
        self.waiting[self.bucket_of[param]] -= 1
        while self.next_bucket < len(self.buckets) and self.waiting[self.next_bucket] == 0:
            self._launch_next()

    def _launch_next(self) -> None:
        grads = [param.grad for param in self.buckets[self.next_bucket] if param.grad is not None]
        self.next_bucket += 1
        if grads:
            flat = torch.cat([grad.reshape(-1) for grad in grads])
            self.in_flight.append((grads, flat, dist.all_reduce(flat, async_op=True)))

    def finish(self) -> None:
        """Wait for every bucket's all-reduce and write the means into the gradients. A bucket whose parameters
        did not all receive a gradient is reduced now, over the gradients that exist (the same on every rank)."""
        if not self.active:
            return
        while self.next_bucket < len(self.buckets):
            self._launch_next()
        with torch.no_grad():
            for grads, flat, work in self.in_flight:
                work.wait()
                flat /= world_size()
                for grad, mean in zip(grads, flat.split([grad.numel() for grad in grads])):
                    grad.copy_(mean.view_as(grad))
        self.active = False
        self.in_flight = []
