"""All-gather each rank's (sample id, value) pairs into one value per sample."""
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


def gather_by_id(ids: torch.Tensor, values: torch.Tensor, num_samples: int) -> np.ndarray:
    """One value per sample id from every rank's (id, value) pairs, indexed by id; ids repeated by sharding
    padding keep their first value. Raises if any sample id is missing."""
    all_ids = all_gather_concat(ids).cpu().numpy()
    all_values = all_gather_concat(values).cpu().numpy()
    unique_ids, first = np.unique(all_ids, return_index=True)
    if len(unique_ids) != num_samples or unique_ids[0] != 0 or unique_ids[-1] != num_samples - 1:
        missing = np.setdiff1d(np.arange(num_samples), unique_ids)[:5]
        raise RuntimeError(f"the epoch's recordings miss sample ids {missing.tolist()} (of {num_samples})")
    out = np.empty(num_samples, all_values.dtype)
    out[unique_ids] = all_values[first]
    return out
