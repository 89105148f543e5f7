"""The evaluation report: how good is a checkpoint on a labeled split, and where does it fail?

Two sources of predictions (``evaluate.source``):

* ``checkpoint`` — run the checkpoint on the labeled split (``evaluate.split``) of the catalog:
  Ray Data fetches and decodes the images, the driver runs :class:`~catalog_vision.infer.Predictor`
  and keeps the **full** class-probability vectors.
* ``predictions`` — a backfill's Parquet joined on ``image_id`` with the manifest's labels. Only
  ``topk_labels``/``topk_scores`` are stored, so the probability matrix has zeros outside the top-k:
  top-1, precision/recall/F1, the confusion matrix and ECE (top-1 confidence) are exact; ROC-AUC is
  approximate unless k equals the number of classes. The report says which numbers are approximate.

The report goes to ``evaluate.output`` (default ``<paths.output>/report/<model_id>/<split>``; local
folder or ``s3://``): ``metrics.json``, ``per_class.parquet``, ``confusion_matrix.parquet``
(multiclass), ``errors.parquet`` (rows that failed to decode, if any), PNG figures and
``model_card.md``. Every metric comes from scikit-learn; figures are drawn with matplotlib's Agg
canvas (no display, no global pyplot state).
"""

from __future__ import annotations

import io
import json
import logging
import math
import shlex
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import storage as st
from .tables import catalog_id, table_dir

log = logging.getLogger("catalog_vision")

SOURCES = ("checkpoint", "predictions")
TASKS = ("multiclass", "multilabel")
ECE_BINS = 15
MAX_LISTED = 100  # error / missing rows listed in metrics.json (all error rows go to errors.parquet)


# --------------------------------------------------------------------------------------------
# Metrics (pure functions over arrays; scikit-learn does the arithmetic)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg canvas)
# --------------------------------------------------------------------------------------------


