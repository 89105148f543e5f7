"""Served images into the predictions table: rows of requests that name an ``image_id`` are
buffered and committed to ``<predictions>/<model_id>/<catalog_id>/serve-<run id>/`` with the backfill's schema
(:meth:`Predictor.table_from_outputs`) and its atomic file commit (:func:`catalog_vision.sink.commit_batch`).

A buffer is flushed at ``flush_rows`` rows, ``flush_seconds`` after its first row, and on replica
shutdown. A later backfill of the catalog reads the committed ids of every run under the model's
folder, these included, and skips them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from .. import storage as st
from ..runtime import new_run_id
from ..sink import commit_batch
from ..tables import table_dir

log = logging.getLogger("catalog_vision")


class PredictionsWriter:
    def __init__(self, predictor, root: str, catalog: str, storage: Mapping[str, Any] | None, flush_rows: int, flush_seconds: float, compression: str = "zstd"):
        self.predictor = predictor
        self.run_id = "serve-" + new_run_id()
        self.out = st.join(table_dir(root, predictor.model_id, catalog), self.run_id)
        self.storage = dict(storage or {})
        self.flush_rows, self.flush_seconds, self.compression = int(flush_rows), float(flush_seconds), compression
        self.pending: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # image_id -> outputs; the last answer wins
        self.first_at: float | None = None
        self.committed_rows = 0
        self._timer: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    async def add(self, image_ids: Sequence[str], outputs: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        for image_id, out in zip(image_ids, outputs):
            self.pending[image_id] = out
        if self.first_at is None and self.pending:
            self.first_at = time.monotonic()
            if self._timer is None or self._timer.done():
                self._timer = asyncio.get_running_loop().create_task(self._flush_later())
        if len(self.pending) >= self.flush_rows:
            await self.flush()

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.flush_seconds)
        await self.flush()

    def table(self, items: list[tuple[str, tuple[np.ndarray, np.ndarray]]]) -> pa.Table:
        ids = [i for i, _ in items]
        probs = np.stack([o[0] for _, o in items])
        emb = np.stack([o[1] for _, o in items])
        t = self.predictor.table_from_outputs(ids, [None] * len(ids), (probs, emb), [None] * len(ids))
        return t.set_column(t.schema.get_field_index("run_id"), "run_id", pa.array([self.run_id] * len(ids), pa.string()))

    async def flush(self) -> int:
        async with self._lock:
            if not self.pending:
                return 0
            items = sorted(self.pending.items())
            self.pending, self.first_at = {}, None
            await asyncio.to_thread(self.commit, items)
            return len(items)

    def commit(self, items) -> None:
        receipt = commit_batch(self.table(items), self.out, self.storage, self.compression)
        self.committed_rows += len(items)
        log.info("committed %d served rows to %s", len(items), receipt.column("file")[0].as_py())
