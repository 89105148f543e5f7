"""The evaluation report: how good is a checkpoint on a labeled split, and where does it fail?

Two sources of predictions (``evaluate.source``):

* ``checkpoint`` — run the checkpoint on the labeled split (``evaluate.split``) of the catalog:
  Ray Data fetches and decodes the images, the driver runs :class:`~catalog_vision.infer.predictor.Predictor`
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

from .card import model_card
from .metrics import ECE_BINS, multiclass_metrics, multilabel_metrics, reliability, top_confusions
from .report import SOURCES, TASKS, evaluate
from .truth import drop_unknown_classes, ground_truth

__all__ = [
    "ECE_BINS",
    "SOURCES",
    "TASKS",
    "drop_unknown_classes",
    "evaluate",
    "ground_truth",
    "model_card",
    "multiclass_metrics",
    "multilabel_metrics",
    "reliability",
    "top_confusions",
]
