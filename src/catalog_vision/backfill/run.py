"""Offline backfill: a whole catalog → one Parquet row per image.

[1] Read the catalog (manifest, or a listed prefix).
[2] Fetch and decode on CPU: in separate tasks when GPUs predict, inside the predictor actors on
    CPU (``predictor.decode_in``); bytes are dropped inside that step.
[3] Predict in an actor pool (``map_batches`` + ``ActorPoolStrategy``); GPUs by config.
[4] Commit Parquet files to ``<predictions>/<model_id>/<catalog_id>/<run_id>/`` (see :mod:`.sink`
    and :mod:`.tables`) and write a run manifest ``_run.json`` with the run's ``status``
    (:mod:`.outcome`). One run at a time per model and catalog: a lease (:mod:`.lease`) is taken
    before planning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from typing import Any, Mapping

from .. import checkpoint as ckpt
from .. import storage as st
from ..infer import startup
from ..infer.predictor import Predictor
from ..ingest.dataset import decode_catalog, rows_per_block, to_dataset
from ..ingest.images import Preprocessing
from ..runtime import init_ray, new_run_id
from ..storage.shared import check_shared
from . import lease as leases
from .actors import actor_fault_args, check_predictor, cluster_resource, decode_in, effective_predictor, tasks_in_flight
from .manifest import PRECISION_REPORTS, RUN_MANIFEST, collect_reports, write_dead_letter
from .outcome import BackfillFailed, TooManyErrors, find_cause, max_error_fraction, run_status
from .plan import batches_per_task, count_files, plan_run
from .sink import commit_batch, commit_memory, committed_files, remove_stale_temp_files, write_commit_record
from .tables import catalog_id, table_dir

log = logging.getLogger("catalog_vision")


def output_dir(predictions_root: str, model_id: str, catalog: str, run_id: str) -> str:
    """``<predictions>/<model_id>/<catalog_id>/<run_id>``: one run's folder in the model's table for a catalog."""
    return st.join(table_dir(predictions_root, model_id, catalog), run_id)


def backfill(cfg: Mapping[str, Any]) -> dict:
    """Run (or resume) a backfill from a resolved config (plain dict); returns the run manifest.

    Images already committed for this model and catalog (by any earlier run, finished or killed)
    are skipped, so a rerun after a crash, after an outage, or after images were added to the
    catalog, labels only the rest. A run that does not succeed raises :class:`.outcome.BackfillFailed`
    (its manifest, with ``status``, is in ``_run.json`` and on the exception).
    """
    run: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        try:
            manifest = _backfill(cfg, stack, run)
        except Exception as e:
            stopped = find_cause(e, (TooManyErrors, leases.LeaseLost))
            if stopped is None or "out" not in run:
                raise
            manifest = {**run["manifest_head"], "status": "failed", "reason": f"{type(stopped).__name__}: {stopped}"}
            st.write_json(st.join(run["out"], RUN_MANIFEST), manifest, run["storage"])
            raise BackfillFailed(f"backfill {manifest['run_id']} failed: {manifest['reason']}", manifest) from e
    if manifest["status"] != "succeeded":
        raise BackfillFailed(f"backfill {manifest['run_id']} {manifest['status']}: {manifest['reason']}", manifest)
    return manifest


def _backfill(cfg: Mapping[str, Any], stack: contextlib.ExitStack, run: dict) -> dict:
    import ray.data

    timings: dict[str, float | None] = {}
    t0, called_at = time.perf_counter(), time.time()
    storage, data = cfg["storage"], cfg["data"]
    check_predictor(cfg["predictor"])
    max_error_fraction(cfg["output"])
    init_ray(cfg["ray"])
    check_shared([cfg["paths"]["predictions"], cfg["paths"]["output"]], storage)  # commit tasks write from every node
    p = effective_predictor(cfg["predictor"], cluster_resource("GPU"), on_cluster=bool(cfg["ray"].get("address") or os.environ.get("RAY_ADDRESS")))

    checkpoint = st.absolute(p["checkpoint"])
    meta = ckpt.read_meta(checkpoint, storage)
    model_id = ckpt.model_id_of(meta)
    run_id = cfg.get("run_id") or new_run_id()
    catalog = catalog_id(data)
    model_dir = table_dir(cfg["paths"]["predictions"], model_id, catalog)
    out = output_dir(cfg["paths"]["predictions"], model_id, catalog, run_id)
    lease_cfg = cfg["output"].get("lease") or {}
    lease = stack.enter_context(leases.acquire(st.join(model_dir, leases.LEASE_NAME), run_id, storage, ttl_s=float(lease_cfg.get("ttl_s", 300)),
                                               wait_s=float(lease_cfg.get("wait_s", 0))))
    run.update(out=out, storage=storage, manifest_head={"run_id": run_id, "model_id": model_id, "catalog_id": catalog, "checkpoint": checkpoint, "output": out,
                                                        "config": st.redact(dict(cfg))})

    removed = remove_stale_temp_files(model_dir, storage)
    if removed:
        log.info("removed %d stale temp files under %s", removed, model_dir)
    # [1] The catalog, minus what this model has already committed.
    plan = plan_run(data, storage, model_dir)
    ids, todo, skipped = plan.ids, plan.todo, plan.skipped
    timings["plan_s"] = time.perf_counter() - t0
    log.info("backfill %s: %d images in the catalog, %d already labeled by %s, %d to do", run_id, len(ids), skipped, model_id, len(ids) - skipped)
    receipts = []
    if skipped < len(ids):
        # [2] Fetch + decode on CPU tasks, or in the predictor actors (decode_in=actors).
        in_actors = decode_in(p) == "actors"
        # Decoding in the actors, a block is catalog rows (bytes of metadata): whole batches per block
        # (plan.batches_per_task), so each actor task is a whole number of full batches. Blocks sized
        # by decoded bytes instead (55 rows at 224x224 RGB) were bundled two at a time into 110-row
        # tasks, a 64 + 46 batch pair: a partial batch per task and work handed out in coarse pieces.
        if in_actors:
            image_bytes = math.prod(Preprocessing.from_dict(meta["preprocessing"]).shape)
            p["batches_per_task"] = batches_per_task(p.get("batches_per_task"), int(p["batch_size"]), image_bytes, todo.num_rows, int(p["max_actors"]))
        ds = to_dataset(todo, int(p["batch_size"]) * p["batches_per_task"] if in_actors else rows_per_block(data, meta["preprocessing"]))
        if not in_actors:
            ds = decode_catalog(ds, data, meta["preprocessing"], storage, defer_jpeg=bool(p["jpeg_decode_on_device"]))
        # [3] Predict in an actor pool.
        ds = ds.map_batches(
            Predictor,
            fn_constructor_kwargs={
                "checkpoint": checkpoint,
                "storage": dict(storage),
                "device": p["device"],
                "dtype": p["dtype"],
                "topk": int(p["topk"]),
                "low_confidence_threshold": float(p["low_confidence_threshold"]),
                "run_id": run_id,
                "channels_last": bool(p["channels_last"]),
                "num_threads": p.get("threads_per_actor"),
                "pin_memory": bool(p.get("pin_memory")),
                "fetch_decode": in_actors,
                "defer_jpeg": bool(p["jpeg_decode_on_device"]),
                "tta": p.get("tta") or "none",
                "batch_size": int(p["batch_size"]),
                "dtype_cache_dir": p.get("dtype_cache_dir"),
                "report_to": st.join(out, PRECISION_REPORTS),
                "fold_bn": bool(p.get("fold_bn", True)),
                "model_batch": p.get("model_batch"),
            },
            compute=ray.data.ActorPoolStrategy(min_size=int(p["min_actors"]), max_size=int(p["max_actors"]), max_tasks_in_flight_per_actor=tasks_in_flight(p)),
            batch_size=int(p["batch_size"]),
            batch_format="numpy",
            num_gpus=float(p["num_gpus"]),
            num_cpus=float(p["cpus_per_actor"]),
            memory=float(p["memory_mb"]) * 2**20,
            **actor_fault_args(p),
        )
        # [4] Commit files of exactly output.rows_per_file rows (the last one: the rest), atomically.
        # A strict streaming repartition cuts the prediction stream into blocks of that size, one
        # file per block (map_batches' own batching leaves a short remainder file per bundle).
        ds = ds.repartition(target_num_rows_per_block=int(cfg["output"]["rows_per_file"]), strict=True)
        ds = ds.map_batches(
            commit_batch,
            fn_kwargs={
                "out_dir": out,
                "storage": dict(storage),
                "compression": cfg["output"]["compression"],
                "lease_uri": lease.uri,
                "lease_token": lease.token,
                "max_error_fraction": max_error_fraction(cfg["output"]),
            },
            batch_size=None,
            batch_format="pyarrow",
            zero_copy_batch=True,
            memory=commit_memory(int(cfg["output"]["rows_per_file"]), int(meta.get("embedding_dim") or 2048)),
        )
        receipts = list(ds.iter_rows())
        if cfg["ray"].get("log_stats"):
            log.info("Ray Data stats:\n%s", ds.stats())
    timings["pipeline_s"] = time.perf_counter() - t0
    reports = collect_reports(st.join(out, PRECISION_REPORTS), storage)
    precision_reports = [r for r in reports if r.get("kind") != "actor"]
    # When the first predictor actor was ready (wall clocks: the driver's and the actor's node's)
    timings["first_actor_ready_s"], actors = startup.summarize([r for r in reports if r.get("kind") == "actor"], called_at)

    files = [r["file"] for r in receipts if r["file"]]
    write_commit_record(out, receipts, storage)  # before _run.json: the next plan trusts it over a lagging LIST
    this_run = count_files(files, storage)
    dead_letter = (write_dead_letter(files, st.join(st.absolute(cfg["paths"]["output"]), "dead_letter", model_id, f"{run_id}.parquet"), storage)
                   if this_run["errors"] else None)
    total = count_files(committed_files(model_dir, storage), storage, restrict_to=ids)
    timings["total_s"] = time.perf_counter() - t0
    counts = {
        "inputs": len(ids),
        "skipped": skipped,
        "predicted": this_run["predicted"],
        "errors": this_run["errors"],
        "errors_by_class": this_run["errors_by_class"],
        "retry_later": sum(r["retry_later"] for r in receipts),
        "retry_later_sample": sorted({r["retry_sample"] for r in receipts if r["retry_sample"]})[:5],
        "files": len(files),
        "model_rows": total["rows"],
        "model_distinct_image_ids": total["distinct_image_ids"],
        "model_errors_by_class": total["errors_by_class"],
    }
    leases.check(lease.uri, lease.token, storage)  # a run that lost its lease mid-way must not report success
    status, reason = run_status(counts)
    if status != "succeeded":
        log.error("backfill %s %s: %s", run_id, status, reason)
    done_now = counts["predicted"] + counts["errors"]
    manifest = {
        "run_id": run_id,
        "status": status,
        "reason": reason,
        "model_id": model_id,
        "catalog_id": catalog,
        "checkpoint": checkpoint,
        "output": out,
        "dead_letter": dead_letter,
        "counts": counts,
        "predictor": {
            **{k: p[k] for k in ("device", "dtype", "num_gpus", "min_actors", "max_actors", "batch_size", "jpeg_decode_on_device")},
            "batches_per_task": p.get("batches_per_task") if decode_in(p) == "actors" else None,
            "decode_in": decode_in(p),
            # What the actors ran, e.g. "float32" (several values: hosts that chose differently)
            "resolved_dtype": ",".join(sorted({r["dtype"] for r in precision_reports})) or None,
            # dtype=auto on CPU: the measured per-image times behind the choice, per host
            "dtype_choice": next((r["auto"] for r in precision_reports if r.get("auto")), None),
            # model_batch=auto on CPU: images per model call each host chose, and its figures
            "model_batch": sorted({r.get("model_batch") or p["batch_size"] for r in precision_reports}) or None,
            "model_batch_choice": next((r["model_batch_auto"] for r in precision_reports if r.get("model_batch_auto")), None),
            "hosts": precision_reports,
            # The actors' start-up: how many started (restarts too), median seconds from process start to ready, and in __init__
            "actors": actors,
            # A GPU config that ran on CPU: what was asked, what ran, and why (None: as configured)
            "fallback": p.get("fallback"),
        },
        "stale_temp_files_removed": removed,
        "timings": {k: v if v is None else round(v, 2) for k, v in timings.items()},
        "images_per_s": round(done_now / max(1e-9, timings["pipeline_s"] - timings["plan_s"]), 1),
        "config": st.redact(dict(cfg)),
    }
    st.write_json(st.join(out, RUN_MANIFEST), manifest, storage)
    c = counts
    later = f" + {c['retry_later']} left for a rerun" if c["retry_later"] else ""
    print(
        f"backfill summary: {c['inputs']} inputs = {c['skipped']} already labeled + {c['predicted']} predicted + {c['errors']} errors "
        f"{json.dumps(c['errors_by_class'])}{later}; {manifest['images_per_s']} images/s; wrote {c['files']} Parquet files to {out}; "
        f"{model_id} now has {c['model_rows']} rows for this catalog",
        flush=True,
    )
    return manifest
