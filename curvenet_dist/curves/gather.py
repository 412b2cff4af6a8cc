"""Gather each rank's (sample id, value) pairs into one value per sample."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def all_gather_concat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a same-shaped tensor from every rank, in rank order (no-op when not distributed)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts)


def gather_concat(tensor: torch.Tensor, dst: int) -> torch.Tensor | None:
    """Concatenate a same-shaped tensor from every rank, in rank order, on rank `dst` only (None elsewhere)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())] if dist.get_rank() == dst else None
    dist.gather(tensor, parts, dst=dst)
    return torch.cat(parts) if parts is not None else None


def gather_by_id(ids: torch.Tensor, values: torch.Tensor, num_samples: int, dst: int | None = None) -> np.ndarray | None:
    """One value per sample id from every rank's (id, value) pairs, indexed by id; ids repeated by sharding
    padding keep their first value in rank order. `values` may be [n, k] to gather k values per sample in the same
    collective. Every rank gets the result, or with `dst` only that rank (the others get None and send only their
    share). Raises if any sample id is missing."""
    if dst is None:
        all_ids, all_values = all_gather_concat(ids), all_gather_concat(values)
    else:
        all_ids, all_values = gather_concat(ids, dst), gather_concat(values, dst)
        if all_ids is None:
            return None
    return first_value_by_id(all_ids.cpu().numpy(), all_values.cpu().numpy(), num_samples)


def first_value_by_id(ids: np.ndarray, values: np.ndarray, num_samples: int) -> np.ndarray:
    """values[k] (a value or a row of values) placed at ids[k]; for an id that occurs more than once, its first."""
    counts = np.bincount(ids, minlength=num_samples)
    if len(counts) != num_samples or not counts.all():
        missing = np.flatnonzero(counts[:num_samples] == 0)[:5]
        raise RuntimeError(f"the epoch's recordings miss sample ids {missing.tolist()} (of {num_samples})"
                           if len(missing) else f"the epoch's recordings hold ids >= {num_samples}")
    out = np.empty((num_samples, *values.shape[1:]), values.dtype)
    out[ids] = values
    # Which of a repeated id's values a fancy assignment keeps is unspecified; the few repeats are set again.
    repeated = np.flatnonzero(counts[ids] > 1)
    repeated_ids, first = np.unique(ids[repeated], return_index=True)
    out[repeated_ids] = values[repeated[first]]
    return out
