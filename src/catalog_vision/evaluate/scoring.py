"""Scoring the evaluated rows against their ground truth: the metrics, which of them are approximate
(a backfill's Parquet keeps only each image's top-k scores) with notes saying why, and the row counts."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pyarrow as pa

from .metrics import multiclass_metrics, multilabel_metrics
from .truth import binarize, class_index


def score(
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


def row_counts(gt_ids: Mapping[str, int], n: int, got: Mapping[str, Any], unknown: Mapping[str, int]) -> dict:
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
