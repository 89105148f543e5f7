"""Online classification with Ray Serve: the backfill's checkpoint, ``Predictor`` and decoder behind
the Open Inference Protocol v2 REST API and a plain ``POST /classify``.

    serve run catalog_vision.serve:build_app      # with a config; jobs/serve.py composes one from conf/

:func:`build_app` is Serve's application builder; importing this package loads no model, no torch.
"""

from __future__ import annotations

from .builder import build_app
from .config import check_serve, deployment_options

__all__ = ["build_app", "check_serve", "deployment_options"]
