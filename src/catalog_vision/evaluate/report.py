"""The report: metrics, files and the model card for one model on one labeled split."""

from __future__ import annotations

import io
import json
import logging
import shlex
import sys
import time
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage as st
from ..storage.secrets import redact_command
from ..backfill.tables import catalog_id, table_dir
from .card import model_card
from .figures import plot_confusion, plot_history, plot_reliability, plot_roc
from .metrics import ECE_BINS, multiclass_metrics, multilabel_metrics, top_confusions
from .sources import from_checkpoint, from_predictions
from .truth import binarize, class_index, drop_unknown_classes, ground_truth

log = logging.getLogger("catalog_vision")

SOURCES = ("checkpoint", "predictions")
TASKS = ("multiclass", "multilabel")
MAX_LISTED = 100  # error / missing rows listed in metrics.json (all error rows go to errors.parquet)


def _table_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


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

    scored = _score(task, source, gt, gt_ids, got, classes, thresholds, int(e.get("ece_bins") or ECE_BINS))
    m = scored["metrics"]
    output = st.absolute(e["output"]) if e.get("output") else _default_output(cfg, model_id, split, source)
    model_name = ((meta or {}).get("model") or {}).get("name") or model_id.rsplit("-", 1)[0]
    files, figures = _report_files(
        task, m, classes, got, scored, meta, model_name, f"{model_name} ({model_id}) on {split or 'all labeled rows'}, N={n}", model_id
    )
    counts = _counts(gt_ids, n, got, unknown)
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


def _score(
    task: str, source: str, gt: pa.Table, gt_ids: dict[str, int], got: Mapping[str, Any], classes: list[str], thresholds: list[float] | None, n_bins: int
) -> dict:
    """The metrics of the evaluated rows against their ground truth, which figures are approximate, and notes."""
    order = np.array([gt_ids[i] for i in got["image_ids"]], dtype=np.int64)
    notes: list[str] = []
    approximate: dict[str, bool] = {}
    k = got["topk"]
    if task == "multiclass":
        y_true = class_index(gt.column("label").take(pa.array(order)), classes, "manifest labels")
        m = multiclass_metrics(y_true, got["probs"], classes, y_pred=got["y_pred"], topk_scores=got["rank_scores"], n_bins=n_bins)
        if source == "predictions":
            approximate = {"top1": False, "top5": False, "per_class": False, "confusion_matrix": False, "ece": False, "roc_auc": k < len(classes)}
            if m["top5"] is not None and k < 5:
                m["top5"] = None
                notes.append(f"top-5 accuracy is not reported: the predictions store only the top-{k} classes per image.")
            if k < len(classes):
                notes.append(
                    f"Built from a backfill's Parquet, which stores the top-{k} of {len(classes)} class probabilities per image: "
                    "classes outside the top-k are given probability 0, so ROC-AUC is approximate (it cannot rank images "
                    "whose score for a class fell outside the top-k). Top-1, precision/recall/F1, the confusion matrix and ECE "
                    "(top-1 confidence) are exact."
                )
        if m["top5"] is None and len(classes) <= 5:
            notes.append(f"top-5 accuracy is not reported: the model has only {len(classes)} classes.")
        return {"metrics": m, "approximate": approximate, "notes": notes, "y_bin": np.eye(len(classes), dtype=int)[y_true]}
    y_true_bin = binarize([gt.column("labels")[int(j)].as_py() for j in order], classes, "manifest labels")
    y_pred_bin = binarize(got["pred_labels"], classes, "predicted labels") if got.get("pred_labels") is not None else None
    m = multilabel_metrics(y_true_bin, got["probs"], thresholds, classes, y_pred_bin=y_pred_bin, n_bins=n_bins)
    if source == "predictions":
        approximate = {"per_class": y_pred_bin is None and k < len(classes), "roc_auc": k < len(classes), "ece": k < len(classes)}
        notes.append(
            (
                "Predicted labels are the backfill's `labels` column (labels above their thresholds)."
                if y_pred_bin is not None
                else "Predicted labels are the stored top-k scores above their thresholds."
            )
            + (
                f" Scores exist only for each image's top-{k} of {len(classes)} labels (others count as 0), so ROC-AUC and ECE are approximate."
                if k < len(classes)
                else ""
            )
        )
    return {"metrics": m, "approximate": approximate, "notes": notes, "y_bin": y_true_bin}


