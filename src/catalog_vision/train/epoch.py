"""One epoch on one Train worker: the training pass over its shard and the evaluation pass over its
validation shard, returned as sums for the workers to all-reduce."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from .recipe import Step
from .shard_cache import ShardCache


def train_one_epoch(model, shard, optimizer, scheduler, step: Step, cache: ShardCache | None = None) -> dict[str, float]:
    t = step.t
    loss_sum, hits, seen, pending = 0.0, 0.0, 0, 0
    # Where the epoch's time goes: waiting for Ray Data (or the shard cache), augmenting,
    # forward+backward (DDP's all-reduce overlaps the backward pass), the optimizer step.
    clock = dict.fromkeys(("data", "augment", "compute", "optimizer"), 0.0)
    start = tick = time.perf_counter()
    y_dtype = torch.float32 if step.task == "multilabel" else torch.int64
    cache = cache or ShardCache(0)
    from_memory = float(cache.cached)
    # On the CPU: augmentation runs per image there; Step.prepare moves the batch.
    batches = cache.batches(shard, t["batch_size"], {"pixels": torch.uint8, "y": y_dtype}, t.get("shuffle_buffer") or None)
    for i, batch in enumerate(batches):
        tick = lap(clock, "data", tick)
        x, target, y = step.prepare(batch)
        tick = lap(clock, "augment", tick)
        sync = (i + 1) % step.accumulate == 0
        with contextlib.nullcontext() if sync or not hasattr(model, "no_sync") else model.no_sync():
            with step.autocast():
                logits = model(x)
            loss = step.loss(logits, target)
            scaled = loss / step.accumulate
            (step.scaler.scale(scaled) if step.scaler else scaled).backward()
        pending += 1
        tick = lap(clock, "compute", tick)
        if sync:
            if step.scaler:
                step.scaler.step(optimizer)
                step.scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            pending = 0
        loss_sum += loss.item() * len(y)
        hits += step.hits(logits.detach(), y)
        seen += len(y)
        tick = lap(clock, "optimizer", tick)
    if pending:  # fewer than accumulate_steps batches left at the end of the epoch: dropped
        optimizer.zero_grad(set_to_none=True)
    return {"loss_sum": loss_sum, "correct": hits, "seen": seen, "elapsed": time.perf_counter() - start, "from_memory": from_memory,
            **{f"time/{k}": v for k, v in clock.items()}}


def lap(clock: dict[str, float], key: str, since: float) -> float:
    """Add the time since ``since`` to ``clock[key]``; returns now (the next phase's start). The
    per-phase breakdown of a step (data, augment, compute, optimizer) that bench/train.py prints
    for both of its loops."""
    now = time.perf_counter()
    clock[key] += now - since
    return now


@torch.no_grad()
def evaluate(model, shard, step: Step, batch_size: int) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Summed loss/hits on this worker's validation shard, plus its scores and targets."""
    model.eval()
    loss_sum, hits, seen = 0.0, 0.0, 0
    scores, targets = [], []
    y_dtype = torch.float32 if step.task == "multilabel" else torch.int64
    for batch in shard.iter_torch_batches(batch_size=batch_size, dtypes={"pixels": torch.uint8, "y": y_dtype}, device=step.device):
        x, y = batch["pixels"].contiguous(memory_format=torch.channels_last), batch["y"]
        with step.autocast():
            logits = model(x).float()
        loss_sum += step.loss(logits, y, reduction="sum").item() / (logits.shape[1] if step.task == "multilabel" else 1)
        hits += step.hits(logits, y)
        seen += len(y)
        scores.append((torch.sigmoid(logits) if step.task == "multilabel" else torch.softmax(logits, 1)).cpu().numpy())
        targets.append(y.cpu().numpy())
    counts = {"loss_sum": loss_sum, "correct": hits, "seen": seen}
    if not scores:
        return counts, np.zeros((0, step.num_classes), np.float32), np.zeros((0, step.num_classes) if step.task == "multilabel" else (0,), np.float32)
    return counts, np.concatenate(scores), np.concatenate(targets)
