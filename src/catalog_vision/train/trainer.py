"""Data-parallel training with Ray Train: ``TorchTrainer`` over Ray Data shards.

[0] ``model.pretrained`` is resolved on the driver before anything starts (a missing file stops
    the job at once); the bytes reach the workers through the object store.
[1] Ray Data reads the catalog and decodes it on CPU tasks, once (``materialize``).
[2] Each epoch the shards stream into the workers (block order randomised, local shuffle buffer);
    each worker augments its batches with ``torchvision.transforms.v2`` (:mod:`.transforms`),
    seeded per (seed, epoch, rank), then mixup/cutmix when configured.
[3] Workers train with DDP (gloo on CPU, NCCL on GPU) under autocast (bfloat16 on CPUs with native
    bf16, float16/bfloat16 on GPUs), evaluate on their validation shard and all-reduce the counts.
    Multi-label runs gather the validation scores and pick a per-class threshold (best F1).
[4] Rank 0 writes a checkpoint per epoch (weights, optimizer, scheduler, metric history,
    thresholds); Ray Train persists it under ``trainer.storage_path`` (local or s3://), keeps
    ``trainer.checkpoints_to_keep``, and restores the latest on a worker failure or when a run of
    the same ``trainer.run_name`` is submitted again.
[5] The best checkpoint (by ``trainer.monitor``) is exported to ``paths.model`` with the whole
    run's history, for evaluation, backfill and serving.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from .. import checkpoint as ckpt
from .. import storage as st
from . import transforms
from ..ingest.labels import TASKS, resolve_classes, to_training
from ..ingest.catalog import catalog_table
from ..ingest.dataset import decoded_catalog
from ..ingest.images import Preprocessing
from ..models import build_model, set_backbone_frozen
from ..models import pretrained as pretrained_weights
from ..runtime import init_ray, new_run_id, say, verbose
from .shard_cache import ShardCache
from ..storage.shared import check_shared

log = logging.getLogger("catalog_vision")

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
    from ..infer.predictor import check_dtype

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

    def __init__(self, t: Mapping[str, Any], task: str, num_classes: int, image_size, counts: list[int], rows: int, device, amp_dtype: torch.dtype = torch.float32):
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
        tick = _lap(clock, "data", tick)
        x, target, y = step.prepare(batch)
        tick = _lap(clock, "augment", tick)
        sync = (i + 1) % step.accumulate == 0
        with contextlib.nullcontext() if sync or not hasattr(model, "no_sync") else model.no_sync():
            with step.autocast():
                logits = model(x)
            loss = step.loss(logits, target)
            scaled = loss / step.accumulate
            (step.scaler.scale(scaled) if step.scaler else scaled).backward()
        pending += 1
        tick = _lap(clock, "compute", tick)
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
        tick = _lap(clock, "optimizer", tick)
    if pending:  # fewer than accumulate_steps batches left at the end of the epoch: dropped
        optimizer.zero_grad(set_to_none=True)
    return {"loss_sum": loss_sum, "correct": hits, "seen": seen, "elapsed": time.perf_counter() - start, "from_memory": from_memory,
            **{f"time/{k}": v for k, v in clock.items()}}


def _lap(clock: dict[str, float], key: str, since: float) -> float:
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


def _all_reduce(values: dict[str, float]) -> dict[str, float]:
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


def _all_gather(arr: np.ndarray) -> np.ndarray:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return arr
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, arr)
    return np.concatenate([a for a in out if a is not None and len(a)])


def choose_thresholds(scores: np.ndarray, targets: np.ndarray) -> list[float]:
    """Per label, the score threshold with the best F1 on validation (0.5 when a label has no positives)."""
    from sklearn.metrics import precision_recall_curve

    out = []
    for k in range(targets.shape[1]):
        if targets[:, k].sum() == 0:
            out.append(0.5)
            continue
        p, r, th = precision_recall_curve(targets[:, k], scores[:, k])
        f1 = 2 * p[:-1] * r[:-1] / np.maximum(p[:-1] + r[:-1], 1e-12)
        out.append(float(th[int(np.argmax(f1))]))
    return out


def multilabel_val_metrics(scores: np.ndarray, targets: np.ndarray, thresholds: list[float]) -> dict[str, float]:
    from sklearn.metrics import f1_score, hamming_loss

    pred = scores >= np.asarray(thresholds)[None, :]
    return {
        "val/f1_macro": float(f1_score(targets, pred, average="macro", zero_division=0)),
        "val/f1_micro": float(f1_score(targets, pred, average="micro", zero_division=0)),
        "val/hamming_loss": float(hamming_loss(targets, pred)),
        "val/f1_macro@0.5": float(f1_score(targets, scores >= 0.5, average="macro", zero_division=0)),
    }


def _improved(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value > best if mode == "max" else value < best)


def train_precision(t: Mapping[str, Any], model: torch.nn.Module, model_cfg: Mapping[str, Any], preprocessing: Mapping[str, Any],
                    device: torch.device, rank: int) -> tuple[torch.dtype, dict | None]:
    """``trainer.precision`` for this run, and for ``auto`` on CPU the measurement behind it.

    Rank 0 times forward+backward in float32 and bfloat16 (:mod:`catalog_vision.infer.precision`)
    and broadcasts the choice: every DDP worker must autocast alike, and per-rank timings could disagree."""
    import json

    from ..infer import precision
    from ..ingest.images import Preprocessing
    from ..infer.predictor import resolve_dtype

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


def quiet_train_worker_logs() -> None:
    """Ray Train logs every ``report()`` at INFO from a logger named by its file path (outside
    ``ray.train``, so ``LoggingConfig(log_level=...)`` does not reach it): off unless ``ray.verbose``."""
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # another Ray Train layout: its lines stay
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def restore_state(restored, inner: torch.nn.Module, optimizer, scheduler, step: "Step", rank: int) -> tuple[int, list[dict]]:
    """Weights, optimizer, scheduler and scaler from Ray Train's last registered checkpoint (a
    restarted attempt); returns the epoch to start from and the history so far."""
    if not restored:
        return 0, []
    with restored.as_directory() as d:
        loaded = ckpt.load(d)
        inner.load_state_dict(loaded.model.state_dict())
        state = torch.load(os.path.join(d, "train_state.pt"), weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if step.scaler and "scaler" in state:
            step.scaler.load_state_dict(state["scaler"])
        start_epoch = int(loaded.meta["epoch"]) + 1
        history = list(loaded.meta.get("history", []))
    if rank == 0:
        say(f"resuming from epoch {start_epoch} (checkpoint {restored.path})")
    return start_epoch, history


def epoch_metrics(epoch: int, task: str, world: int, tr: dict, va: dict, va_scores, va_targets, scheduler) -> tuple[dict, list[float] | None]:
    """One epoch's metrics from the all-reduced train and validation counts (and, multi-label, the
    gathered validation scores, from which the per-label thresholds are chosen)."""
    metrics = {
        "epoch": epoch,
        "train/loss": tr["loss_sum"] / max(1, tr["seen"]),
        "train/top1" if task == "multiclass" else "train/label_accuracy": tr["correct"] / max(1, tr["seen"]),
        "train/images_per_s": tr["seen"] / max(1e-9, tr["elapsed"] / world),
        "val/loss": va["loss_sum"] / max(1, va["seen"]),
        "val/images": int(va["seen"]),
        "lr": scheduler.get_last_lr()[0],
        # seconds per worker (mean over workers) spent on each part of the training steps
        **{k: round(tr[k] / world, 2) for k in ("time/data", "time/augment", "time/compute", "time/optimizer")},
        # workers whose epoch came from their in-memory shard (trainer.cache_shard_mb), not Ray Data
        "train/workers_from_memory": int(tr.get("from_memory", 0)),
    }
    thresholds = None
    if task == "multilabel":
        scores, targets = _all_gather(va_scores), _all_gather(va_targets)
        thresholds = choose_thresholds(scores, targets)
        metrics.update(multilabel_val_metrics(scores, targets, thresholds))
        metrics["val/label_accuracy"] = va["correct"] / max(1, va["seen"])
    else:
        metrics["val/top1"] = va["correct"] / max(1, va["seen"])
    return metrics, thresholds


def report_with_checkpoint(epoch: int, metrics: dict, meta: dict, model, optimizer, scheduler, step: "Step") -> None:
    """Rank 0: the epoch's checkpoint (model + the state a restarted attempt resumes from), registered with Ray Train."""
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        ckpt.save_local(d, model, meta)
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        if step.scaler:
            state["scaler"] = step.scaler.state_dict()
        torch.save(state, os.path.join(d, "train_state.pt"))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d), checkpoint_dir_name=f"epoch_{epoch:04d}")


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    t, task = config["trainer"], config["task"]
    if not config.get("verbose"):
        quiet_train_worker_logs()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    nodes = worker_nodes()
    if rank == 0:
        say(f"train workers: {world} on {len(set(nodes))} nodes {sorted(set(nodes))}")
    seed = int(t["seed"])
    seed_everything(seed)  # the same initial weights on every rank
    if t.get("threads_per_worker"):
        torch.set_num_threads(int(t["threads_per_worker"]))
    device = ray.train.torch.get_device()
    classes = config["classes"]
    inner = build_model({**config["model"], "pretrained": None}, len(classes), config["preprocessing"])
    if config.get("pretrained") is not None:  # resolved on the driver; workers may have no cache or internet
        info, data = config["pretrained"]
        unused = pretrained_weights.Weights(ray.get(data), info["source"], info["pretrained"]).load_into(inner)
        if rank == 0:
            say(f"backbone starts from model.pretrained={info['pretrained']} ({info['source']}); not used: {unused}")
    inner = inner.to(device, memory_format=torch.channels_last)
    amp_dtype, choice = train_precision(t, inner, config["model"], config["preprocessing"], device, rank)
    if rank == 0 and choice:
        say(f"trainer.precision=auto -> {choice['dtype']} ({'cached: ' if choice['cached'] else ''}{choice['why']})")
    step = Step(t, task, len(classes), config["preprocessing"]["image_size"], config["class_counts"], config["train_rows"], device, amp_dtype)
    optimizer = make_optimizer(inner.parameters(), t)
    steps_per_epoch = max(1, config["train_rows"] // (world * t["batch_size"] * step.accumulate))
    scheduler = make_scheduler(optimizer, t, steps_per_epoch)
    start_epoch, history = restore_state(ray.train.get_checkpoint(), inner, optimizer, scheduler, step, rank)
    frozen_epochs = int(t.get("freeze_backbone_epochs") or 0)
    set_backbone_frozen(inner, start_epoch < frozen_epochs)
    model = ray.train.torch.prepare_model(inner)  # DDP registers only parameters that need grads

    metric, mode = monitor_of(t, task)
    best, since_best = None, 0
    for h in history:  # a resumed run continues the early-stopping count where it stopped
        best, since_best = (h[metric], 0) if _improved(h[metric], best, mode) else (best, since_best + 1)
    patience = int(t.get("early_stopping_patience") or 0)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    cache = ShardCache(t.get("cache_shard_mb"))
    for epoch in range(start_epoch, t["epochs"]):
        epoch_start = time.perf_counter()
        if epoch == frozen_epochs and frozen_epochs > start_epoch:
            set_backbone_frozen(inner, False)
            model = ray.train.torch.prepare_model(inner)  # re-wrap so DDP syncs the backbone too
        # Draws depend on (seed, epoch, rank) only, so a resumed run augments as an uninterrupted one.
        seed_everything(seed * 1_000_003 + epoch * world + rank)
        model.train()
        if epoch < frozen_epochs:
            set_backbone_frozen(inner, True)
        tr = _all_reduce(train_one_epoch(model, train_shard, optimizer, scheduler, step, cache))
        va_counts, va_scores, va_targets = evaluate(model, val_shard, step, t["batch_size"] * 2)
        metrics, thresholds = epoch_metrics(epoch, task, world, tr, _all_reduce(va_counts), va_scores, va_targets, scheduler)
        metrics.update({"frozen_backbone": epoch < frozen_epochs, "resumed_from_epoch": start_epoch, "workers": world, "nodes": len(set(nodes))})  # > 0: this attempt restored a checkpoint
        metrics["seconds"] = round(time.perf_counter() - epoch_start, 2)
        history.append(metrics)
        best, since_best = (metrics[metric], 0) if _improved(metrics[metric], best, mode) else (best, since_best + 1)
        stop = bool(patience) and since_best >= patience
        if rank == 0:
            shown = ["train/loss", "val/loss", metric] + (["val/hamming_loss"] if task == "multilabel" else [])
            say(
                f"epoch {epoch + 1}/{t['epochs']}  " + "  ".join(f"{k} {metrics[k]:.4f}" for k in dict.fromkeys(shown))
                + f"  images/s {metrics['train/images_per_s']:.0f}" + ("  (backbone frozen)" if metrics["frozen_backbone"] else "")
            )
            meta = {**config["checkpoint_meta"], "epoch": epoch, "metrics": metrics, "history": history}
            if thresholds is not None:
                meta["thresholds"] = thresholds
            report_with_checkpoint(epoch, metrics, meta, model, optimizer, scheduler, step)
        else:
            ray.train.report(metrics)
        if stop:
            if rank == 0:
                say(f"early stopping: {metric} has not improved for {patience} epochs (best {best:.4f})")
            break


def scaling_args(t: Mapping[str, Any]) -> dict:
    """``ScalingConfig`` from the trainer config. ``trainer.min_workers`` (below ``num_workers``)
    makes the worker group elastic: Ray Train starts, or restarts after losing a node, with as many
    workers as fit between the two. ``trainer.resources``: custom node resources per worker."""
    n = int(t["num_workers"])
    low = t.get("min_workers")
    if low is not None and not 1 <= int(low) <= n:
        raise ValueError(f"trainer.min_workers={low!r}: between 1 and trainer.num_workers={n}, or null for a fixed group")
    resources = {"CPU": float(t["cpus_per_worker"]), **({"GPU": 1} if t["use_gpu"] else {})}
    resources.update({str(k): float(v) for k, v in dict(t.get("resources") or {}).items()})
    return {"num_workers": (int(low), n) if low is not None and int(low) < n else n, "use_gpu": bool(t["use_gpu"]), "resources_per_worker": resources}


def failure_args(t: Mapping[str, Any]) -> dict:
    """``FailureConfig``: restarts from the latest registered checkpoint after a worker failure
    (``max_failures``) and, counted apart, after node preemptions (``max_preemption_failures``)."""
    args = {"max_failures": int(t["max_failures"])}
    if t.get("max_preemption_failures") is not None:
        args["max_preemption_failures"] = int(t["max_preemption_failures"])
    return args


def class_counts(table, classes: list[str], task: str) -> list[int]:
    """Training images per class (multi-class) or positives per label (multi-label): the support."""
    import pyarrow.compute as pc

    if task == "multilabel":
        if "labels" not in table.column_names:
            raise ValueError("data.task=multilabel needs a 'labels' column (list of class names) in the manifest")
        flat = pc.list_flatten(table.column("labels"))
    else:
        flat = table.column("label")
    got = {r["values"]: r["counts"] for r in pc.value_counts(flat).to_pylist()}
    return [int(got.get(c, 0)) for c in classes]


def train(cfg: Mapping[str, Any]) -> dict:
    """Train from a resolved config (plain dict). Returns a summary with the exported checkpoint URI."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t0 = time.perf_counter()
    storage, data, t = cfg["storage"], cfg["data"], cfg["trainer"]
    task = data.get("task", "multiclass")
    check_trainer(t, task)
    model_cfg = dict(cfg["model"])
    # [0] Starting weights before Ray starts: missing weights must not cost a decode first.
    weights = pretrained_weights.resolve(model_cfg, storage) if model_cfg.get("pretrained") else None
    spec = Preprocessing.from_dict(pretrained_weights.adapt_preprocessing(model_cfg, data["preprocessing"]))
    if weights is not None:  # weights for another architecture stop the run here, not as random-init training
        weights.load_into(build_model({**model_cfg, "pretrained": None}, 2, spec.to_dict()))
    init_ray(cfg["ray"])
    check_shared([t["storage_path"], cfg["paths"]["model"]], storage)  # multi-node: checkpoints from every worker, one place
    classes = resolve_classes(data, storage)
    if data.get("classes") in (None, "auto"):
        log.info("data.classes=auto: %d classes from the catalog: %s", len(classes), classes[:20] + (["..."] if len(classes) > 20 else []))
    train_table = catalog_table(data, storage, split=data["train_split"])
    counts = class_counts(train_table, classes, task)

    # [1] Decode once; the workers augment every epoch.
    def split(name: str, table=None):
        ds = decoded_catalog(data, spec.to_dict(), storage, split=name, table=table)
        return ds.map_batches(to_training, fn_kwargs={"classes": classes, "task": task}, batch_format="numpy").materialize()

    train_ds, val_ds = split(data["train_split"], train_table), split(data["val_split"])
    train_rows, val_rows = train_ds.count(), val_ds.count()
    if train_rows == 0 or val_rows == 0:
        raise ValueError(f"empty split: {train_rows} train rows ({data['train_split']!r}), {val_rows} val rows ({data['val_split']!r})")
    log.info("decoded %d train and %d val images in %.1fs", train_rows, val_rows, time.perf_counter() - t0)
    if train_rows < train_table.num_rows:
        log.warning("%d of %d %r rows left out of training: not decodable, or no known label (a backfill of that split lists each error)", train_table.num_rows - train_rows, train_table.num_rows, data["train_split"])

    run_name = t.get("run_name") or f"{cfg['model']['name']}-{new_run_id()}"
    storage_path = st.absolute(t["storage_path"])
    arrow_fs, storage_root = st.arrow_filesystem(storage_path, storage)
    metric, mode = monitor_of(t, task)
    meta = {
        "model": model_cfg,
        "classes": classes,
        "preprocessing": spec.to_dict(),
        "task": task,
        "embedding_dim": build_model({**model_cfg, "pretrained": None}, len(classes), spec.to_dict()).num_features,
        "data": {"manifest": data.get("manifest"), "train_rows": train_rows, "val_rows": val_rows, "train_support": dict(zip(classes, counts))},
        "trainer": st.redact(dict(t)),
        "monitor": metric,
    }
    if weights is not None:
        meta["pretrained_weights"] = weights.describe()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "trainer": dict(t),
            "task": task,
            "model": model_cfg,
            "pretrained": (weights.describe(), ray.put(weights.data)) if weights is not None else None,
            "classes": classes,
            "class_counts": counts,
            "preprocessing": spec.to_dict(),
            "train_rows": train_rows,
            "checkpoint_meta": meta,
            "verbose": verbose(cfg["ray"]),
        },
        scaling_config=ScalingConfig(**scaling_args(t)),
        # [2] Block order is randomised each epoch; the workers' local shuffle buffer mixes further.
        datasets={"train": train_ds.randomize_block_order(), "val": val_ds},
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_root,
            storage_filesystem=arrow_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=int(t["checkpoints_to_keep"]), checkpoint_score_attribute=metric, checkpoint_score_order=mode),
            failure_config=FailureConfig(**failure_args(t)),
            # Ray Train's own INFO lines (worker group start, every report) only with ray.verbose=true.
            logging_config=LoggingConfig(log_level="INFO" if verbose(cfg["ray"]) else "WARNING"),
        ),
    )
    result = trainer.fit()
    best = result.get_best_checkpoint(metric=metric, mode=mode) or result.checkpoint
    if best is None:
        raise RuntimeError("training finished without a checkpoint")

    def uri(c) -> str:
        return f"{storage_path.split('://', 1)[0]}://{c.path}" if arrow_fs is not None else c.path

    export_uri = st.absolute(cfg["paths"]["model"])
    # The exported checkpoint carries the whole run's history (the best epoch may not be the last).
    meta_out = ckpt.read_meta(uri(best), storage)
    last = result.checkpoint or best
    meta_out["history"] = ckpt.read_meta(uri(last), storage).get("history", meta_out.get("history", []))
    ckpt.export(uri(best), meta_out, export_uri, storage)
    summary = {
        "checkpoint": export_uri,
        "model_id": ckpt.model_id_of(meta_out),
        "task": task,
        "best_epoch": meta_out["epoch"] + 1,
        "epochs_run": len(meta_out["history"]),
        metric: meta_out["metrics"][metric],
        "train_rows": train_rows,
        "val_rows": val_rows,
        "seconds": round(time.perf_counter() - t0, 1),
        "ray_checkpoints": st.join(storage_path, run_name),
        "history": meta_out["history"],
    }
    if task == "multilabel":
        summary["thresholds"] = [round(x, 4) for x in meta_out["thresholds"]]
        summary["val/hamming_loss"] = meta_out["metrics"]["val/hamming_loss"]
    print("train summary: " + json.dumps({k: v for k, v in summary.items() if k != "history"}), flush=True)
    return summary
