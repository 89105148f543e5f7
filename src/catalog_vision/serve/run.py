"""Start the application on a local Ray (or the cluster ``ray`` names) and keep it up."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Mapping

from .builder import build_app
from .config import INGRESS_ENV

log = logging.getLogger("catalog_vision")


def start(cfg: Mapping[str, Any]) -> str:
    """Deploy ``build_app(cfg)`` behind Serve's HTTP ingress (``serve.ingress``); returns the base URL."""
    from ray import serve

    from ..runtime import init_ray

    app = build_app(cfg)  # config errors surface before Ray starts
    s = cfg["serve"]
    set_ingress(s, cfg.get("ray"))
    init_ray(cfg.get("ray"))
    check_ingress(s)
    serve.start(http_options={"host": s["host"], "port": int(s["port"])})
    serve.run(app, name=s["model_name"], route_prefix=s.get("route_prefix") or "/")
    url = f"http://{s['host']}:{s['port']}"
    log.info("serving %s at %s (Open Inference Protocol: %s/v2/models/%s/infer; plain JSON: %s/classify)", s["model_name"], url, url, s["model_name"], url)
    return url


def set_ingress(s: Mapping[str, Any], ray_cfg: Mapping[str, Any] | None) -> None:
    """``serve.ingress`` for a Ray this process is about to start: its processes read the mode from
    the environment they inherit. (A cluster's mode was fixed by its ``ray start``.)"""
    import os

    import ray

    if not ray.is_initialized() and not ((ray_cfg or {}).get("address") or os.environ.get("RAY_ADDRESS")):
        os.environ.update(INGRESS_ENV[s.get("ingress", "proxy")])


def cluster_ingress() -> str:
    """The ingress mode the running Ray's worker processes were started with."""
    import os

    import ray

    @ray.remote(num_cpus=0)
    def env() -> dict:
        return {k: os.environ.get(k, "0") for k in INGRESS_ENV["haproxy"]}

    got = ray.get(env.remote())
    return next((mode for mode, want in INGRESS_ENV.items() if all(got[k] == v for k, v in want.items())), "proxy")


def check_ingress(s: Mapping[str, Any]) -> None:
    want, got = s.get("ingress", "proxy"), cluster_ingress()
    if want != got:
        env = " ".join(f"{k}={v}" for k, v in INGRESS_ENV[want].items())
        log.warning("serve.ingress=%s, but this Ray cluster was started for %s ingress: requests go through %s. "
                    "Start Ray with %s in its environment (every node) for %s.", want, got, got, env, want)


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
