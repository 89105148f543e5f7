"""A Train worker's shard of the training set, kept in the worker's memory after the first epoch
(``trainer.cache_shard_mb``).

The first epoch streams the shard from Ray Data as usual and keeps each batch's decoded ``uint8``
pixels and targets. Later epochs shuffle those in memory and never touch Ray Data: no streaming
executor, no split coordinator and no object-store reads compete with the forward and backward
passes for the cores (``bench/train.py`` times both). Each worker then keeps the images it got in
the first epoch and reshuffles them every epoch (fixed shards, as with WebDataset or a
``DistributedSampler`` without cross-shard reshuffling); batches still cross workers through DDP.

A shard larger than the limit is streamed every epoch, as without the cache. Shards are equal
(``streaming_split(equal=True)``) and so is the limit, so every worker decides alike and runs the
same number of steps. A worker that restarts (node loss, a resumed run) streams its first epoch
again and caches then.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch


class ShardCache:
    def __init__(self, limit_mb: float | None):
        self.limit = int(float(limit_mb or 0) * 2**20)
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.too_big = False

    @property
    def cached(self) -> bool:
        return self.x is not None

    def batches(self, shard: Any, batch_size: int, dtypes: dict, local_shuffle: int | None) -> Iterator[dict[str, torch.Tensor]]:
        """This epoch's training batches (``drop_last``): from memory once cached, else from ``shard``."""
        if self.cached:
            yield from self._from_memory(batch_size)
            return
        keep = self.limit > 0 and not self.too_big
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        held = 0
        for batch in shard.iter_torch_batches(batch_size=batch_size, dtypes=dtypes, device="cpu", local_shuffle_buffer_size=local_shuffle, drop_last=True):
            if keep:
                held += batch["pixels"].nbytes + batch["y"].nbytes
                if held > self.limit:
                    keep, self.too_big, parts = False, True, []
                else:  # copies: the batch may view Ray's buffers, and augmentation may change it
                    parts.append((batch["pixels"].clone(), batch["y"].clone()))
            yield batch
        if keep and parts:
            self.x, self.y = torch.cat([p for p, _ in parts]), torch.cat([t for _, t in parts])

    def _from_memory(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.randperm(len(self.x))  # seeded per (seed, epoch, rank) by the training loop
        for s in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[s : s + batch_size]
            yield {"pixels": self.x[idx], "y": self.y[idx]}
