"""The whole chain in one Ray session: catalog → train → backfill → query summary → evaluation report."""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

from . import storage as st
from .backfill.run import backfill
from .catalogs import make_catalog
from .evaluate import evaluate
from .backfill.query import print_summary, summarize
from .train.trainer import train


def run_pipeline(cfg: Mapping[str, Any], command: str | None = None) -> dict:
    t0 = time.perf_counter()
    cfg = dict(cfg)
    steps = {}
    steps["catalog"] = make_catalog(cfg)
    steps["train"] = train(cfg)
    bf_cfg = {**cfg, "predictor": {**cfg["predictor"], "checkpoint": steps["train"]["checkpoint"]}}
    steps["backfill"] = backfill(bf_cfg)
    steps["query"] = summarize(steps["backfill"]["output"], cfg["data"]["manifest"], cfg["storage"])
    print_summary(steps["query"])
    # The report on the labeled split the backfill labeled, from the model itself (full probabilities).
    ev = {**cfg["evaluate"], "source": "checkpoint", "checkpoint": steps["train"]["checkpoint"], "split": cfg["data"]["split"]}
    steps["evaluate"] = evaluate({**cfg, "evaluate": ev}, command=command)
    steps["seconds"] = round(time.perf_counter() - t0, 1)
    steps["summary_file"] = write_summary(cfg, steps)
    print(f"pipeline done in {steps['seconds']}s: model {steps['train']['model_id']} -> {steps['backfill']['output']}", flush=True)
    return steps


def write_summary(cfg: Mapping[str, Any], steps: Mapping[str, Any]) -> str:
    """``<paths.output>/pipeline.json``: the figures of this run (what the demo's result file is made from)."""
    train, bf, query = steps["train"], steps["backfill"], steps["query"]
    metric = next((k for k in train if k.startswith("val/")), None)
    summary = {
        "model_id": train["model_id"],
        "model": cfg["model"]["name"],
        "epochs": train["epochs_run"],
        "split": cfg["data"]["split"],
        "accuracy": query.get("accuracy"),
        "labeled_rows": query.get("labeled_rows"),
        "best_val_metric": metric,
        "best_val": train.get(metric),
        "best_epoch": train["best_epoch"],
        "train_images_per_s": [round(e["train/images_per_s"]) for e in train["history"] if "train/images_per_s" in e],
        "backfill_images_per_s": bf["images_per_s"],
        "backfill_images": bf["counts"]["predicted"] + bf["counts"]["errors"],
        "seconds": {"catalog": steps["catalog"].get("seconds"), "train": train["seconds"], "backfill": bf["timings"]["total_s"], "all": steps["seconds"]},
    }
    uri = st.join(st.absolute(cfg["paths"]["output"]), "pipeline.json")
    st.write_bytes(uri, json.dumps(summary, indent=1).encode(), cfg["storage"])
    return uri
