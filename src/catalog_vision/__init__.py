"""catalog-vision: label and embed whole image catalogs on Ray."""

from .backfill import backfill
from .catalog import make_catalog
from .checkpoint import load as load_checkpoint
from .images import Preprocessing, decode
from .infer import Predictor, predictions_schema
from .models import MODELS, build_model
from .pipeline import run_pipeline
from .query import summarize
from .train import train

__all__ = [
    "MODELS",
    "Predictor",
    "Preprocessing",
    "backfill",
    "build_model",
    "decode",
    "load_checkpoint",
    "make_catalog",
    "predictions_schema",
    "run_pipeline",
    "summarize",
    "train",
]
__version__ = "0.1.0"
