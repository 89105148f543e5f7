"""Overload answered at once: an in-replica count of the inference requests being worked on.

Serve's own load shedding (``max_queued_requests``) rejects in the proxy with the configured status
and ``Retry-After`` (``backpressure_config``), but with a plain-text body. The ingress sheds first:
with ``serve.admission_limit`` requests already in a replica (below ``max_ongoing_requests``, so
Serve keeps sending requests here instead of queueing them), the next one gets
``serve.overload_status`` (503 or 429), ``Retry-After: serve.retry_after_s`` and a JSON error, without
its body being read or any image decoded.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

from .inputs import ApiError


class Admission:
    def __init__(self, limit: int | None, status: int = 503, retry_after_s: float = 1):
        self.limit = limit
        self.status = int(status)
        self.retry_after = str(max(0, math.ceil(retry_after_s)))
        self.active = 0
        self.rejected = 0

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        # Handlers run on the replica's one event loop: the check and the increment cannot interleave.
        if self.limit is not None and self.active >= self.limit:
            self.rejected += 1
            raise ApiError(
                self.status,
                f"overloaded: this replica is already working on {self.active} requests (serve.admission_limit); retry after {self.retry_after} s",
                headers={"Retry-After": self.retry_after},
            )
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
