"""Analytics over a backfill's embeddings: near-duplicate groups and leakage, drift between two backfills."""

from .drift import compare, run_drift
from .duplicates import connected_groups, find_duplicates, leakage, run_duplicates
from .load import Predictions, load_predictions
from .pairs import similar_pairs

__all__ = ["Predictions", "compare", "run_drift", "connected_groups", "find_duplicates", "leakage", "load_predictions", "run_duplicates", "similar_pairs"]
