"""Offline backfill: a whole catalog → one Parquet row per image.

[1] Read the catalog (manifest, or a listed prefix).
[2] Fetch and decode on CPU tasks; bytes are dropped inside that step.
[3] Predict in an actor pool (``map_batches`` + ``ActorPoolStrategy``); GPUs by config.
[4] Write Parquet to ``<predictions>/<model_id>/<run_id>/`` and a run manifest ``_run.json``.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from typing import Any, Mapping

import pyarrow.dataset as pads

from . import checkpoint as ckpt
from . import storage as st
from .data import decoded_catalog, read_catalog
from .infer import DTYPES, Predictor
from .runtime import init_ray, new_run_id

log = logging.getLogger("catalog_vision")

RUN_MANIFEST = "_run.json"


def output_dir(predictions_root: str, model_id: str, run_id: str) -> str:
    return st.join(st.absolute(predictions_root), model_id, run_id)


def backfill(cfg: Mapping[str, Any]) -> dict:
    """Run a backfill from a resolved config (plain dict); returns the run manifest."""
    import ray.data

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    storage, data, p = cfg["storage"], cfg["data"], cfg["predictor"]
    if p["dtype"] not in DTYPES:
        raise ValueError(f"predictor.dtype={p['dtype']!r}; choose one of {sorted(DTYPES)}")
    if p["device"] not in ("auto", "cpu", "cuda"):
        raise ValueError(f"predictor.device={p['device']!r}; choose one of ['auto', 'cpu', 'cuda']")
    init_ray(cfg["ray"])

    checkpoint = st.absolute(p["checkpoint"])
    meta = ckpt.read_meta(checkpoint, storage)
    model_id = ckpt.model_id_of(meta)
    run_id = cfg.get("run_id") or new_run_id()
    out = output_dir(cfg["paths"]["predictions"], model_id, run_id)
    fs, out_path = st.resolve(out, storage)
    if fs.exists(out_path) and fs.ls(out_path):
        raise FileExistsError(f"{out} already holds output; choose a new run_id")

    # [1] + [2]
    inputs = read_catalog(data, storage, split=data.get("split")).count()
    ds = decoded_catalog(data, meta["preprocessing"], storage, split=data.get("split"))
    # [3]
    num_gpus = float(p["num_gpus"])
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
        },
        compute=ray.data.ActorPoolStrategy(min_size=int(p["min_actors"]), max_size=int(p["max_actors"])),
        batch_size=int(p["batch_size"]),
        batch_format="numpy",
        num_gpus=num_gpus,
        num_cpus=float(p["cpus_per_actor"]),
        memory=float(p["memory_mb"]) * 2**20,
    )
    # [4]
    arrow_fs, write_path = st.arrow_filesystem(out, storage)
    ds.write_parquet(write_path, filesystem=arrow_fs, min_rows_per_file=int(cfg["output"]["min_rows_per_file"]), compression=cfg["output"]["compression"])
    timings["pipeline_s"] = time.perf_counter() - t0

    counts = count_output(out, storage)
    counts["inputs"] = inputs
    if counts["rows"] != inputs or counts["distinct_image_ids"] != inputs:
        log.error("row count mismatch: %d inputs, %d rows, %d distinct image_ids", inputs, counts["rows"], counts["distinct_image_ids"])
    timings["total_s"] = time.perf_counter() - t0
    manifest = {
        "run_id": run_id,
        "model_id": model_id,
        "checkpoint": checkpoint,
        "output": out,
        "counts": counts,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "images_per_s": round(counts["inputs"] / max(1e-9, timings["pipeline_s"]), 1),
        "config": st.redact(dict(cfg)),
    }
    st.write_json(st.join(out, RUN_MANIFEST), manifest, storage)
    c = counts
    print(
        f"backfill summary: {c['inputs']} inputs = {c['predicted']} predicted + {c['errors']} errors "
        f"{json.dumps(c['errors_by_class'])}; {manifest['images_per_s']} images/s; wrote {c['files']} Parquet files to {out}",
        flush=True,
    )
    return manifest


def count_output(out: str, storage: Mapping[str, Any] | None = None) -> dict:
    """Counts read back from the written Parquet (what readers will see, not what we meant to write)."""
    fs, path = st.resolve(out, storage)
    files = sorted(f for f in fs.find(path) if f.endswith(".parquet"))
    dataset = pads.dataset(files, filesystem=fs, format="parquet")
    table = dataset.to_table(columns=["image_id", "error"])
    errors = [e for e in table.column("error").to_pylist() if e is not None]
    by_class = collections.Counter(e.split(":", 1)[0] for e in errors)
    ids = table.column("image_id")
    return {
        "rows": table.num_rows,
        "predicted": table.num_rows - len(errors),
        "errors": len(errors),
        "errors_by_class": dict(sorted(by_class.items())),
        "distinct_image_ids": len(set(ids.to_pylist())),
        "files": len(files),
    }
