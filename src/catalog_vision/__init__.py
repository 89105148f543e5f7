"""catalog-vision: label and embed whole image catalogs on Ray.

The public names below load lazily (PEP 562): Ray Data's decode tasks import
``catalog_vision.ingest`` and must not pay for importing torch. The jobs' entry points live in
their capability packages (``catalog_vision.train.train``, ``catalog_vision.backfill.backfill``):
a top-level name equal to a subpackage's would be the function or the package depending on what
the process imported first.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "MODELS": ".models",
    "Predictor": ".infer.predictor",
    "Preprocessing": ".ingest.images",
    "build_model": ".models",
    "decode": ".ingest.images",
    "load_checkpoint": ".checkpoint",
    "make_catalog": ".catalogs",
    "predictions_schema": ".infer.predictions",
    "run_pipeline": ".pipeline",
    "summarize": ".backfill.query",
}
__all__ = [
    "MODELS",
    "Predictor",
    "Preprocessing",
    "build_model",
    "decode",
    "load_checkpoint",
    "make_catalog",
    "predictions_schema",
    "run_pipeline",
    "summarize",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'catalog_vision' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name], __name__)
    value = getattr(module, "load" if name == "load_checkpoint" else name)
    globals()[name] = value
    return value
