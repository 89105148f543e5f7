"""Metrics: pure functions over arrays; scikit-learn does the arithmetic."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

ECE_BINS = 15


def _num(x: Any) -> float | None:
    """JSON-safe float: NaN/inf become None."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def reliability(outcome: np.ndarray, confidence: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """Calibration in ``n_bins`` equal-width bins on [0, 1], and the expected calibration error.

    ``outcome`` is 1 where the prediction was right (multiclass: top-1 correct; multilabel: the label
    is present), ``confidence`` the predicted probability of that event. Per-bin accuracy and mean
    confidence come from :func:`sklearn.calibration.calibration_curve` (``strategy="uniform"``); the
    per-bin counts use the same bin assignment (``searchsorted`` on the inner edges), so
    ``ECE = sum_b n_b / N * |accuracy_b - confidence_b|`` over the non-empty bins.
    """
    from sklearn.calibration import calibration_curve

    outcome = np.asarray(outcome, dtype=int)
    confidence = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)  # float32 softmax can be 1+eps
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=n_bins)
    n = int(counts.sum())
    if n == 0:
        return {"n_bins": n_bins, "edges": edges.tolist(), "count": counts.tolist(), "accuracy": [None] * n_bins, "confidence": [None] * n_bins, "ece": None}
    acc_ne, conf_ne = calibration_curve(outcome, confidence, n_bins=n_bins, strategy="uniform")
    nonempty = counts > 0
    acc = np.full(n_bins, np.nan)
    conf = np.full(n_bins, np.nan)
    acc[nonempty], conf[nonempty] = acc_ne, conf_ne
    ece = float(np.sum(counts[nonempty] / n * np.abs(acc_ne - conf_ne)))
    return {
        "n_bins": n_bins,
        "edges": edges.tolist(),
        "count": counts.tolist(),
        "accuracy": [_num(a) for a in acc],
        "confidence": [_num(c) for c in conf],
        "ece": ece,
    }


def _roc_auc_per_class(y_bin: np.ndarray, scores: np.ndarray) -> list[float | None]:
    """One-vs-rest ROC-AUC per column; None where the split has only positives or only negatives."""
    from sklearn.metrics import roc_auc_score

    out: list[float | None] = []
    for c in range(y_bin.shape[1]):
        col = y_bin[:, c]
        out.append(float(roc_auc_score(col, scores[:, c])) if 0 < col.sum() < len(col) else None)
    return out


def _macro(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def multiclass_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    y_pred: np.ndarray | None = None,
    topk_scores: np.ndarray | None = None,
    n_bins: int = ECE_BINS,
) -> dict:
    """Metrics of a single-label classifier.

    ``y_true`` class indices ``(N,)``; ``probs`` ``(N, K)`` class probabilities (rows may be
    incomplete, e.g. zeros outside a stored top-k). ``y_pred`` defaults to ``probs.argmax(1)``;
    ``topk_scores`` (defaults to ``probs``) is the matrix ranked for top-5 accuracy (pass rank scores
    when only a top-k list is known, so ties among the unknown zeros cannot count as hits).
    Macro/weighted F1 average over the classes present in ``y_true`` or ``y_pred`` (scikit-learn's
    default); one-vs-rest ROC-AUC macro is the mean of the per-class AUCs that are defined.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, top_k_accuracy_score
    from sklearn.preprocessing import label_binarize

    classes = list(classes)
    k = len(classes)
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = probs.argmax(1) if y_pred is None else np.asarray(y_pred, dtype=np.int64)
    labels = np.arange(k)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    # label_binarize gives one column for K=2; build the indicator matrix for any K.
    y_bin = label_binarize(y_true, classes=labels) if k > 2 else np.eye(k, dtype=int)[y_true]
    auc = _roc_auc_per_class(y_bin, probs)
    top5 = None
    if k > 5:
        top5 = float(top_k_accuracy_score(y_true, probs if topk_scores is None else topk_scores, k=5, labels=labels))
    confidence = probs[np.arange(len(y_true)), y_pred]
    rel = reliability(y_true == y_pred, confidence, n_bins)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    return {
        "task": "multiclass",
        "n": int(len(y_true)),
        "top1": float(accuracy_score(y_true, y_pred)),
        "top5": top5,
        "precision_macro": float(precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)[0]),
        "recall_macro": float(precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)[1]),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "roc_auc_macro": _macro(auc),
        "roc_auc_classes": sum(a is not None for a in auc),
        "ece": rel["ece"],
        "per_class": [
            {"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s), "roc_auc": a}
            for c, p, r, f, s, a in zip(classes, precision, recall, f1, support, auc)
        ],
        "confusion_matrix": cm.tolist(),
        "reliability": rel,
    }


