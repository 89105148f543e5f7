"""The report's files other than ``metrics.json`` and the model card: per-class and confusion tables,
the error rows, and the PNG figures with their captions, as ``{name: bytes}``."""

from __future__ import annotations

import io
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .figures import plot_confusion, plot_history, plot_reliability, plot_roc


def _table_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def report_files(
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
