"""The predictor actor pool's settings: checks before any cluster work, where images are decoded
(``predictor.decode_in``), a GPU config on a cluster without GPUs (``predictor.if_no_gpu``: wait for
the autoscaler, or fall back to CPU actors), fault tolerance and tasks in flight per actor."""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from ..infer.device import DEVICES, DTYPES
from .plan import check_batches_per_task

log = logging.getLogger("catalog_vision")

IF_NO_GPU = ("auto", "cpu", "wait", "error")
DECODE_IN = ("auto", "tasks", "actors")


def check_predictor(p: Mapping[str, Any]) -> None:
    """Fail fast, naming the valid choices, before any cluster work."""
    if p["dtype"] not in DTYPES:
        raise ValueError(f"predictor.dtype={p['dtype']!r}; choose one of {sorted(DTYPES)}")
    if p["device"] not in DEVICES:
        raise ValueError(f"predictor.device={p['device']!r}; choose one of {list(DEVICES)}")
    decode_in(p)
    check_batches_per_task(p.get("batches_per_task"))
    if p.get("if_no_gpu", "auto") not in IF_NO_GPU:
        raise ValueError(f"predictor.if_no_gpu={p.get('if_no_gpu')!r}; choose one of {list(IF_NO_GPU)}")
    if p["device"] == "cuda" and not float(p["num_gpus"]):
        raise ValueError("predictor.device=cuda needs predictor.num_gpus > 0 (Ray hides GPUs from actors that do not ask for one)")
    if int(p["min_actors"]) > int(p["max_actors"]) or int(p["min_actors"]) < 1:
        raise ValueError(f"need 1 <= predictor.min_actors <= predictor.max_actors, got {p['min_actors']} and {p['max_actors']}")


RAY_DATA_ACTOR_DEFAULT = -1  # max_restarts and max_task_retries of Ray Data's actor pools


def actor_fault_args(p: Mapping[str, Any]) -> dict:
    """Custom resources and fault tolerance of the predictor actors (README "Preemptible nodes").

    ``max_restarts``: how often Ray recreates an actor whose process or node died (-1: always);
    ``max_task_retries``: how often a batch that was running on such an actor is sent again
    (-1: always). A retried batch commits under the same file name (:mod:`.sink`), so a retry
    never duplicates rows. ``resources``: custom node resources each actor needs (e.g. a
    node-type label), which also spreads the actors when a node offers one.

    Ray Data's actor pools default to -1 for both counts, and passing them goes through
    ``map_batches``' ``**ray_remote_args`` (deprecated, to be removed in Ray 2.64): only a value
    other than that default is passed."""
    args: dict[str, Any] = {}
    for key in ("max_restarts", "max_task_retries"):
        if p.get(key) is not None and int(p[key]) != RAY_DATA_ACTOR_DEFAULT:
            args[key] = int(p[key])
    if p.get("resources"):
        args["resources"] = {str(k): float(v) for k, v in dict(p["resources"]).items()}
    return args


def decode_in(p: Mapping[str, Any]) -> str:
    """Where images are fetched and decoded. ``auto``: in the predictor actors when they run on CPU
    (decode and inference share the same cores, so a hand-off between processes is pure overhead),
    in separate CPU tasks when the predictor has a GPU (CPU decode then overlaps GPU inference)."""
    where = p.get("decode_in", "auto")
    if where not in DECODE_IN:
        raise ValueError(f"predictor.decode_in={where!r}; choose one of {list(DECODE_IN)}")
    if where == "auto":
        return "tasks" if float(p["num_gpus"]) > 0 else "actors"
    return where


def tasks_in_flight(p: Mapping[str, Any]) -> int | None:
    """Tasks queued per predictor actor. Decoding in the actors, a queued task is only catalog rows
    (nothing expensive to prefetch), and every queued task is pinned to its actor: at the end of a
    run the other actors idle while it drains (Ray Data's default of 4 in flight: up to three whole
    batches waiting behind one actor). One queued behind the running one
    keeps the dispatch round trip off the actor's critical path for short (small-image) batches.
    With separate decode tasks, queued tasks hold decoded batches ready: Ray's default."""
    return 2 if decode_in(p) == "actors" else None


