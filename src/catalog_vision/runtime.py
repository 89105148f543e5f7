"""Connecting to Ray: a cluster when one is named (or when running under ``ray job submit``),
otherwise a local Ray started in-process."""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Mapping

log = logging.getLogger("catalog_vision")


def init_ray(ray_cfg: Mapping[str, Any] | None = None) -> None:
    import ray

    ray_cfg = dict(ray_cfg or {})
    if ray.is_initialized():
        return
    address = ray_cfg.get("address") or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # Logical CPUs may exceed the physical count so Train workers and Data tasks run side by side.
        ray.init(
            num_cpus=ray_cfg.get("num_cpus"),
            num_gpus=ray_cfg.get("num_gpus"),
            object_store_memory=ray_cfg.get("object_store_memory"),
            include_dashboard=bool(ray_cfg.get("include_dashboard", False)),
            log_to_driver=True,
        )
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(ray_cfg.get("progress_bars", True))
    # Print a per-operator summary once a dataset finishes (what ran, rows, time).
    ctx.verbose_stats_logs = False


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + os.urandom(3).hex()


def job_command(script: str) -> str:
    """The running Hydra job as a user would retype it (the same however it was started, e.g. under
    ``ray job submit``); recorded in evaluation reports."""
    import shlex

    from hydra.core.hydra_config import HydraConfig

    from .storage.secrets import redact_command

    return shlex.join(["python", script, *redact_command(list(HydraConfig.get().overrides.task))])


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