def _new_figure(**kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def _png(fig, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def plot_confusion(cm: np.ndarray | list, classes: Sequence[str], title: str = "Confusion matrix") -> bytes:
    """Heat map, colour = row-normalised fraction (recall per true class), counts annotated.

    Class names label both axes up to 60 classes; counts are written in the cells up to 30.
    """
    cm = np.asarray(cm)
    k = len(classes)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    side = float(min(max(6.0, 0.6 * k + 2.5), 40.0))
    fig = _new_figure(figsize=(side + 1.5, side))
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class (row-normalised)")
    if k <= 60:
        ax.set_xticks(range(k), labels=list(classes), rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(k), labels=list(classes))
    if k <= 30:
        size = 9 if k <= 12 else 7 if k <= 20 else 5
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=size, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    return _png(fig)


def plot_reliability(rel: Mapping[str, Any], title: str, xlabel: str = "confidence (top-1 probability)", ylabel: str = "accuracy") -> bytes:
    """Reliability diagram (per-bin accuracy vs confidence, the diagonal) over a histogram of confidences."""
    edges = np.asarray(rel["edges"])
    width = np.diff(edges)
    centers = edges[:-1] + width / 2
    acc = np.array([np.nan if a is None else a for a in rel["accuracy"]], dtype=float)
    conf = np.array([np.nan if c is None else c for c in rel["confidence"]], dtype=float)
    counts = np.asarray(rel["count"])
    fig = _new_figure(figsize=(6.5, 7.5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08})
    ok = ~np.isnan(acc)
    top.bar(centers[ok], acc[ok], width=width[ok], color="#4C72B0", edgecolor="black", linewidth=0.6, label="observed " + ylabel)
    gap = acc - conf
    # The gap between a bin's accuracy and its mean confidence, hatched (over the bar when under-confident).
    top.bar(centers[ok], -gap[ok], bottom=acc[ok], width=width[ok], facecolor="none", edgecolor="#C44E52", hatch="///", linewidth=0.8, label="gap to the bin's mean confidence")
    top.hlines(conf[ok], edges[:-1][ok], edges[1:][ok], color="#C44E52", linewidth=1.6, label="mean confidence in the bin")
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel(ylabel)
    top.legend(loc="upper left", fontsize=8)
    ece = rel.get("ece")
    top.set_title(f"{title}\nECE = {ece:.4f} ({rel['n_bins']} bins)" if ece is not None else title)
    bottom.bar(centers, counts, width=width, color="#8C8C8C", edgecolor="black", linewidth=0.6)
    bottom.set_xlabel(xlabel)
    bottom.set_ylabel("count")
    return _png(fig)


def plot_roc(y_bin: np.ndarray, scores: np.ndarray, classes: Sequence[str], auc: Sequence[float | None], title: str) -> bytes:
    """One-vs-rest ROC curve per class (classes whose AUC is defined; at most 20 curves)."""
    from sklearn.metrics import roc_curve

    fig = _new_figure(figsize=(7, 6.5))
    ax = fig.add_subplot()
    drawn = 0
    for c, name in enumerate(classes):
        if auc[c] is None or drawn >= 20:
            continue
        fpr, tpr, _ = roc_curve(y_bin[:, c], scores[:, c])
        ax.plot(fpr, tpr, linewidth=1.2, label=f"{name} (AUC {auc[c]:.3f})")
        drawn += 1
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


HISTORY_PANELS = (
    ("loss", lambda key: key.endswith("/loss")),
    ("accuracy / F1", lambda key: key.endswith(("/top1", "/top5", "/f1_macro", "/f1_micro"))),
    ("learning rate", lambda key: key == "lr"),
)


def plot_history(history: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """Training curves from checkpoint meta ``history``: one panel per kind of key that is present."""
    epochs = [int(h["epoch"]) + 1 for h in history]
    keys = sorted({k for h in history for k in h if k != "epoch"})
    panels = [(name, [k for k in keys if match(k)]) for name, match in HISTORY_PANELS]
    panels = [(name, ks) for name, ks in panels if ks]
    from matplotlib.ticker import MaxNLocator

    fig = _new_figure(figsize=(5.0 * max(1, len(panels)), 4.2), layout="constrained")
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    for ax, (name, ks) in zip(axes, panels):
        for k in ks:
            xs = [e for e, h in zip(epochs, history) if h.get(k) is not None]
            ys = [float(h[k]) for h in history if h.get(k) is not None]
            ax.plot(xs, ys, marker="o", markersize=3, linestyle="--" if k.startswith("train/") else "-", label=k)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if name == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.suptitle(title)
    return _png(fig)


# --------------------------------------------------------------------------------------------
# Ground truth and predictions
# --------------------------------------------------------------------------------------------


def _manifest_uri(data: Mapping[str, Any]) -> str:
    if not data.get("manifest"):
        raise ValueError("evaluate needs ground-truth labels: set data.manifest (Parquet/CSV with image_id, label[s], split) or data.images_prefix with class folders")
    return st.absolute(data["manifest"])


def ground_truth(cfg: Mapping[str, Any], split: str | None, task: str) -> tuple[pa.Table, str]:
    """``image_id`` plus ``label`` (multiclass) or ``labels`` (multilabel) for the labeled rows of ``split``.

    Read from the manifest as written (``data.manifest``), or from class folder names when the
    catalog is a listed prefix (``data.images_prefix``). Raises ValueError naming the splits that do
    have labeled rows when ``split`` has none.
    """
    from .query import read_manifest

    data, storage = cfg["data"], cfg["storage"]
    if data.get("images_prefix"):
        from .data import catalog_table

        table = catalog_table(data, storage, split=split).select(["image_id", "label"])
        where = f"class folders under {data['images_prefix']!r}"
        splits = None
    else:
        where = _manifest_uri(data)
        if not st.exists(where, storage):
            raise FileNotFoundError(f"manifest {where!r} not found; build one with jobs/make_catalog.py or set data.manifest")
        table = read_manifest(where, storage)
        if "image_id" not in table.column_names:
            raise ValueError(f"manifest {where!r} has no image_id column; it has {table.column_names}")
        table = table.set_column(table.column_names.index("image_id"), "image_id", table.column("image_id").cast(pa.string()))
        splits = sorted(set(table.column("split").drop_null().to_pylist())) if "split" in table.column_names else None
        if split is not None:
            if splits is None:
                raise ValueError(f"evaluate.split={split!r} but manifest {where!r} has no 'split' column; set evaluate.split=null to use every labeled row")
            if split not in splits:
                raise ValueError(f"evaluate.split={split!r} is not in manifest {where!r}; its splits are {splits} (or null for all)")
            table = table.filter(pc.equal(table.column("split"), split))
    cols = table.column_names
    if task == "multilabel":
        if "labels" in cols:
            gt = table.select(["image_id", "labels"])
            if "label" in cols:  # rows with only a single label fill in from `label`
                single = [None if v is None else [v] for v in table.column("label").to_pylist()]
                merged = [l if l is not None else s for l, s in zip(gt.column("labels").to_pylist(), single)]
                gt = pa.table({"image_id": gt.column("image_id"), "labels": pa.array(merged, pa.list_(pa.string()))})
        elif "label" in cols:
            gt = pa.table({"image_id": table.column("image_id"), "labels": pa.array([None if v is None else [v] for v in table.column("label").to_pylist()], pa.list_(pa.string()))})
        else:
            raise ValueError(f"{where}: a multilabel model needs a 'labels' (list<string>) or 'label' column; found {cols}")
        gt = gt.filter(pc.is_valid(gt.column("labels")))
    else:
        if "label" not in cols:
            raise ValueError(f"{where}: a multiclass model needs a 'label' column; found {cols}")
        gt = table.select(["image_id", "label"])
        gt = gt.set_column(1, "label", gt.column("label").cast(pa.string()))
        gt = gt.filter(pc.is_valid(gt.column("label")))
    if gt.num_rows == 0:
        labeled = []
        if splits and "split" in cols:
            key = "labels" if task == "multilabel" and "labels" in cols else "label"
            full = read_manifest(where, storage) if not data.get("images_prefix") else table
            if key in full.column_names:
                labeled = sorted(set(full.filter(pc.is_valid(full.column(key))).column("split").drop_null().to_pylist()))
        raise ValueError(f"evaluate.split={split!r} has no labeled rows in {where}; splits with labeled rows: {labeled}")
    ids = gt.column("image_id")
    if len(pc.unique(ids)) != len(ids):
        raise ValueError(f"{where}: duplicate image_id values among the labeled rows of split {split!r}")
    return gt.combine_chunks(), where


def drop_unknown_classes(gt: pa.Table, classes: Sequence[str], task: str) -> tuple[pa.Table, dict[str, int]]:
    """Ground truth without the rows whose label (any of whose labels, multi-label) the model does
    not know, and ``{unknown label: images}``: a catalog that grew new classes since training is
    evaluated on the classes the model has, and the rest is counted, not an error."""
    known = pa.array(list(classes), pa.string())
    if task == "multilabel":
        lists = gt.column("labels").to_pylist()
        known_set = set(classes)
        bad = [any(c not in known_set for c in v) for v in lists]
        names = [c for v, b in zip(lists, bad) if b for c in v if c not in known_set]
        keep = pa.array([not b for b in bad])
    else:
        keep = pc.is_in(gt.column("label"), value_set=known)
        names = pc.filter(gt.column("label"), pc.invert(keep)).to_pylist()
    unknown: dict[str, int] = {}
    for c in names:
        unknown[c] = unknown.get(c, 0) + 1
    return gt.filter(keep), dict(sorted(unknown.items(), key=lambda kv: (-kv[1], kv[0])))


def _class_index(names: pa.Array | pa.ChunkedArray, classes: Sequence[str], what: str) -> np.ndarray:
    idx = pc.index_in(names, value_set=pa.array(list(classes), pa.string()))
    if idx.null_count:
        unknown = sorted(set(pc.filter(names, pc.is_null(idx)).drop_null().to_pylist()))[:10]
        raise ValueError(f"{what} {unknown} are not among the model's classes {list(classes)}")
    return idx.to_numpy(zero_copy_only=False).astype(np.int64)


def _binarize(label_lists: Sequence[Sequence[str]], classes: Sequence[str], what: str) -> np.ndarray:
    from sklearn.preprocessing import MultiLabelBinarizer

    known = set(classes)
    unknown = sorted({l for ls in label_lists for l in ls} - known)
    if unknown:
        raise ValueError(f"{what} {unknown[:10]} are not among the model's classes {list(classes)}")
    return MultiLabelBinarizer(classes=list(classes)).fit_transform(label_lists).astype(int)


def _from_checkpoint(cfg: Mapping[str, Any], e: Mapping[str, Any], checkpoint: str, split: str | None, gt_ids: dict[str, int]) -> dict:
    """Run the checkpoint over the decoded split on the driver; full probability vectors."""
    from .data import decoded_catalog, is_error
    from .infer import Predictor
    from .runtime import init_ray

    storage = cfg["storage"]
    init_ray(cfg["ray"])
    p = cfg.get("predictor", {})
    predictor = Predictor(checkpoint, storage, device=e.get("device") or "auto", dtype=e.get("dtype") or "auto", topk=1, channels_last=True, tta=e.get("tta") or "none",
                          batch_size=int(e.get("batch_size") or 512), dtype_cache_dir=p.get("dtype_cache_dir"), fold_bn=bool(p.get("fold_bn", True)))
    ds = decoded_catalog(cfg["data"], predictor.loaded.preprocessing, storage, split=split)
    rows, prob_parts, errors, unlabeled = [], [], [], 0
    for batch in ds.iter_batches(batch_format="numpy", batch_size=int(e.get("batch_size") or 512)):
        ids = [str(i) for i in batch["image_id"]]
        bad = np.array([is_error(x) for x in batch["error"]], dtype=bool)
        labeled = np.array([i in gt_ids for i in ids], dtype=bool)
        for i, err in zip(ids, batch["error"]):
            if is_error(err) and i in gt_ids:
                errors.append({"image_id": i, "error": str(err)})
        unlabeled += int((~labeled).sum())
        keep = labeled & ~bad
        if keep.any():
            probs, _ = predictor.predict_pixels(batch["pixels"][keep])
            prob_parts.append(probs.astype(np.float64))
            rows.extend(np.asarray(ids, dtype=object)[keep].tolist())
    k = len(predictor.classes)
    probs = np.concatenate(prob_parts) if prob_parts else np.zeros((0, k))
    return {"image_ids": rows, "probs": probs, "errors": errors, "unlabeled": unlabeled, "missing": [], "topk": k, "y_pred": None, "rank_scores": None, "pred_labels": None}


def _from_predictions(cfg: Mapping[str, Any], uri: str, classes: Sequence[str], task: str, gt_ids: dict[str, int]) -> dict:
    """A backfill's Parquet: probabilities rebuilt from ``topk_labels``/``topk_scores`` (zeros elsewhere)."""
    from .query import read_predictions

    storage = cfg["storage"]
    table = read_predictions(uri, storage, columns=["image_id", "label", "score", "topk_labels", "topk_scores", "labels", "model_id", "error"])
    model_ids = sorted(set(table.column("model_id").drop_null().to_pylist()))
    if len(model_ids) > 1:
        raise ValueError(f"predictions under {uri!r} come from several models {model_ids}; point evaluate.predictions at one model folder (<predictions>/<model_id>)")
    ids = table.column("image_id")
    if len(pc.unique(ids)) != len(ids):
        raise ValueError(f"predictions under {uri!r} hold some image_id more than once; point evaluate.predictions at one model folder")
    table = table.filter(pc.is_in(ids, value_set=pa.array(list(gt_ids), pa.string())))
    seen = set(table.column("image_id").to_pylist())
    missing = [i for i in gt_ids if i not in seen]
    err = table.column("error")
    errors = [{"image_id": i, "error": x} for i, x in zip(table.column("image_id").to_pylist(), err.to_pylist()) if x]
    good = table.filter(pc.is_null(err))
    n, kk = good.num_rows, len(classes)
    lengths = pc.list_value_length(good.column("topk_labels")).to_numpy(zero_copy_only=False) if n else np.zeros(0, int)
    topk = int(lengths.min()) if n else 0
    flat_idx = _class_index(pc.list_flatten(good.column("topk_labels")), classes, "predicted labels") if n else np.zeros(0, np.int64)
    flat_scores = pc.list_flatten(good.column("topk_scores")).to_numpy(zero_copy_only=False).astype(np.float64) if n else np.zeros(0)
    row_of = np.repeat(np.arange(n), lengths)
    rank = np.concatenate([np.arange(m) for m in lengths]) if n else np.zeros(0, np.int64)
    probs = np.zeros((n, kk))
    probs[row_of, flat_idx] = flat_scores
    # Rank scores for top-k accuracy: position in the stored top-k list, unknown classes below all.
    rank_scores = np.zeros((n, kk))
    rank_scores[row_of, flat_idx] = kk + 1 - rank
    out = {"image_ids": good.column("image_id").to_pylist(), "probs": probs, "errors": errors, "unlabeled": 0, "missing": missing, "topk": topk, "rank_scores": rank_scores, "model_ids": model_ids}
    if task == "multiclass":
        out["y_pred"] = _class_index(good.column("label"), classes, "predicted labels") if n else np.zeros(0, np.int64)
        out["pred_labels"] = None
    else:
        out["y_pred"] = None
        labels = good.column("labels").to_pylist()
        out["pred_labels"] = None if any(l is None for l in labels) else labels
    return out


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def _table_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def _fmt(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _default_output(cfg: Mapping[str, Any], model_id: str, split: str | None, source: str) -> str:
    name = split if split is not None else "all"
    if source == "predictions":
        name += "-predictions"  # beside the checkpoint report of the same split, not over it
    return st.join(st.absolute(cfg["paths"]["output"]), "report", model_id, name)


def evaluate(cfg: Mapping[str, Any], command: str | None = None) -> dict:
    """Evaluate a model on a labeled split and write the report; returns the metrics (``metrics.json``).

    ``cfg`` is the resolved config as plain containers (like :func:`~catalog_vision.backfill.backfill`).
    ``command`` is recorded in the model card (default: this process's command line).
    """
    from . import checkpoint as ckpt

    t0 = time.perf_counter()
    e = dict(cfg.get("evaluate") or {})
    storage = cfg["storage"]
    source = e.get("source") or "checkpoint"
    if source not in SOURCES:
        raise ValueError(f"evaluate.source={source!r}; choose one of {list(SOURCES)}")
    split = e.get("split", "test")
    n_bins = int(e.get("ece_bins") or ECE_BINS)
    command = command or shlex.join(["python", *sys.argv])

    # The model: its meta names the task, the classes, the thresholds and how it was trained.
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
    model_id = ckpt.model_id_of(meta) if meta else None

    pred_uri = None
    if source == "predictions":
        pred_uri = e.get("predictions") or (table_dir(cfg["paths"]["predictions"], model_id, catalog_id(cfg["data"])) if model_id else None)
        if not pred_uri:
            raise ValueError("evaluate.source=predictions needs evaluate.predictions (a backfill run folder or <predictions>/<model_id>/<catalog_id>) or a checkpoint to find them")
        pred_uri = st.absolute(pred_uri)
        if not st.exists(pred_uri, storage):
            raise FileNotFoundError(f"evaluate.predictions={pred_uri!r} does not exist; run jobs/backfill.py first or point it at a run folder")

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

    gt, gt_where = ground_truth(cfg, split, task)
    gt, unknown = drop_unknown_classes(gt, classes, task)
    if unknown:
        log.warning("%d labeled images have classes the model does not know (%s): reported as unknown classes, not evaluated", sum(unknown.values()), dict(list(unknown.items())[:10]))
    if gt.num_rows == 0:
        raise ValueError(f"every labeled image of split {split!r} has a class the model does not know: {dict(list(unknown.items())[:10])}; the model's classes are {classes[:20]}")
    gt_ids = {i: n for n, i in enumerate(gt.column("image_id").to_pylist())}

    if source == "checkpoint":
        got = _from_checkpoint(cfg, e, checkpoint, split, gt_ids)
    else:
        got = _from_predictions(cfg, pred_uri, classes, task, gt_ids)
        if model_id is None:
            model_id = got["model_ids"][0] if got["model_ids"] else "unknown-model"
        elif got["model_ids"] and got["model_ids"] != [model_id]:
            raise ValueError(
                f"predictions under {pred_uri!r} are from {got['model_ids'][0]} but evaluate.checkpoint={checkpoint!r} is {model_id}; "
                "point evaluate.checkpoint at that model's checkpoint, or set evaluate.checkpoint=null"
            )
    n = len(got["image_ids"])
    if n == 0:
        raise ValueError(f"no labeled rows of split {split!r} could be evaluated ({len(got['errors'])} errors, {len(got['missing'])} without predictions)")

    # Align ground truth to the evaluated rows.
    order = np.array([gt_ids[i] for i in got["image_ids"]], dtype=np.int64)
    notes: list[str] = []
    approximate: dict[str, bool] = {}
    if task == "multiclass":
        y_true = _class_index(gt.column("label").take(pa.array(order)), classes, "manifest labels")
        m = multiclass_metrics(y_true, got["probs"], classes, y_pred=got["y_pred"], topk_scores=got["rank_scores"], n_bins=n_bins)
        if source == "predictions":
            k = got["topk"]
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
    else:
        y_true_bin = _binarize([gt.column("labels")[int(j)].as_py() for j in order], classes, "manifest labels")
        y_pred_bin = _binarize(got["pred_labels"], classes, "predicted labels") if got.get("pred_labels") is not None else None
        m = multilabel_metrics(y_true_bin, got["probs"], thresholds, classes, y_pred_bin=y_pred_bin, n_bins=n_bins)
        if source == "predictions":
            k = got["topk"]
            approximate = {"per_class": y_pred_bin is None and k < len(classes), "roc_auc": k < len(classes), "ece": k < len(classes)}
            notes.append(
                ("Predicted labels are the backfill's `labels` column (labels above their thresholds)." if y_pred_bin is not None else "Predicted labels are the stored top-k scores above their thresholds.")
                + (f" Scores exist only for each image's top-{k} of {len(classes)} labels (others count as 0), so ROC-AUC and ECE are approximate." if k < len(classes) else "")
            )

    # Counts: every labeled row of the split is evaluated, an error row, or missing from the predictions.
    error_classes: dict[str, int] = {}
    for r in got["errors"]:
        c = r["error"].split(":", 1)[0]
        error_classes[c] = error_classes.get(c, 0) + 1
    counts = {
        "labeled": len(gt_ids),
        "evaluated": n,
        "errors": len(got["errors"]),
        "errors_by_class": dict(sorted(error_classes.items())),
        "missing": len(got["missing"]),
        "unlabeled_skipped": got["unlabeled"],
        "unknown_class": sum(unknown.values()),
        "unknown_classes": unknown,
    }
    output = st.absolute(e["output"]) if e.get("output") else _default_output(cfg, model_id, split, source)
    model_name = ((meta or {}).get("model") or {}).get("name") or model_id.rsplit("-", 1)[0]
    title = f"{model_name} ({model_id}) on {split or 'all labeled rows'}, N={n}"

    # Files.
    files: dict[str, bytes] = {}
    per_class = m["per_class"]
    pc_cols = ["class", "precision", "recall", "f1", "support", "roc_auc"] + (["threshold", "tp", "fp", "fn", "tn"] if task == "multilabel" else [])
    files["per_class.parquet"] = _table_bytes(pa.table({c: [r[c] for r in per_class] for c in pc_cols}, schema=pa.schema([(c, pa.string() if c == "class" else pa.int64() if c in ("support", "tp", "fp", "fn", "tn") else pa.float64()) for c in pc_cols])))
    figures: dict[str, str] = {}
    if task == "multiclass":
        cm = np.asarray(m["confusion_matrix"])
        kk = len(classes)
        row_tot = cm.sum(1)
        files["confusion_matrix.parquet"] = _table_bytes(
            pa.table(
                {
                    "true": pa.array([classes[i] for i in range(kk) for _ in range(kk)], pa.string()),
                    "predicted": pa.array([classes[j] for _ in range(kk) for j in range(kk)], pa.string()),
                    "count": pa.array(cm.reshape(-1), pa.int64()),
                    "fraction_of_true": pa.array([float(cm[i, j] / row_tot[i]) if row_tot[i] else None for i in range(kk) for j in range(kk)], pa.float64()),
                }
            )
        )
        files["confusion_matrix.png"] = plot_confusion(cm, classes, f"Confusion matrix: {title}")
        figures["confusion_matrix.png"] = "Confusion matrix (colour: fraction of the true class; numbers: image counts)"
        files["reliability.png"] = plot_reliability(m["reliability"], f"Reliability: {title}")
        y_bin = np.eye(kk, dtype=int)[y_true]
    else:
        files["reliability.png"] = plot_reliability(m["reliability"], f"Reliability: {title}", xlabel="predicted probability of a label", ylabel="fraction present")
        y_bin = y_true_bin
    figures["reliability.png"] = "Reliability diagram and histogram of confidences"
    if m["roc_auc_classes"]:
        files["roc.png"] = plot_roc(y_bin, got["probs"], classes, [r["roc_auc"] for r in per_class], f"One-vs-rest ROC: {title}")
        figures["roc.png"] = ("One-vs-rest ROC curves" if task == "multiclass" else "Per-label ROC curves") + (" (approximate: top-k scores only)" if approximate.get("roc_auc") else "")
    history = (meta or {}).get("history")
    if history:
        files["training_curves.png"] = plot_history(history, f"Training curves: {model_name} ({model_id})")
        figures["training_curves.png"] = "Training curves (train and validation, per epoch)"
    else:
        notes.append("No training curves: the checkpoint has no per-epoch `history` (only the best epoch's `metrics`)." if meta else "No training curves: no checkpoint was given.")
    if got["errors"]:
        files["errors.parquet"] = _table_bytes(pa.table({"image_id": pa.array([r["image_id"] for r in got["errors"]], pa.string()), "error": pa.array([r["error"] for r in got["errors"]], pa.string())}))

    headline_keys = ("top1", "top5", "f1_macro", "f1_weighted", "roc_auc_macro", "ece") if task == "multiclass" else ("hamming_loss", "subset_accuracy", "f1_micro", "f1_macro", "roc_auc_macro", "ece")
    headline = {k: m.get(k) for k in headline_keys}
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
        "per_class": {r["class"]: {k: v for k, v in r.items() if k != "class"} for r in per_class},
        "reliability": m["reliability"],
        "approximate": approximate,
        "notes": notes,
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
    summary = {"model_id": model_id, "task": task, "source": source, "split": split, "evaluated": n, "errors": counts["errors"], "missing": counts["missing"], **({"unknown_class": counts["unknown_class"]} if counts["unknown_class"] else {}), **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in headline.items()}, "output": output}
    print("evaluate summary: " + json.dumps(summary), flush=True)
    return metrics


def model_card(metrics: Mapping[str, Any], meta: Mapping[str, Any] | None, figures: Mapping[str, str], e: Mapping[str, Any]) -> str:
    """The Markdown model card: what the model is, what it was trained on, how it scores, where it fails."""
    meta = dict(meta or {})
    task, classes, m, counts = metrics["task"], metrics["classes"], metrics["metrics"], metrics["counts"]
    per_class = metrics["per_class"]
    lines: list[str] = [f"# Model card: {metrics['model_name']} (`{metrics['model_id']}`)", ""]

    lines += ["## Model", ""]
    pre = meta.get("preprocessing") or {}
    model_cfg = {k: v for k, v in (meta.get("model") or {}).items() if k != "name" and v is not None}
    lines += [
        f"- **Name:** {metrics['model_name']}" + (f" ({', '.join(f'{k}={v}' for k, v in model_cfg.items())})" if model_cfg else ""),
        f"- **model_id:** `{metrics['model_id']}` (model name + first 12 hex of the weights' SHA-256)",
        f"- **Checkpoint:** `{metrics['checkpoint']}`" if metrics["checkpoint"] else "- **Checkpoint:** not given (the report was built from predictions alone)",
        f"- **Task:** {task}" + (" (softmax over the classes)" if task == "multiclass" else " (independent sigmoid per label, per-label thresholds)"),
        f"- **Classes ({len(classes)}):** " + ", ".join(f"`{c}`" for c in classes),
        f"- **Embedding dim:** {meta.get('embedding_dim', 'n/a')}",
    ]
    if pre:
        lines.append(
            f"- **Preprocessing:** {pre.get('image_size')} pixels (height, width), {pre.get('channels')} channel(s), "
            f"{pre.get('resize', 'bilinear')} resize, normalised with mean {pre.get('mean')} and std {pre.get('std')} inside the model"
        )
    if task == "multilabel":
        lines.append("- **Thresholds:** " + ", ".join(f"`{c}` {t:.3f}" for c, t in metrics["thresholds"].items()))
    lines.append("")

    lines += ["## Training data", ""]
    data = meta.get("data") or {}
    if not meta:
        lines.append("- Unknown: no checkpoint was given, so neither the training data nor the recipe is on record here.")
    elif data:
        lines.append(f"- **Manifest:** `{data.get('manifest')}`; {data.get('train_rows', 'n/a')} training rows, {data.get('val_rows', 'n/a')} validation rows")
        if data.get("train_support"):
            lines.append("- **Training support** (images per class" + (", positives per label" if meta.get("task") == "multilabel" else "") + "): " + ", ".join(f"`{c}` {n}" for c, n in data["train_support"].items()))
    else:
        lines.append("- The checkpoint does not record its training data (no `data` in `model.json`).")
    t = meta.get("trainer") or {}
    if t:
        aug = t.get("augment") or {}
        workers = t.get("num_workers")
        lines += [
            f"- **Recipe:** {t.get('epochs')} epochs, batch size {t.get('batch_size')} per worker"
            + (f" × {workers} workers = {int(t['batch_size']) * int(workers)} global" if workers and t.get("batch_size") else "")
            + f", optimizer {t.get('optimizer')}, lr {t.get('lr')}, weight decay {t.get('weight_decay')}, warmup {t.get('warmup_epochs')} epochs then {t.get('schedule', 'cosine')}, label smoothing {t.get('label_smoothing')}"
            + f", precision {t.get('precision', 'float32')}, imbalance {t.get('imbalance', 'none')}, seed {t.get('seed')}",
            "- **Augmentation:** " + (", ".join(f"{k}={v}" for k, v in aug.items()) if aug else "none"),
        ]
    elif meta:
        lines.append("- The checkpoint does not record its training recipe (no `trainer` in `model.json`).")
    best = meta.get("metrics") or {}
    if best:
        shown = {k: v for k, v in best.items() if k in ("train/loss", "train/top1", "val/loss", "val/top1", "val/f1_macro", "lr")}
        lines.append(f"- **Checkpoint epoch:** {int(meta.get('epoch', 0)) + 1}; " + ", ".join(f"{k} {_fmt(float(v))}" for k, v in shown.items()))
    lines.append("")

    lines += ["## Evaluation", ""]
    where = f"backfill predictions `{metrics['predictions']}`" if metrics["source"] == "predictions" else "the checkpoint run on the decoded images"
    lines += [
        f"- **Split:** `{metrics['split']}` of `{metrics['ground_truth']}`; source: {where}",
        f"- **Images:** {counts['labeled']} labeled, **{counts['evaluated']} evaluated**, {counts['errors']} error rows (not evaluated)"
        + (f" (images that could not be read or decoded: {', '.join(f'{k} {v}' for k, v in counts['errors_by_class'].items())}; listed in `errors.parquet`)" if counts["errors"] else "")
        + (f", {counts['missing']} without a prediction" if counts["missing"] else "")
        + (f"; {counts['unknown_class']} images of classes the model does not know, not evaluated ({', '.join(f'{k} {v}' for k, v in list(counts['unknown_classes'].items())[:10])})" if counts.get("unknown_class") else ""),
        "",
    ]
    if task == "multiclass":
        heads = [("Top-1 accuracy", m["top1"]), ("Top-5 accuracy", m["top5"]), ("Macro F1", m["f1_macro"]), ("Weighted F1", m["f1_weighted"]), ("ROC-AUC (one-vs-rest, macro)", m["roc_auc_macro"]), (f"ECE ({metrics['reliability']['n_bins']} bins)", m["ece"])]
    else:
        heads = [("Hamming loss", m["hamming_loss"]), ("Subset accuracy", m["subset_accuracy"]), ("Micro F1", m["f1_micro"]), ("Macro F1", m["f1_macro"]), ("ROC-AUC (per label, macro)", m["roc_auc_macro"]), (f"ECE ({metrics['reliability']['n_bins']} bins, per label)", m["ece"])]
    lines += ["| metric | value |", "|---|---:|"] + [f"| {k} | {_fmt(v)} |" for k, v in heads] + [""]
    for note in metrics["notes"]:
        lines.append(f"> {note}")
    if metrics["notes"]:
        lines.append("")
    extra = " threshold |" if task == "multilabel" else ""
    lines += [f"| class | precision | recall | F1 | support | ROC-AUC |{extra}", "|---|---:|---:|---:|---:|---:|" + ("---:|" if extra else "")]
    for c in classes:
        r = per_class[c]
        lines.append(f"| {c} | {_fmt(r['precision'])} | {_fmt(r['recall'])} | {_fmt(r['f1'])} | {r['support']} | {_fmt(r['roc_auc'])} |" + (f" {_fmt(r['threshold'], 3)} |" if extra else ""))
    lines.append("")

    lines += ["## Intended use", ""]
    outside = "it always answers with one of them" if task == "multiclass" else "it can only tag the labels it knows"
    lines.append(
        e.get("intended_use")
        or (
            f"Labeling and embedding images of the kind it was trained on (the {len(classes)} {'classes' if task == 'multiclass' else 'labels'} above, "
            "preprocessed as above) in offline backfills and online serving, with low-confidence predictions sent to human review. "
            f"It is not meant for images outside these classes ({outside}), for decisions about people, "
            "or for any use where an error rate like the one measured here is unacceptable without review."
        )
    )
    lines.append("")

    lines += ["## Known failure classes", ""]
    n_worst = int(e.get("worst_classes") or 3)
    ranked = sorted((c for c in classes if per_class[c]["support"] > 0 and per_class[c]["f1"] < 1.0), key=lambda c: (per_class[c]["f1"], -per_class[c]["support"], c))[:n_worst]
    if ranked:
        lines.append("Lowest F1 on this split:")
        lines.append("")
        for c in ranked:
            r = per_class[c]
            lines.append(f"- `{c}`: F1 {r['f1']:.4f} (precision {r['precision']:.4f}, recall {r['recall']:.4f}, {_images(r['support'])})")
        lines.append("")
    if task == "multiclass":
        conf = metrics.get("top_confusions") or []
        if conf:
            lines.append("Most frequent confusions (true → predicted):")
            lines.append("")
            for x in conf:
                lines.append(f"- `{x['true']}` → `{x['predicted']}`: {_images(x['count'])} ({x['fraction_of_true']:.1%} of `{x['true']}`)")
        else:
            lines.append("No off-diagonal confusions on this split.")
    else:
        fn = [c for c in sorted(classes, key=lambda c: -per_class[c]["fn"]) if per_class[c]["fn"]][:n_worst]
        fp = [c for c in sorted(classes, key=lambda c: -per_class[c]["fp"]) if per_class[c]["fp"]][:n_worst]
        lines.append("Most missed labels (false negatives): " + (", ".join(f"`{c}` {_images(per_class[c]['fn'])}" for c in fn) or "none"))
        lines.append("")
        lines.append("Most over-predicted labels (false positives): " + (", ".join(f"`{c}` {_images(per_class[c]['fp'])}" for c in fp) or "none"))
    lines.append("")

    lines += ["## Limitations", ""]
    lim = [
        f"Measured on {counts['evaluated']} images of one split (`{metrics['split']}`) drawn from the same catalog as the training data; "
        "accuracy on a shifted distribution (new suppliers, new photo styles) will be lower and is not measured here.",
    ]
    small = [c for c in classes if 0 < per_class[c]["support"] < 30]
    if small:
        lim.append("Per-class figures rest on fewer than 30 images for " + ", ".join(f"`{c}`" for c in small) + ": treat them as rough.")
    absent = [c for c in classes if per_class[c]["support"] == 0]
    if absent:
        lim.append("No labeled images of " + ", ".join(f"`{c}`" for c in absent) + " in this split: nothing is known about them here.")
    if m.get("ece") is not None:
        lim.append(f"Confidence scores have an expected calibration error of {m['ece']:.4f}: read them as rankings more than as probabilities" + (" unless that is small for your use." if m["ece"] < 0.05 else "."))
    if task == "multiclass":
        lim.append("The model always picks one of its classes: an image of something else gets a confident wrong label, not a refusal.")
    lim += [n for n in metrics["notes"] if "approximate" in n]
    lines += [f"- {x}" for x in lim] + [""]

    lines += ["## Figures", ""]
    for name, caption in figures.items():
        lines += [f"### {caption}", "", f"![{caption}]({name})", ""]

    lines += ["## How this report was produced", "", "```bash", metrics["command"], "```", ""]
    lines.append(
        f"Source `{metrics['source']}`, split `{metrics['split']}`; written to `{metrics['output']}` "
        f"({', '.join(f'`{f}`' for f in metrics['files'])}). The resolved configuration (secrets redacted) is in `metrics.json` under `config`."
    )
    lines.append("")
    return "\n".join(lines)
