"""What the Train workers exchange: summed counts, gathered arrays, node ids (in one process: its own)."""

from __future__ import annotations

import numpy as np
import torch


def all_reduce(values: dict[str, float]) -> dict[str, float]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def worker_nodes() -> list[str]:
    """Every Train worker's Ray node id (in rank order): where this attempt's worker group runs."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [node]
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, node)
    return out


def all_gather(arr: np.ndarray) -> np.ndarray:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return arr
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, arr)
    return np.concatenate([a for a in out if a is not None and len(a)])
