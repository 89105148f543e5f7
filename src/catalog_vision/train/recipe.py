"""The training recipe: settings checked on the driver, optimizer and learning-rate schedule, seeds,
class weights for imbalanced catalogs, the per-batch :class:`Step` (loss, autocast, gradient
scaling and accumulation, augmentation, mixup/cutmix) and its autocast dtype (``trainer.precision``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..ingest.labels import TASKS
from . import transforms

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "onecycle")
IMBALANCE = ("none", "class_weights", "weighted_sampling")


def check_trainer(t: Mapping[str, Any], task: str) -> None:
    """Fail on the driver, before any work, with the valid choices for each setting."""
    for key, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("imbalance", IMBALANCE)):
        if t.get(key, choices[0]) not in choices:
            raise ValueError(f"trainer.{key}={t.get(key)!r}; choose one of {list(choices)}")
    if task not in TASKS:
        raise ValueError(f"data.task={task!r}; choose one of {list(TASKS)}")
    if task == "multilabel" and t.get("imbalance") == "weighted_sampling":
        raise ValueError("trainer.imbalance=weighted_sampling is for multiclass; multi-label runs use class_weights (BCE pos_weight)")
    if int(t.get("accumulate_steps", 1)) < 1:
        raise ValueError(f"trainer.accumulate_steps={t.get('accumulate_steps')!r}; must be >= 1")
    transforms.build(t.get("augment"), (8, 8))  # validates the preset name
    from ..infer.device import check_dtype

    check_dtype(t.get("precision", "auto"), "trainer.precision")


def monitor_of(t: Mapping[str, Any], task: str) -> tuple[str, str]:
    """The validation metric that picks the best checkpoint and drives early stopping, and its mode."""
    metric = t.get("monitor") or ("val/top1" if task == "multiclass" else "val/f1_macro")
    return metric, ("min" if metric.endswith("loss") else "max")


def _lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def make_optimizer(params, t: Mapping[str, Any]) -> torch.optim.Optimizer:
    name = t["optimizer"]
    if name == "adamw":
        return torch.optim.AdamW(params, lr=t["lr"], weight_decay=t["weight_decay"])
    if name == "sgd":
        return torch.optim.SGD(params, lr=t["lr"], momentum=0.9, nesterov=True, weight_decay=t["weight_decay"])
    raise ValueError(f"trainer.optimizer={name!r}; choose one of {list(OPTIMIZERS)}")


def make_scheduler(optimizer, t: Mapping[str, Any], steps_per_epoch: int):
    """Per optimizer step: linear warmup then cosine to zero, or one-cycle (warmup = its rising phase)."""
    total = max(1, steps_per_epoch * int(t["epochs"]))
    warmup = int(float(t.get("warmup_epochs", 0)) * steps_per_epoch)
    if t.get("schedule", "cosine") == "onecycle":
        rise = min(0.5, max(0.05, warmup / total)) * total  # steps in the rising phase
        if abs(rise - 1) < 1e-9:  # torch divides by (rise - 1): a one-step rise is a ZeroDivisionError
            rise = 2.0 if total >= 4 else 0.5
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=t["lr"], total_steps=total, pct_start=rise / total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, warmup))


def seed_everything(seed: int) -> None:
    """Model init, augmentation, mixup and sampling draws (Ray Data's shuffle order is not seeded)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def class_weights(counts: list[int], task: str, rows: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 (multi-class), or BCE ``pos_weight`` =
    negatives/positives per label (multi-label), capped at 100 so a near-empty class cannot dominate."""
    c = torch.tensor(counts, dtype=torch.float32).clamp(min=1)
    if task == "multilabel":
        return ((rows - c) / c).clamp(max=100.0)
    w = (1.0 / c).clamp(max=100.0 / c.max())
    return w * len(c) / w.sum()


class Step:
    """One worker's recipe: loss, autocast, gradient scaling/accumulation, augmentation, mixing."""

    def __init__(self, t: Mapping[str, Any], task: str, num_classes: int, image_size, counts: list[int], rows: int, device,
                 amp_dtype: torch.dtype = torch.float32):
        self.t, self.task, self.device, self.num_classes = t, task, device, num_classes
        self.amp_dtype = amp_dtype  # see train_precision
        self.scaler = torch.amp.GradScaler(device.type) if self.amp_dtype == torch.float16 else None
        self.accumulate = int(t.get("accumulate_steps", 1))
        self.augment = transforms.build(t.get("augment"), image_size)
        self.mix = transforms.batch_mix(t.get("augment"), num_classes) if task == "multiclass" else None
        imbalance = t.get("imbalance", "none")
        weights = class_weights(counts, task, rows).to(device) if imbalance != "none" else None
        self.loss_weight = weights if imbalance == "class_weights" else None
        self.sample_weight = weights if imbalance == "weighted_sampling" else None
        self.label_smoothing = float(t.get("label_smoothing", 0.0))

    def autocast(self):
        if self.amp_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def loss(self, logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        logits = logits.float()
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.loss_weight, reduction=reduction)
        return F.cross_entropy(logits, target, weight=self.loss_weight, label_smoothing=self.label_smoothing, reduction=reduction)

    def hits(self, logits: torch.Tensor, y: torch.Tensor) -> float:
        """Top-1 hits (multi-class) or correctly decided labels per image at 0.5 (multi-label)."""
        if self.task == "multilabel":
            return ((logits > 0) == (y > 0.5)).float().mean(1).sum().item()
        return (logits.argmax(1) == y).sum().item()

    def prepare(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input, loss target, labels for hits): resample, augment per image, mix, move to device."""
        x, y = batch["pixels"], batch["y"]
        if self.sample_weight is not None:  # weighted sampling, within each shuffled batch, with replacement
            idx = torch.multinomial(self.sample_weight.cpu()[y], len(y), replacement=True)
            x, y = x[idx], y[idx]
        x = transforms.apply(self.augment, x)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        target = y
        if self.mix is not None:
            x, target = self.mix(x.float(), y)
        return x.contiguous(memory_format=torch.channels_last), target, y


def train_precision(t: Mapping[str, Any], model: torch.nn.Module, model_cfg: Mapping[str, Any], preprocessing: Mapping[str, Any],
                    device: torch.device, rank: int) -> tuple[torch.dtype, dict | None]:
    """``trainer.precision`` for this run, and for ``auto`` on CPU the measurement behind it.

    Rank 0 times forward+backward in float32 and bfloat16 (:mod:`catalog_vision.infer.precision`)
    and broadcasts the choice: every DDP worker must autocast alike, and per-rank timings could disagree."""
    import json

    from ..infer import precision
    from ..ingest.images import Preprocessing
    from ..infer.device import resolve_dtype

    choice: dict | None = None

    def measure() -> torch.dtype:
        nonlocal choice
        if rank == 0:
            shape = Preprocessing.from_dict(preprocessing).shape
            n = precision.probe_batch(int(t["batch_size"]), shape)
            timer = precision.training_timer(model, n, shape)
            choice = precision.measured_dtype("training", json.dumps(dict(model_cfg), sort_keys=True), shape, n, timer, t.get("precision_cache_dir"))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            box = [choice]
            torch.distributed.broadcast_object_list(box, src=0)
            choice = box[0]
        return precision.DTYPE_BY_NAME[choice["dtype"]]

    return resolve_dtype(t.get("precision", "auto"), device, "trainer.precision", measure=measure), choice
