"""How a backfill run ends: its ``status`` in ``_run.json`` and the job's exit code.

* ``succeeded``: every catalog image has exactly one row in the model's table for the catalog.
* ``incomplete``: images whose storage read failed in a way that can pass (timeouts, 5xx,
  throttling, connection resets, expired or rejected credentials: error class ``ReadError``)
  were left out of the table, so the next run retries them; everything else was committed.
* ``failed``: the counts read back do not add up (duplicate or lost rows), a batch passed
  ``output.max_error_fraction``, or the run lost its lease; the job exits non-zero.
"""

from __future__ import annotations

from typing import Any, Mapping

# Error classes that are never final: rows with them are not committed (see sink.commit_batch).
RETRYABLE_ERRORS = frozenset({"ReadError"})

EXIT_CODES = {"succeeded": 0, "failed": 1, "incomplete": 75}  # 75: EX_TEMPFAIL, "try again later"


class BackfillFailed(RuntimeError):
    """A run that did not succeed; ``manifest`` is what it wrote to ``_run.json``."""

    def __init__(self, message: str, manifest: Mapping[str, Any]):
        super().__init__(message)
        self.manifest = dict(manifest)
        self.status = manifest.get("status", "failed")


class TooManyErrors(RuntimeError):
    """A batch whose error fraction passed ``output.max_error_fraction``; nothing of it was committed."""


def error_class(error: str | None) -> str | None:
    return None if not error else error.split(":", 1)[0]


def is_retryable(error: str | None) -> bool:
    return error_class(error) in RETRYABLE_ERRORS


def run_status(counts: Mapping[str, Any]) -> tuple[str, str | None]:
    """``(status, reason)`` from a run's counts (see the module docstring)."""
    c = counts
    if c["skipped"] + c["predicted"] + c["errors"] + c["retry_later"] != c["inputs"]:
        return (
            "failed",
            f"counts do not add up: {c['skipped']} skipped + {c['predicted']} predicted + {c['errors']} errors"
            f" + {c['retry_later']} left for a rerun != {c['inputs']} inputs",
        )
    if c["model_rows"] != c["model_distinct_image_ids"]:
        return (
            "failed",
            f"the model's table for this catalog has {c['model_rows']} rows for {c['model_distinct_image_ids']} distinct image ids (duplicate rows)",
        )
    if c["retry_later"]:
        return (
            "incomplete",
            f"{c['retry_later']} images hit storage errors that can pass {c.get('retry_later_sample', [])[:3]}; "
            "they were not committed: run again to label them",
        )
    return "succeeded", None


def find_cause(exc: BaseException, types: tuple[type, ...]) -> BaseException | None:
    """``exc`` or the first exception in its cause/context chain of one of ``types`` (Ray wraps
    a task's exception in a ``RayTaskError``)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        if isinstance(e, types):
            return e
        seen.add(id(e))
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]  # RayTaskError keeps the task's exception in .cause
    # Ray Data re-raises a UDF's exception as RayTaskError(UserCodeException), whose chain does not
    # always keep the original; its printed remote traceback names it.
    text = str(exc)
    for t in types:
        mark = f"{t.__module__}.{t.__qualname__}: "
        if mark in text:
            return t(text.split(mark, 1)[1].split("\n", 1)[0])
    return None


def max_error_fraction(output: Mapping[str, Any]) -> float | None:
    value = output.get("max_error_fraction")
    if value is None:
        return None
    if not 0 <= float(value) <= 1:
        raise ValueError(f"output.max_error_fraction={value!r}: a fraction in [0, 1], or null for no limit")
    return float(value)
