"""An epoch's metrics from every worker's counts; for multi-label runs, the per-label thresholds (best
F1 on validation) and the metrics at them."""

from __future__ import annotations

import numpy as np

from .collective import all_gather


def choose_thresholds(scores: np.ndarray, targets: np.ndarray) -> list[float]:
    """Per label, the score threshold with the best F1 on validation (0.5 when a label has no positives)."""
    from sklearn.metrics import precision_recall_curve

    out = []
    for k in range(targets.shape[1]):
        if targets[:, k].sum() == 0:
            out.append(0.5)
            continue
        p, r, th = precision_recall_curve(targets[:, k], scores[:, k])
        f1 = 2 * p[:-1] * r[:-1] / np.maximum(p[:-1] + r[:-1], 1e-12)
        out.append(float(th[int(np.argmax(f1))]))
    return out


def multilabel_val_metrics(scores: np.ndarray, targets: np.ndarray, thresholds: list[float]) -> dict[str, float]:
    from sklearn.metrics import f1_score, hamming_loss

    pred = scores >= np.asarray(thresholds)[None, :]
    return {
        "val/f1_macro": float(f1_score(targets, pred, average="macro", zero_division=0)),
        "val/f1_micro": float(f1_score(targets, pred, average="micro", zero_division=0)),
        "val/hamming_loss": float(hamming_loss(targets, pred)),
        "val/f1_macro@0.5": float(f1_score(targets, scores >= 0.5, average="macro", zero_division=0)),
    }


def epoch_metrics(epoch: int, task: str, world: int, tr: dict, va: dict, va_scores, va_targets, scheduler) -> tuple[dict, list[float] | None]:
    """One epoch's metrics from the all-reduced train and validation counts (and, multi-label, the
    gathered validation scores, from which the per-label thresholds are chosen)."""
    metrics = {
        "epoch": epoch,
        "train/loss": tr["loss_sum"] / max(1, tr["seen"]),
        "train/top1" if task == "multiclass" else "train/label_accuracy": tr["correct"] / max(1, tr["seen"]),
        "train/images_per_s": tr["seen"] / max(1e-9, tr["elapsed"] / world),
        "val/loss": va["loss_sum"] / max(1, va["seen"]),
        "val/images": int(va["seen"]),
        "lr": scheduler.get_last_lr()[0],
        # seconds per worker (mean over workers) spent on each part of the training steps
        **{k: round(tr[k] / world, 2) for k in ("time/data", "time/augment", "time/compute", "time/optimizer")},
        # workers whose epoch came from their in-memory shard (trainer.cache_shard_mb), not Ray Data
        "train/workers_from_memory": int(tr.get("from_memory", 0)),
    }
    thresholds = None
    if task == "multilabel":
        scores, targets = all_gather(va_scores), all_gather(va_targets)
        thresholds = choose_thresholds(scores, targets)
        metrics.update(multilabel_val_metrics(scores, targets, thresholds))
        metrics["val/label_accuracy"] = va["correct"] / max(1, va["seen"])
    else:
        metrics["val/top1"] = va["correct"] / max(1, va["seen"])
    return metrics, thresholds
