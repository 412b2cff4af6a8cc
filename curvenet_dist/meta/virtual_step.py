"""The virtual step w_hat = w - alpha * g of DESIGN.md §5 step 1 (paper eq. 11), as a differentiable function.

It follows `torch.optim.SGD`'s update rule exactly (weight decay, momentum, dampening, Nesterov) and reads the
optimizer's momentum buffers without modifying them, so w_hat is where the real optimizer would move w.
"""
from __future__ import annotations

import torch


def virtual_sgd_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_buffers: list[torch.Tensor | None],
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    dampening: float = 0.0,
) -> list[torch.Tensor]:
    """One SGD step as new tensors; gradients flow through `grads` (and `params`). A buffer of None means the
    optimizer has not stepped this parameter yet: SGD then starts the buffer at the current direction."""
    updated = []
    for param, grad, buffer in zip(params, grads, momentum_buffers, strict=True):
        direction = grad + weight_decay * param if weight_decay != 0 else grad
        if momentum != 0:
            buffer = direction if buffer is None else momentum * buffer + (1 - dampening) * direction
            direction = direction + momentum * buffer if nesterov else buffer
        updated.append(param - lr * direction)
    return updated


def virtual_optimizer_step(
    optimizer: torch.optim.SGD, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """w_hat for `params` (a subset of the optimizer's parameters) under each one's param group settings."""
    group_of = {id(param): group for group in optimizer.param_groups for param in group["params"]}
    updated: dict[str, torch.Tensor] = {}
    for group in optimizer.param_groups:
        if group.get("maximize", False):
            raise ValueError("the virtual step follows a minimising SGD; the classifier optimizer has maximize=True")
        names = [name for name, param in params.items() if group_of.get(id(param)) is group]
        new_values = virtual_sgd_step(
            [params[name] for name in names],
            [grads[name] for name in names],
            [optimizer.state.get(params[name], {}).get("momentum_buffer") for name in names],
            lr=group["lr"],
            momentum=group["momentum"],
            weight_decay=group["weight_decay"],
            nesterov=group["nesterov"],
            dampening=group["dampening"],
        )
        updated.update(zip(names, new_values))
    missing = [name for name in params if name not in updated]
    if missing:
        raise ValueError(f"parameters not in the classifier optimizer: {', '.join(missing)}")
    return updated
