"""Data-parallel training with Ray Train: ``TorchTrainer`` over Ray Data shards.

[1] Ray Data reads the catalog and decodes it on CPU tasks, once (``materialize``).
[2] Each epoch, augmentation runs as Ray Data CPU tasks, streaming into the workers.
[3] Workers train with DDP (gloo on CPU, NCCL on GPU), evaluate on their validation shard and
    all-reduce the counts.
[4] Rank 0 writes a checkpoint per epoch; Ray Train persists it to ``trainer.storage_path``.
[5] The best checkpoint (by ``val/top1``) is exported to ``paths.model`` for backfill and serving.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import storage as st
from .data import augment, decoded_catalog, to_training
from .images import Preprocessing
from .models import build_model
from .runtime import init_ray, new_run_id

log = logging.getLogger("catalog_vision")

OPTIMIZERS = ("adamw", "sgd")


def _lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def _make_optimizer(params, t: Mapping[str, Any]) -> torch.optim.Optimizer:
    name = t["optimizer"]
    if name == "adamw":
        return torch.optim.AdamW(params, lr=t["lr"], weight_decay=t["weight_decay"])
    if name == "sgd":
        return torch.optim.SGD(params, lr=t["lr"], momentum=0.9, nesterov=True, weight_decay=t["weight_decay"])
    raise ValueError(f"trainer.optimizer={name!r}; choose one of {list(OPTIMIZERS)}")


def train_one_epoch(model, shard, optimizer, scheduler, t: Mapping[str, Any], device) -> dict[str, float]:
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    for batch in shard.iter_torch_batches(
        batch_size=t["batch_size"],
        dtypes={"pixels": torch.uint8, "y": torch.int64},
        device=device,
        local_shuffle_buffer_size=t.get("shuffle_buffer") or None,
        drop_last=True,
    ):
        x = batch["pixels"].contiguous(memory_format=torch.channels_last)
        y = batch["y"]
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=t.get("label_smoothing", 0.0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    elapsed = time.perf_counter() - start
    return {"loss_sum": loss_sum, "correct": correct, "seen": seen, "elapsed": elapsed}


@torch.no_grad()
def evaluate(model, shard, batch_size: int, device) -> dict[str, float]:
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for batch in shard.iter_torch_batches(batch_size=batch_size, dtypes={"pixels": torch.uint8, "y": torch.int64}, device=device):
        x = batch["pixels"].contiguous(memory_format=torch.channels_last)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, batch["y"], reduction="sum").item()
        correct += (logits.argmax(1) == batch["y"]).sum().item()
        seen += len(batch["y"])
    return {"loss_sum": loss_sum, "correct": correct, "seen": seen}


def _all_reduce(values: dict[str, float]) -> dict[str, float]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    t = config["trainer"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(int(t["seed"]) + rank)
    if t.get("threads_per_worker"):
        torch.set_num_threads(int(t["threads_per_worker"]))
    device = ray.train.torch.get_device()

    model = build_model(config["model"], len(config["classes"]), config["preprocessing"])
    model = model.to(memory_format=torch.channels_last)
    optimizer = _make_optimizer(model.parameters(), t)
    steps_per_epoch = max(1, config["train_rows"] // (world * t["batch_size"]))
    total_steps = steps_per_epoch * t["epochs"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, int(t["warmup_epochs"] * steps_per_epoch)))
    start_epoch = 0
    restored = ray.train.get_checkpoint()
    if restored:
        with restored.as_directory() as d:
            loaded = ckpt.load(d)
            model.load_state_dict(loaded.model.state_dict())
            state = torch.load(os.path.join(d, "train_state.pt"), weights_only=True)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_epoch = int(loaded.meta["epoch"]) + 1
    model = ray.train.torch.prepare_model(model)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    for epoch in range(start_epoch, t["epochs"]):
        tr = _all_reduce(train_one_epoch(model, train_shard, optimizer, scheduler, t, device))
        va = _all_reduce(evaluate(model, val_shard, t["batch_size"] * 2, device))
        metrics = {
            "epoch": epoch,
            "train/loss": tr["loss_sum"] / max(1, tr["seen"]),
            "train/top1": tr["correct"] / max(1, tr["seen"]),
            "train/images_per_s": tr["seen"] / max(1e-9, tr["elapsed"] / world),
            "val/loss": va["loss_sum"] / max(1, va["seen"]),
            "val/top1": va["correct"] / max(1, va["seen"]),
            "val/images": va["seen"],
            "lr": scheduler.get_last_lr()[0],
        }
        if rank == 0:
            print(
                f"epoch {epoch + 1}/{t['epochs']}  train/loss {metrics['train/loss']:.4f}  train/top1 {metrics['train/top1']:.4f}  "
                f"val/loss {metrics['val/loss']:.4f}  val/top1 {metrics['val/top1']:.4f}  images/s {metrics['train/images_per_s']:.0f}",
                flush=True,
            )
            with tempfile.TemporaryDirectory() as d:
                meta = {**config["checkpoint_meta"], "epoch": epoch, "metrics": metrics}
                ckpt.save_local(d, model, meta)
                torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, os.path.join(d, "train_state.pt"))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d), checkpoint_dir_name=f"epoch_{epoch:04d}")
        else:
            ray.train.report(metrics)


def _epoch_history(result) -> list[dict]:
    """Per-epoch metrics (epoch, losses, accuracies, images/s) of the checkpoints Ray Train kept
    (`trainer.checkpoints_to_keep` of them: Ray Train 2.x keeps metrics only with retained checkpoints)."""
    try:
        df = result.metrics_dataframe
    except Exception:  # not every Ray version keeps it
        return []
    if df is None:
        return []
    keep = [c for c in ("epoch", "train/loss", "train/top1", "train/images_per_s", "val/loss", "val/top1") if c in df.columns]
    return [{k: (int(v) if k == "epoch" else round(float(v), 4)) for k, v in row.items()} for row in df[keep].to_dict("records")]


def train(cfg: Mapping[str, Any]) -> dict:
    """Train from a resolved config (plain dict). Returns a summary with the exported checkpoint URI."""
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t0 = time.perf_counter()
    init_ray(cfg["ray"])
    storage, data, t = cfg["storage"], cfg["data"], cfg["trainer"]
    spec = Preprocessing.from_dict(data["preprocessing"])
    if t["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"trainer.optimizer={t['optimizer']!r}; choose one of {list(OPTIMIZERS)}")
    classes = list(data["classes"])

    # [1] Decode once; augmentation below re-runs every epoch.
    def split(name: str):
        ds = decoded_catalog(data, spec.to_dict(), storage, split=name)
        return ds.map_batches(to_training, fn_kwargs={"classes": classes}, batch_format="numpy").materialize()

    train_ds, val_ds = split(data["train_split"]), split(data["val_split"])
    train_rows, val_rows = train_ds.count(), val_ds.count()
    if train_rows == 0 or val_rows == 0:
        raise ValueError(f"empty split: {train_rows} train rows ({data['train_split']!r}), {val_rows} val rows ({data['val_split']!r})")
    log.info("decoded %d train and %d val images in %.1fs", train_rows, val_rows, time.perf_counter() - t0)
    # [2] Augmentation as Ray Data CPU tasks, streamed into the workers each epoch.
    aug = t.get("augment") or {}
    train_aug = train_ds.randomize_block_order().map_batches(augment, fn_kwargs={"pad": int(aug.get("pad", 0)), "hflip": bool(aug.get("hflip", False))}, batch_format="numpy")

    run_name = t.get("run_name") or f"{cfg['model']['name']}-{new_run_id()}"
    storage_path = st.absolute(t["storage_path"])
    arrow_fs, storage_root = st.arrow_filesystem(storage_path, storage)
    meta = {
        "model": dict(cfg["model"]),
        "classes": classes,
        "preprocessing": spec.to_dict(),
        "task": "multiclass",
        "embedding_dim": build_model(cfg["model"], len(classes), spec.to_dict()).num_features,
        "data": {"manifest": data.get("manifest"), "train_rows": train_rows, "val_rows": val_rows},
        "trainer": st.redact(dict(t)),
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "trainer": dict(t),
            "model": dict(cfg["model"]),
            "classes": classes,
            "preprocessing": spec.to_dict(),
            "train_rows": train_rows,
            "checkpoint_meta": meta,
        },
        scaling_config=ScalingConfig(
            num_workers=int(t["num_workers"]),
            use_gpu=bool(t["use_gpu"]),
            resources_per_worker={"CPU": float(t["cpus_per_worker"]), **({"GPU": 1} if t["use_gpu"] else {})},
        ),
        datasets={"train": train_aug, "val": val_ds},
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_root,
            storage_filesystem=arrow_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=int(t["checkpoints_to_keep"]), checkpoint_score_attribute="val/top1", checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=int(t["max_failures"])),
        ),
    )
    result = trainer.fit()
    best = result.get_best_checkpoint(metric="val/top1", mode="max") or result.checkpoint
    if best is None:
        raise RuntimeError("training finished without a checkpoint")
    best_uri = f"{storage_path.split('://', 1)[0]}://{best.path}" if arrow_fs is not None else best.path
    export_uri = st.absolute(cfg["paths"]["model"])
    ckpt.copy(best_uri, export_uri, storage)
    meta_out = ckpt.read_meta(export_uri, storage)
    summary = {
        "checkpoint": export_uri,
        "model_id": ckpt.model_id_of(meta_out),
        "best_epoch": meta_out["epoch"] + 1,
        "val/top1": meta_out["metrics"]["val/top1"],
        "train_rows": train_rows,
        "val_rows": val_rows,
        "seconds": round(time.perf_counter() - t0, 1),
        "ray_checkpoints": st.join(storage_path, run_name),
        "retained_epochs": _epoch_history(result),  # metrics of the checkpoints Ray Train kept
    }
    print("train summary: " + json.dumps({k: v for k, v in summary.items() if k != "retained_epochs"}), flush=True)
    return summary