def cluster_resource(name: str) -> float:
    import ray

    return float(ray.cluster_resources().get(name, 0))


def effective_predictor(p: Mapping[str, Any], cluster_gpus: float, on_cluster: bool = False, gpus_now=None) -> dict:
    """The predictor settings this run uses. A GPU config on a cluster without GPUs (``if_no_gpu``):

    * ``wait`` (what ``auto`` means on a cluster): asks the autoscaler for GPU nodes and waits up to
      ``predictor.gpu_wait_s`` for them, then stops with an error naming the setting;
    * ``cpu`` (what ``auto`` means on a local Ray): runs on CPU actors, with a warning and a
      ``fallback`` entry in ``_run.json``; an explicit ``dtype`` is kept (``auto`` is measured on CPU);
    * ``error``: stops at once.

    ``gpus_now`` (for tests): a callable returning the cluster's GPU count while waiting."""
    p = dict(p)
    if float(p["num_gpus"]) <= 0 or cluster_gpus > 0:
        return p
    policy = p.get("if_no_gpu", "auto")
    if policy == "auto":
        policy = "wait" if on_cluster else "cpu"
    if policy == "error":
        raise RuntimeError("predictor asks for GPUs (num_gpus>0) but the cluster has none; use predictor=cpu, or if_no_gpu=cpu|wait")
    if policy == "wait":
        wait_for_gpus(float(p["num_gpus"]), float(p.get("gpu_wait_s") or 900), gpus_now or (lambda: cluster_resource("GPU")))
        return p
    cpus = max(1, int(p.get("cpus_per_actor", 1)))
    before = {k: p[k] for k in ("device", "num_gpus", "dtype", "max_actors", "batch_size")}
    p.update(device="cpu", num_gpus=0, pin_memory=False, jpeg_decode_on_device=False)
    p["max_actors"] = max(1, min(int(p["max_actors"]), int(cluster_resource("CPU") // cpus) or 1))
    p["min_actors"] = min(int(p["min_actors"]), p["max_actors"])
    p["batch_size"] = min(int(p["batch_size"]), 512)
    p["fallback"] = {"why": "the cluster has no GPUs (if_no_gpu=cpu)", "asked": before, "ran": {k: p[k] for k in before}}
    log.warning("predictor asks for GPUs but the cluster has none: running on %d CPU actors instead (if_no_gpu=cpu; dtype %s kept). "
                "Set predictor=cpu to mean it, or if_no_gpu=wait on an autoscaling cluster", p["max_actors"], p["dtype"])
    if p["dtype"] == "float16":
        log.warning("predictor.dtype=float16 on CPU is usually slower than float32 (measure: python bench/precision.py)")
    return p


def wait_for_gpus(need: float, timeout_s: float, gpus_now) -> None:
    """Ask the autoscaler for ``need`` GPUs and wait for them to join, up to ``timeout_s``."""
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[{"GPU": need}])
    except Exception as e:  # no autoscaler (a static cluster): the wait can still see nodes join
        log.info("no autoscaler request (%s); waiting for GPU nodes to join", type(e).__name__)
    log.warning("predictor asks for GPUs but the cluster has none yet: waiting up to %.0f s for GPU nodes (if_no_gpu=wait)", timeout_s)
    deadline = time.monotonic() + timeout_s
    while gpus_now() < need:
        if time.monotonic() >= deadline:
            raise RuntimeError(f"no GPU joined the cluster within predictor.gpu_wait_s={timeout_s:g} s (if_no_gpu=wait); "
                               "check the autoscaler's GPU node type, raise gpu_wait_s, or run with predictor=cpu")
        time.sleep(min(5.0, max(0.1, timeout_s / 20)))
