"""Backfill: a whole catalog -> one Parquet row per image, per model (jobs/backfill.py, ``conf/predictor/``).

:func:`backfill` loads lazily (PEP 562): the commit tasks, the serving table writer and the
readers of predictions import this package's other modules and must not pay for importing torch.
"""

from __future__ import annotations

__all__ = ["backfill"]


def __getattr__(name: str):
    if name != "backfill":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .run import backfill

    globals()[name] = backfill
    return backfill
