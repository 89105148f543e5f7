"""The ``serve`` config group, checked, and turned into Serve deployment options."""

from __future__ import annotations

from typing import Any, Mapping

POSITIVE_INTS = ("max_batch_size", "max_ongoing_requests", "max_images_per_request", "max_topk", "num_cpus")
# Deployment options passed through as they are: how a roll-out replaces replicas and health-checks them.
ROLLOUT_KEYS = ("max_surge_percent", "graceful_shutdown_wait_loop_s", "graceful_shutdown_timeout_s", "health_check_period_s", "health_check_timeout_s")
# serve.ingress -> the environment Ray must start with (read by Serve's processes at start-up).
INGRESS_ENV = {
    "haproxy": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"},
    "proxy": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0", "RAY_SERVE_ENABLE_HA_PROXY": "0"},
}
AUTOSCALING_KEYS = ("min_replicas", "max_replicas", "target_ongoing_requests", "initial_replicas", "upscale_delay_s", "downscale_delay_s")


def check_serve(s: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the setting (and the valid choices) for a config Serve could not
    run well: above all, ``max_ongoing_requests`` below ``max_batch_size``, where a replica never
    holds enough single-image requests to fill a batch."""
    for key in POSITIVE_INTS:
        v = s.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"serve.{key}={v!r}; must be a number >= 1")
    if float(s["batch_wait_timeout_s"]) < 0:
        raise ValueError(f"serve.batch_wait_timeout_s={s['batch_wait_timeout_s']!r}; must be >= 0")
    if float(s["max_body_mb"]) <= 0:
        raise ValueError(f"serve.max_body_mb={s['max_body_mb']!r}; must be > 0")
    if float(s.get("num_gpus") or 0) < 0:
        raise ValueError(f"serve.num_gpus={s['num_gpus']!r}; must be >= 0")
    if int(s["max_ongoing_requests"]) < int(s["max_batch_size"]):
        raise ValueError(
            f"serve.max_ongoing_requests={s['max_ongoing_requests']} < serve.max_batch_size={s['max_batch_size']}: "
            "a replica would never hold enough requests to fill a batch; raise max_ongoing_requests or lower max_batch_size"
        )
    if s.get("ingress", "proxy") not in INGRESS_ENV:
        raise ValueError(f"serve.ingress={s['ingress']!r}; choose one of {sorted(INGRESS_ENV)}")
    _check_overload(s)
    _check_predictions(s.get("predictions") or {})
    _check_replicas(s.get("autoscaling"), s.get("num_replicas"))


def _check_overload(s: Mapping[str, Any]) -> None:
    if s.get("overload_status", 503) not in (503, 429):
        raise ValueError(f"serve.overload_status={s['overload_status']!r}; choose 503 or 429")
    r = s.get("retry_after_s", 1)
    if not isinstance(r, (int, float)) or isinstance(r, bool) or r < 0:
        raise ValueError(f"serve.retry_after_s={r!r}; must be a number >= 0")
    limit = s.get("admission_limit")
    if limit is None:
        return
    if not isinstance(limit, int) or isinstance(limit, bool) or not int(s["max_batch_size"]) <= limit < int(s["max_ongoing_requests"]):
        raise ValueError(
            f"serve.admission_limit={limit!r}; must be an integer from serve.max_batch_size={s['max_batch_size']} "
            f"to serve.max_ongoing_requests-1={int(s['max_ongoing_requests']) - 1} (or null: Serve's max_queued_requests only)"
        )


def _check_predictions(t: Mapping[str, Any]) -> None:
    if t.get("write"):
        if not t.get("root"):
            raise ValueError("serve.predictions.root is not set (default: ${paths.predictions}); or set serve.predictions.write=false")
        if not isinstance(t.get("flush_rows"), int) or t["flush_rows"] < 1:
            raise ValueError(f"serve.predictions.flush_rows={t.get('flush_rows')!r}; must be an integer >= 1")
        if not isinstance(t.get("flush_seconds"), (int, float)) or t["flush_seconds"] <= 0:
            raise ValueError(f"serve.predictions.flush_seconds={t.get('flush_seconds')!r}; must be > 0")


def _check_replicas(auto: Mapping[str, Any] | None, n: Any) -> None:
    if auto:
        unknown = sorted(set(auto) - set(AUTOSCALING_KEYS))
        if unknown:
            raise ValueError(f"serve.autoscaling has unknown keys {unknown}; choose from {list(AUTOSCALING_KEYS)}")
        if n not in (None, "auto"):
            raise ValueError(f"serve.num_replicas={n!r} with serve.autoscaling set; use num_replicas: auto (or null) with autoscaling")
    elif n == "auto":
        pass  # Serve's default autoscaling
    elif not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"serve.num_replicas={n!r}; choose an integer >= 1, or 'auto'")


def deployment_options(s: Mapping[str, Any]) -> dict:
    """``Deployment.options(...)`` keyword arguments from a checked ``serve`` config."""
    opts: dict[str, Any] = {
        "max_ongoing_requests": int(s["max_ongoing_requests"]),
        "max_queued_requests": int(s.get("max_queued_requests") or -1),
        "backpressure_config": {"status_code": int(s.get("overload_status", 503)), "retry_after_s": float(s.get("retry_after_s", 1))},
        "ray_actor_options": {"num_cpus": float(s["num_cpus"]), "num_gpus": float(s.get("num_gpus") or 0)},
    }
    if s.get("access_log") is False:
        opts["logging_config"] = {"enable_access_log": False}
    for key in ROLLOUT_KEYS:
        if s.get(key) is not None:
            opts[key] = s[key]
    if s.get("autoscaling"):
        opts["num_replicas"] = "auto"
        opts["autoscaling_config"] = dict(s["autoscaling"])
    else:
        opts["num_replicas"] = s["num_replicas"]
    return opts
