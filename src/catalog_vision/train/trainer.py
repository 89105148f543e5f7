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

import json
import logging
import time
from typing import Any, Mapping

from .. import checkpoint as ckpt
from .. import storage as st
from ..ingest.catalog import catalog_table
from ..ingest.dataset import decoded_catalog
from ..ingest.images import Preprocessing
from ..ingest.labels import resolve_classes, to_training
from ..models import build_model
from ..models import pretrained as pretrained_weights
from ..runtime import init_ray, new_run_id, verbose
from ..storage.shared import check_shared
from .loop import train_loop_per_worker
from .recipe import check_trainer, monitor_of

log = logging.getLogger("catalog_vision")


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
        log.warning("%d of %d %r rows left out of training: not decodable, or no known label (a backfill of that split lists each error)",
                    train_table.num_rows - train_rows, train_table.num_rows, data["train_split"])

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
