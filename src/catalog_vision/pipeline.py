"""The whole chain in one Ray session: catalog → train → backfill → query summary → evaluation report."""

from __future__ import annotations

import time
from typing import Any, Mapping

from .backfill import backfill
from .catalogs import make_catalog
from .evaluate import evaluate
from .query import print_summary, summarize
from .train import train


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
    print(f"pipeline done in {steps['seconds']}s: model {steps['train']['model_id']} -> {steps['backfill']['output']}", flush=True)
    return steps
