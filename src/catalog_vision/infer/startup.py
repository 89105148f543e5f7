"""How long a predictor actor took to come up: a fresh process boots Ray's worker, imports Ray Data
and torch, then loads the checkpoint and settles ``dtype``/``model_batch`` (README "What decides the
ratio"). Each actor of a backfill reports its times; the run manifest keeps the first actor's
readiness and the median start-up (``_run.json``: ``timings.first_actor_ready_s``,
``predictor.actors``)."""

from __future__ import annotations

import os
import statistics
import time

ACTOR_REPORT_PREFIX = "actor-"


def process_started_at(pid: int | str = "self") -> float | None:
    """Wall-clock time (``time.time()`` scale) at which process ``pid`` started; None off Linux.

    ``/proc/<pid>/stat`` field 22 is the start in clock ticks after boot; ``/proc/uptime`` is the
    time since boot, so the start is ``now - uptime + ticks / CLK_TCK``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            after_name = f.read().rsplit(")", 1)[1].split()  # the name (field 2) may hold spaces
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # fields 3.. -> field 22 is index 19
    except (OSError, ValueError, IndexError):
        return None


def actor_report(node_id: str | None, init_started: float) -> dict:
    """This actor's start-up, at the end of its ``__init__``."""
    ready = time.time()
    started = process_started_at()
    return {"kind": "actor", "node_id": node_id, "pid": os.getpid(), "process_started": started, "init_started": init_started, "ready": ready,
            "startup_s": None if started is None else round(ready - started, 3), "init_s": round(ready - init_started, 3)}


def summarize(actors: list[dict], call_started: float) -> tuple[float | None, dict | None]:
    """(seconds from the backfill call to the first actor ready, the actors' start-up summary).

    ``startup_s``: process start to ready (the median over the run's actors); ``init_s``: the part in
    ``__init__`` (checkpoint load, dtype and model_batch choices). Restarted actors count too."""
    if not actors:
        return None, None
    first = round(min(a["ready"] for a in actors) - call_started, 2)
    startups = [a["startup_s"] for a in actors if a.get("startup_s") is not None]
    summary = {"started": len(actors), "startup_s": round(statistics.median(startups), 2) if startups else None,
               "init_s": round(statistics.median(a["init_s"] for a in actors), 2)}
    return first, summary
