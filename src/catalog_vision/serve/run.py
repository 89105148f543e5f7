"""Start the application on a local Ray (or the cluster ``ray`` names) and keep it up."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Mapping

from .builder import build_app

log = logging.getLogger("catalog_vision")


def start(cfg: Mapping[str, Any]) -> str:
    """Deploy ``build_app(cfg)`` behind Serve's HTTP proxy; returns the base URL."""
    from ray import serve

    from ..runtime import init_ray

    app = build_app(cfg)  # config errors surface before Ray starts
    init_ray(cfg.get("ray"))
    s = cfg["serve"]
    serve.start(http_options={"host": s["host"], "port": int(s["port"])})
    serve.run(app, name=s["model_name"], route_prefix=s.get("route_prefix") or "/")
    url = f"http://{s['host']}:{s['port']}"
    log.info("serving %s at %s (Open Inference Protocol: %s/v2/models/%s/infer; plain JSON: %s/classify)", s["model_name"], url, url, s["model_name"], url)
    return url


def serve_forever(cfg: Mapping[str, Any]) -> None:
    from ray import serve

    start(cfg)
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("%s: shutting down", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    while not stop.wait(0.5):  # short waits: the handler runs between them
        pass
    serve.shutdown()
