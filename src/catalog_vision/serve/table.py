"""Served images into the predictions table: rows of requests that name an ``image_id`` are
buffered and committed to ``<predictions>/<model_id>/<catalog_id>/serve-<run id>/`` with the backfill's schema
(:meth:`Predictor.table_from_outputs`) and its atomic file commit (:func:`catalog_vision.backfill.sink.commit_batch`).

A buffer is flushed at ``flush_rows`` rows, ``flush_seconds`` after its first row, and on replica
shutdown. A later backfill of the catalog reads the committed ids of every run under the model's
folder, these included, and skips them.

One row per image holds here too: a flush takes the table's lease (:mod:`..lease`, the one a
backfill holds for its whole run, so a flush waits for a running backfill and two replicas flush
one at a time), and commits only the ids the table does not have yet (an image the backfill
labeled, or one served earlier, keeps its first row). The committed ids are read incrementally:
only the files that appeared since the last flush.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

import pyarrow.compute as pc
import pyarrow.dataset as pads

from ..backfill import lease as leases
from .. import storage as st
from ..runtime import new_run_id
from ..backfill.sink import commit_batch, committed_files
from ..backfill.tables import table_dir

log = logging.getLogger("catalog_vision")


class PredictionsWriter:
    def __init__(self, predictor, root: str, catalog: str, storage: Mapping[str, Any] | None, flush_rows: int, flush_seconds: float, compression: str = "zstd"):
        self.predictor = predictor
        self.run_id = "serve-" + new_run_id()
        self.table_dir = table_dir(root, predictor.model_id, catalog)
        self.out = st.join(self.table_dir, self.run_id)
        self.seen_files: set[str] = set()
        self.known_ids = pa.array([], pa.string())  # ids committed in the table, as of the last flush
        self.skipped_rows = 0
        self.lease_wait_s = 30.0
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
        try:
            with leases.acquire(st.join(self.table_dir, leases.LEASE_NAME), self.run_id, self.storage, ttl_s=60, wait_s=self.lease_wait_s) as lease:
                table = self.new_rows(self.table(items))
                if table.num_rows == 0:
                    return
                receipt = commit_batch(table, self.out, self.storage, self.compression, lease_uri=lease.uri, lease_token=lease.token)
        except leases.LeaseHeld as e:  # a backfill is running: keep the rows for the next flush
            log.warning("served rows not committed yet, %s; retrying at the next flush", e)
            for image_id, out in items:
                self.pending.setdefault(image_id, out)
            return
        self.committed_rows += table.num_rows
        log.info("committed %d served rows to %s", table.num_rows, receipt.column("file")[0].as_py())

    def new_rows(self, table: pa.Table) -> pa.Table:
        """``table`` without the ids the model's table already has (read from files not seen before)."""
        files = [f for f in committed_files(self.table_dir, self.storage) if f not in self.seen_files]
        if files:
            fs, _ = st.resolve(files[0], self.storage)
            ids = pads.dataset([st.resolve(f, self.storage)[1] for f in files], filesystem=fs, format="parquet").to_table(columns=["image_id"])
            self.known_ids = pa.concat_arrays([self.known_ids, ids.column("image_id").combine_chunks()])
            self.seen_files.update(files)
        keep = pc.invert(pc.is_in(table.column("image_id"), value_set=self.known_ids))
        fresh = table.filter(keep)
        if fresh.num_rows < table.num_rows:
            self.skipped_rows += table.num_rows - fresh.num_rows
            log.info("%d served images already have a row in %s; kept the first", table.num_rows - fresh.num_rows, self.table_dir)
        return fresh
