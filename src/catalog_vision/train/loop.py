"""``train_loop_per_worker``: what each Ray Train worker runs.

It builds the model (starting weights from the driver), resumes from Ray Train's last registered
checkpoint, runs the epochs, reports metrics and, on rank 0, a checkpoint per epoch, and stops
early after ``trainer.early_stopping_patience`` epochs without improvement.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

import torch

from .. import checkpoint as ckpt
from ..models import build_model, set_backbone_frozen
from ..models import pretrained as pretrained_weights
from ..runtime import say
from .collective import all_reduce, worker_nodes
from .epoch import evaluate, train_one_epoch
from .metrics import epoch_metrics
from .recipe import Step, make_optimizer, make_scheduler, monitor_of, seed_everything, train_precision
from .shard_cache import ShardCache


def _improved(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value > best if mode == "max" else value < best)


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
        tr = all_reduce(train_one_epoch(model, train_shard, optimizer, scheduler, step, cache))
        va_counts, va_scores, va_targets = evaluate(model, val_shard, step, t["batch_size"] * 2)
        metrics, thresholds = epoch_metrics(epoch, task, world, tr, all_reduce(va_counts), va_scores, va_targets, scheduler)
        # resumed_from_epoch > 0: this attempt restored a checkpoint
        metrics.update({"frozen_backbone": epoch < frozen_epochs, "resumed_from_epoch": start_epoch, "workers": world, "nodes": len(set(nodes))})
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