def multilabel_metrics(
    y_true_bin: np.ndarray,
    probs: np.ndarray,
    thresholds: Sequence[float] | float,
    classes: Sequence[str],
    y_pred_bin: np.ndarray | None = None,
    n_bins: int = ECE_BINS,
) -> dict:
    """Metrics of a multi-label classifier (independent sigmoid per label).

    ``y_true_bin`` ``(N, K)`` 0/1; ``probs`` ``(N, K)`` per-label probabilities. A label is predicted
    where ``probs >= threshold`` of that label, unless ``y_pred_bin`` (e.g. a backfill's ``labels``
    column) is given. ECE treats every (image, label) pair as one binary forecast: the reliability
    diagram shows the fraction of pairs where the label is present against the predicted probability.
    """
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss, multilabel_confusion_matrix, precision_recall_fscore_support

    classes = list(classes)
    y_true_bin = np.asarray(y_true_bin, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(classes),))
    y_pred_bin = (probs >= thr[None, :]).astype(int) if y_pred_bin is None else np.asarray(y_pred_bin, dtype=int)
    precision, recall, f1, support = precision_recall_fscore_support(y_true_bin, y_pred_bin, average=None, zero_division=0)
    mcm = multilabel_confusion_matrix(y_true_bin, y_pred_bin)  # (K, 2, 2): [[tn, fp], [fn, tp]]
    auc = _roc_auc_per_class(y_true_bin, probs)
    rel = reliability(y_true_bin.ravel(), probs.ravel(), n_bins)
    return {
        "task": "multilabel",
        "n": int(len(y_true_bin)),
        "hamming_loss": float(hamming_loss(y_true_bin, y_pred_bin)),
        "subset_accuracy": float(accuracy_score(y_true_bin, y_pred_bin)),
        "f1_micro": float(f1_score(y_true_bin, y_pred_bin, average="micro", zero_division=0)),
        "f1_macro": float(f1_score(y_true_bin, y_pred_bin, average="macro", zero_division=0)),
        "precision_micro": float(precision_recall_fscore_support(y_true_bin, y_pred_bin, average="micro", zero_division=0)[0]),
        "recall_micro": float(precision_recall_fscore_support(y_true_bin, y_pred_bin, average="micro", zero_division=0)[1]),
        "roc_auc_macro": _macro(auc),
        "roc_auc_classes": sum(a is not None for a in auc),
        "ece": rel["ece"],
        "thresholds": {c: float(t) for c, t in zip(classes, thr)},
        "per_class": [
            {
                "class": c,
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(s),
                "roc_auc": a,
                "threshold": float(t),
                "tp": int(m[1, 1]),
                "fp": int(m[0, 1]),
                "fn": int(m[1, 0]),
                "tn": int(m[0, 0]),
            }
            for c, p, r, f, s, a, t, m in zip(classes, precision, recall, f1, support, auc, thr, mcm)
        ],
        "reliability": rel,
    }


def top_confusions(cm: np.ndarray | list, classes: Sequence[str], n: int = 5) -> list[dict]:
    """The largest off-diagonal cells of a confusion matrix: ``true → predicted`` with counts."""
    cm = np.asarray(cm)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None, kind="stable")[::-1]
    out = []
    for flat in order[:n]:
        i, j = np.unravel_index(flat, off.shape)
        if off[i, j] <= 0:
            break
        row = int(cm[i].sum())
        out.append({"true": classes[i], "predicted": classes[j], "count": int(off[i, j]), "fraction_of_true": float(off[i, j] / row) if row else None})
    return out
