"""All-gather each rank's (sample id, loss) pairs once per epoch into one loss per sample."""
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


def losses_by_id(ids: torch.Tensor, losses: torch.Tensor, num_samples: int) -> np.ndarray:
    """One loss per sample id from every rank's recordings; ids repeated by sharding padding keep their first
    recording. Raises if any sample id was not recorded."""
    all_ids = all_gather_concat(ids).cpu().numpy()
    all_losses = all_gather_concat(losses.float()).cpu().numpy()
    unique_ids, first = np.unique(all_ids, return_index=True)
    if len(unique_ids) != num_samples or unique_ids[0] != 0 or unique_ids[-1] != num_samples - 1:
        missing = np.setdiff1d(np.arange(num_samples), unique_ids)[:5]
        raise RuntimeError(f"the epoch's recordings miss sample ids {missing.tolist()} (of {num_samples})")
    out = np.empty(num_samples, np.float32)
    out[unique_ids] = all_losses[first]
    return out
