"""Connecting to Ray: a cluster when one is named (or when running under ``ray job submit``),
otherwise a local Ray started in-process."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Mapping

log = logging.getLogger("catalog_vision")


def verbose(ray_cfg: Mapping[str, Any] | None) -> bool:
    """``ray.verbose``: Ray's own INFO lines (Ray Data's plans and progress logs, Ray Train's worker
    group and report lines) in the output. Off by default: the jobs print their own summaries."""
    return bool((ray_cfg or {}).get("verbose", False))


def say(message: str) -> None:
    """One line to stdout, exactly once. Inside Ray Train workers ``print`` is patched to go through
    the logging handlers Ray Train installs (two of them reach the console: every line twice)."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def quiet_ray_logs(ray_cfg: Mapping[str, Any] | None) -> None:
    """Unless ``ray.verbose``: Ray Data's INFO lines off in this process and, through the environment
    a local Ray inherits, in its workers (a cluster gets the same from ``cluster/runtime_env.yaml``)."""
    if verbose(ray_cfg):
        return
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    logging.getLogger("ray.data").setLevel(os.environ["RAY_DATA_LOG_LEVEL"])


def workers_at_driver_priority() -> None:
    """Ray starts its worker processes 15 nice levels below its own daemons and the driver, so that
    on a busy node the control plane stays responsive. Here the workers ARE the job (Train workers,
    predictor actors, decode tasks) and the driver runs Ray Data's executor: at nice 15 they yield
    the cores to it and to the daemons whenever those want them (README "Training speed"). Call
    before starting a local Ray: its workers get the driver's own priority, unless
    RAY_worker_niceness (an increment over the raylet's, i.e. the driver's, niceness) says otherwise."""
    os.environ.setdefault("RAY_worker_niceness", "0")


def init_ray(ray_cfg: Mapping[str, Any] | None = None) -> None:
    import ray

    ray_cfg = dict(ray_cfg or {})
    quiet_ray_logs(ray_cfg)
    if ray.is_initialized():
        return
    address = ray_cfg.get("address") or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        workers_at_driver_priority()
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
    # Bars (tqdm) on a terminal. Where stdout is not one (a log file, Ray workers such as Train's
    # SplitCoordinator) Ray Data logs a progress block every few seconds at INFO instead, muted
    # with the rest of its INFO lines unless ray.verbose; without use_ray_tqdm=False the workers
    # would write a tqdm redraw per update into the log.
    ctx.enable_progress_bars = bool(ray_cfg.get("progress_bars", True))
    ctx.use_ray_tqdm = verbose(ray_cfg)
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