def _counts(gt_ids: Mapping[str, int], n: int, got: Mapping[str, Any], unknown: Mapping[str, int]) -> dict:
    """Every labeled row of the split is evaluated, an error row, or missing from the predictions."""
    error_classes: dict[str, int] = {}
    for r in got["errors"]:
        c = r["error"].split(":", 1)[0]
        error_classes[c] = error_classes.get(c, 0) + 1
    return {
        "labeled": len(gt_ids),
        "evaluated": n,
        "errors": len(got["errors"]),
        "errors_by_class": dict(sorted(error_classes.items())),
        "missing": len(got["missing"]),
        "unlabeled_skipped": got["unlabeled"],
        "unknown_class": sum(unknown.values()),
        "unknown_classes": dict(unknown),
    }


def _report_files(
    task: str,
    m: Mapping[str, Any],
    classes: list[str],
    got: Mapping[str, Any],
    scored: Mapping[str, Any],
    meta: Mapping[str, Any] | None,
    model_name: str,
    title: str,
    model_id: str,
) -> tuple[dict[str, bytes], dict[str, str]]:
    """The report's tables and PNG figures (``{name: bytes}``) and the figures' captions; adds a note when
    the checkpoint has no training history."""
    files: dict[str, bytes] = {}
    figures: dict[str, str] = {}
    per_class = m["per_class"]
    pc_cols = ["class", "precision", "recall", "f1", "support", "roc_auc"] + (["threshold", "tp", "fp", "fn", "tn"] if task == "multilabel" else [])
    pc_types = {c: pa.string() if c == "class" else pa.int64() if c in ("support", "tp", "fp", "fn", "tn") else pa.float64() for c in pc_cols}
    files["per_class.parquet"] = _table_bytes(pa.table({c: [r[c] for r in per_class] for c in pc_cols}, schema=pa.schema(list(pc_types.items()))))
    if task == "multiclass":
        cm = np.asarray(m["confusion_matrix"])
        files["confusion_matrix.parquet"] = _table_bytes(_confusion_table(cm, classes))
        files["confusion_matrix.png"] = plot_confusion(cm, classes, f"Confusion matrix: {title}")
        figures["confusion_matrix.png"] = "Confusion matrix (colour: fraction of the true class; numbers: image counts)"
        files["reliability.png"] = plot_reliability(m["reliability"], f"Reliability: {title}")
    else:
        files["reliability.png"] = plot_reliability(
            m["reliability"], f"Reliability: {title}", xlabel="predicted probability of a label", ylabel="fraction present"
        )
    figures["reliability.png"] = "Reliability diagram and histogram of confidences"
    if m["roc_auc_classes"]:
        files["roc.png"] = plot_roc(scored["y_bin"], got["probs"], classes, [r["roc_auc"] for r in per_class], f"One-vs-rest ROC: {title}")
        figures["roc.png"] = ("One-vs-rest ROC curves" if task == "multiclass" else "Per-label ROC curves") + (
            " (approximate: top-k scores only)" if scored["approximate"].get("roc_auc") else ""
        )
    history = (meta or {}).get("history")
    if history:
        files["training_curves.png"] = plot_history(history, f"Training curves: {model_name} ({model_id})")
        figures["training_curves.png"] = "Training curves (train and validation, per epoch)"
    else:
        scored["notes"].append(
            "No training curves: the checkpoint has no per-epoch `history` (only the best epoch's `metrics`)."
            if meta
            else "No training curves: no checkpoint was given."
        )
    if got["errors"]:
        errors = {"image_id": [r["image_id"] for r in got["errors"]], "error": [r["error"] for r in got["errors"]]}
        files["errors.parquet"] = _table_bytes(pa.table({k: pa.array(v, pa.string()) for k, v in errors.items()}))
    return files, figures


def _confusion_table(cm: np.ndarray, classes: list[str]) -> pa.Table:
    kk = len(classes)
    row_tot = cm.sum(1)
    return pa.table(
        {
            "true": pa.array([classes[i] for i in range(kk) for _ in range(kk)], pa.string()),
            "predicted": pa.array([classes[j] for _ in range(kk) for j in range(kk)], pa.string()),
            "count": pa.array(cm.reshape(-1), pa.int64()),
            "fraction_of_true": pa.array([float(cm[i, j] / row_tot[i]) if row_tot[i] else None for i in range(kk) for j in range(kk)], pa.float64()),
        }
    )


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
