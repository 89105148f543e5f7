"""The report: metrics, files and the model card for one model on one labeled split."""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from typing import Any, Mapping

from .. import storage as st
from ..backfill.tables import catalog_id, table_dir
from ..storage.secrets import redact_command
from .card import model_card
from .files import report_files
from .metrics import ECE_BINS, top_confusions
from .scoring import row_counts, score
from .sources import from_checkpoint, from_predictions
from .truth import drop_unknown_classes, ground_truth

log = logging.getLogger("catalog_vision")

SOURCES = ("checkpoint", "predictions")
TASKS = ("multiclass", "multilabel")
MAX_LISTED = 100  # error / missing rows listed in metrics.json (all error rows go to errors.parquet)


def _default_output(cfg: Mapping[str, Any], model_id: str, split: str | None, source: str) -> str:
    name = split if split is not None else "all"
    if source == "predictions":
        name += "-predictions"  # beside the checkpoint report of the same split, not over it
    return st.join(st.absolute(cfg["paths"]["output"]), "report", model_id, name)


def evaluate(cfg: Mapping[str, Any], command: str | None = None) -> dict:
    """Evaluate a model on a labeled split and write the report; returns the metrics (``metrics.json``).

    ``cfg`` is the resolved config as plain containers (like :func:`~catalog_vision.backfill.run.backfill`).
    ``command`` is recorded in the model card (default: this process's command line).
    """
    t0 = time.perf_counter()
    e = dict(cfg.get("evaluate") or {})
    storage = cfg["storage"]
    source = e.get("source") or "checkpoint"
    if source not in SOURCES:
        raise ValueError(f"evaluate.source={source!r}; choose one of {list(SOURCES)}")
    split = e.get("split", "test")
    command = command or shlex.join(["python", *redact_command(sys.argv)])

    checkpoint, meta, model_id = _model(e, source, storage)
    pred_uri = _predictions_uri(cfg, e, source, model_id) if source == "predictions" else None
    task, classes, thresholds = _task_and_classes(cfg, e, meta)
    gt, gt_where = ground_truth(cfg, split, task)
    gt, unknown = drop_unknown_classes(gt, classes, task)
    if unknown:
        log.warning(
            "%d labeled images have classes the model does not know (%s): reported as unknown classes, not evaluated",
            sum(unknown.values()),
            dict(list(unknown.items())[:10]),
        )
    if gt.num_rows == 0:
        raise ValueError(
            f"every labeled image of split {split!r} has a class the model does not know: {dict(list(unknown.items())[:10])}; "
            f"the model's classes are {classes[:20]}"
        )
    gt_ids = {i: n for n, i in enumerate(gt.column("image_id").to_pylist())}

    if source == "checkpoint":
        got = from_checkpoint(cfg, e, checkpoint, split, gt_ids)
    else:
        got = from_predictions(cfg, pred_uri, classes, task, gt_ids)
        model_id = _predictions_model(got, model_id, pred_uri, checkpoint)
    n = len(got["image_ids"])
    if n == 0:
        raise ValueError(f"no labeled rows of split {split!r} could be evaluated ({len(got['errors'])} errors, {len(got['missing'])} without predictions)")

    scored = score(task, source, gt, gt_ids, got, classes, thresholds, int(e.get("ece_bins") or ECE_BINS))
    m = scored["metrics"]
    output = st.absolute(e["output"]) if e.get("output") else _default_output(cfg, model_id, split, source)
    model_name = ((meta or {}).get("model") or {}).get("name") or model_id.rsplit("-", 1)[0]
    files, figures = report_files(
        task, m, classes, got, scored, meta, model_name, f"{model_name} ({model_id}) on {split or 'all labeled rows'}, N={n}", model_id
    )
    counts = row_counts(gt_ids, n, got, unknown)
    metrics = {
        "model_id": model_id,
        "model_name": model_name,
        "task": task,
        "source": source,
        "split": split,
        "checkpoint": checkpoint,
        "predictions": pred_uri,
        "ground_truth": gt_where,
        "classes": classes,
        "counts": counts,
        "metrics": {k: v for k, v in m.items() if k not in ("per_class", "confusion_matrix", "reliability", "task", "n", "thresholds")},
        "per_class": {r["class"]: {k: v for k, v in r.items() if k != "class"} for r in m["per_class"]},
        "reliability": m["reliability"],
        "approximate": scored["approximate"],
        "notes": scored["notes"],
        "error_rows": got["errors"][:MAX_LISTED],
        "missing_rows": got["missing"][:MAX_LISTED],
        "output": output,
        "command": command,
        "config": st.redact(dict(cfg)),
    }
    if task == "multiclass":
        metrics["confusion_matrix"] = {"classes": classes, "counts": m["confusion_matrix"]}
        metrics["top_confusions"] = top_confusions(m["confusion_matrix"], classes, int(e.get("top_confusions") or 5))
    else:
        metrics["thresholds"] = m["thresholds"]
    metrics["files"] = sorted([*files, "metrics.json", "model_card.md"])
    files["model_card.md"] = model_card(metrics, meta, figures, e).encode()
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    files["metrics.json"] = json.dumps(metrics, indent=2, default=str).encode()
    for name, data in files.items():
        st.write_bytes(st.join(output, name), data, storage)
    print("evaluate summary: " + json.dumps(_summary(metrics, m, n)), flush=True)
    return metrics


