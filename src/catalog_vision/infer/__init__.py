"""Inference: the model-facing :class:`~.predictor.Predictor` shared by backfill and serving."""

from .predictions import predictions_schema
from .predictor import Predictor

__all__ = ["Predictor", "predictions_schema"]
