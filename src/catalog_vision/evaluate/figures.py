"""Report figures: matplotlib on an Agg canvas (no display, no global pyplot state)."""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import numpy as np


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
    top.bar(
        centers[ok],
        -gap[ok],
        bottom=acc[ok],
        width=width[ok],
        facecolor="none",
        edgecolor="#C44E52",
        hatch="///",
        linewidth=0.8,
        label="gap to the bin's mean confidence",
    )
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