def _model(e: Mapping[str, Any], source: str, storage: Mapping[str, Any]) -> tuple[str | None, dict | None, str | None]:
    """The checkpoint, its meta (task, classes, thresholds, how it was trained) and its model_id."""
    from .. import checkpoint as ckpt

    checkpoint = st.absolute(e["checkpoint"]) if e.get("checkpoint") else None
    meta: dict | None = None
    if checkpoint is None:
        if source == "checkpoint":
            raise ValueError("evaluate.source=checkpoint needs evaluate.checkpoint (a checkpoint directory, local or s3://)")
    elif st.exists(st.join(checkpoint, ckpt.META), storage) or source == "checkpoint":
        meta = ckpt.read_meta(checkpoint, storage)  # FileNotFoundError names the path
    elif source == "predictions":
        log.warning("no checkpoint at %s: the report describes the model from the predictions and data.classes only", checkpoint)
        checkpoint = None
    return checkpoint, meta, ckpt.model_id_of(meta) if meta else None


def _predictions_uri(cfg: Mapping[str, Any], e: Mapping[str, Any], source: str, model_id: str | None) -> str:
    pred_uri = e.get("predictions") or (table_dir(cfg["paths"]["predictions"], model_id, catalog_id(cfg["data"])) if model_id else None)
    if not pred_uri:
        raise ValueError(
            "evaluate.source=predictions needs evaluate.predictions (a backfill run folder or <predictions>/<model_id>/<catalog_id>) "
            "or a checkpoint to find them"
        )
    pred_uri = st.absolute(pred_uri)
    if not st.exists(pred_uri, cfg["storage"]):
        raise FileNotFoundError(f"evaluate.predictions={pred_uri!r} does not exist; run jobs/backfill.py first or point it at a run folder")
    return pred_uri


def _predictions_model(got: Mapping[str, Any], model_id: str | None, pred_uri: str, checkpoint: str | None) -> str:
    """The model the predictions are from; it must be the checkpoint's when one was given."""
    if model_id is None:
        return got["model_ids"][0] if got["model_ids"] else "unknown-model"
    if got["model_ids"] and got["model_ids"] != [model_id]:
        raise ValueError(
            f"predictions under {pred_uri!r} are from {got['model_ids'][0]} but evaluate.checkpoint={checkpoint!r} is {model_id}; "
            "point evaluate.checkpoint at that model's checkpoint, or set evaluate.checkpoint=null"
        )
    return model_id


def _task_and_classes(cfg: Mapping[str, Any], e: Mapping[str, Any], meta: Mapping[str, Any] | None) -> tuple[str, list[str], list[float] | None]:
    task = (meta or {}).get("task") or e.get("task") or "multiclass"
    if task not in TASKS:
        raise ValueError(f"task {task!r} (checkpoint meta or evaluate.task); choose one of {list(TASKS)}")
    classes = list((meta or {}).get("classes") or cfg["data"]["classes"])
    thresholds = None
    if task == "multilabel":
        raw = (meta or {}).get("thresholds", e.get("thresholds"))
        thresholds = [0.5] * len(classes) if raw is None else ([float(raw)] * len(classes) if isinstance(raw, (int, float)) else [float(t) for t in raw])
        if len(thresholds) != len(classes):
            raise ValueError(f"{len(thresholds)} thresholds for {len(classes)} classes")
    return task, classes, thresholds


def _summary(metrics: Mapping[str, Any], m: Mapping[str, Any], n: int) -> dict:
    """The one-line summary the job prints: counts and the headline metrics."""
    multiclass = metrics["task"] == "multiclass"
    keys = (
        ("top1", "top5", "f1_macro", "f1_weighted", "roc_auc_macro", "ece")
        if multiclass
        else ("hamming_loss", "subset_accuracy", "f1_micro", "f1_macro", "roc_auc_macro", "ece")
    )
    counts = metrics["counts"]
    return {
        **{k: metrics[k] for k in ("model_id", "task", "source", "split")},
        "evaluated": n,
        "errors": counts["errors"],
        "missing": counts["missing"],
        **({"unknown_class": counts["unknown_class"]} if counts["unknown_class"] else {}),
        **{k: (round(m.get(k), 4) if isinstance(m.get(k), float) else m.get(k)) for k in keys},
        "output": metrics["output"],
    }
