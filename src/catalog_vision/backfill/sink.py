"""Exactly-once Parquet output: a per-file commit protocol keyed on image ids.

Each write task turns one batch of prediction rows into one Parquet file whose name is a hash of
the batch's sorted ``image_id`` values, and makes it visible atomically:

* local folders: write ``.<name>.<random>.tmp`` beside it, then ``os.replace`` (atomic rename);
* object stores: a single PUT (or a completed multipart upload): an object is never visible half
  written.

So a reader globbing ``*.parquet`` never sees a partial file; a retried task rewrites the same name
(no duplicate rows); and a run killed at any point leaves only whole files, whose ``image_id``\\ s a
rerun reads back and skips (:func:`committed_ids`). Rerunning therefore finishes only the remainder.

A finished pipeline also writes a commit record, ``<run>/_committed.json`` (:func:`write_commit_record`:
each file's name and row count), before the run manifest. :func:`committed_files` is the union of a
LIST and those records, so a store whose LIST lags behind its writes (some S3-compatible gateways,
Ceph RGW multisite) cannot hide a committed file from the next run's plan: a name the LIST lacks is
checked with a HEAD.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from . import lease
from .. import storage as st
from .outcome import TooManyErrors, is_retryable


log = logging.getLogger("catalog_vision")

TEMP_SUFFIX = st.TEMP_SUFFIX
COMMIT_RECORD = "_committed.json"
# output.max_error_fraction is checked on batches of at least this many rows (a run's short last
# file of a few rows says little about the storage or the decoder).
MIN_ROWS_FOR_ERROR_CHECK = 20


def part_name(image_ids: list[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(image_ids)).encode()).hexdigest()[:24]
    return f"part-{digest}.parquet"


def commit_batch(
    batch: pa.Table,
    out_dir: str,
    storage: Mapping[str, Any] | None = None,
    compression: str = "zstd",
    lease_uri: str | None = None,
    lease_token: str | None = None,
    max_error_fraction: float | None = None,
) -> pa.Table:
    """Write ``batch`` as one committed Parquet file; return a one-row receipt
    (``file, rows, errors, retry_later, retry_sample``).

    Rows whose error can pass (:data:`.outcome.RETRYABLE_ERRORS`) are not committed: the next run
    retries them. A batch whose error rows (of any class) pass ``max_error_fraction`` raises
    :class:`.outcome.TooManyErrors` and commits nothing, and so does a writer whose run no longer
    holds the lease at ``lease_uri`` (a writer left behind by a killed driver).
    """
    if batch.num_rows == 0:
        return _receipt(None, 0, 0, 0, "")
    errors = batch.column("error").to_pylist() if "error" in batch.column_names else [None] * batch.num_rows
    n_errors = sum(e is not None for e in errors)
    if max_error_fraction is not None and batch.num_rows >= MIN_ROWS_FOR_ERROR_CHECK and n_errors > max_error_fraction * batch.num_rows:
        sample = sorted({e.split(":", 1)[0] for e in errors if e})
        raise TooManyErrors(
            f"{n_errors} of {batch.num_rows} rows in a batch are errors ({sample}), over output.max_error_fraction={max_error_fraction}; "
            f"stopped before committing them (first: {next(e for e in errors if e)[:300]})"
        )
    retry = [is_retryable(e) for e in errors]
    n_retry = sum(retry)
    sample = next((e for e, r in zip(errors, retry) if r), "")[:300]
    if n_retry:
        batch = batch.filter(pa.array([not r for r in retry]))
    if batch.num_rows == 0:
        return _receipt(None, 0, 0, n_retry, sample)
    name = part_name(batch.column("image_id").to_pylist())
    buf = io.BytesIO()
    pq.write_table(batch, buf, compression=compression)
    uri = st.join(out_dir, name)
    if lease_uri:
        lease.check(lease_uri, lease_token or "", storage)
    st.write_bytes(uri, buf.getbuffer(), storage)  # atomic (local: temp file + rename); a view, not a copy
    return _receipt(uri, batch.num_rows, n_errors - n_retry, n_retry, sample)


def _receipt(uri: str | None, rows: int, errors: int, retry_later: int, sample: str) -> pa.Table:
    return pa.table({
        "file": pa.array([uri], pa.string()),
        "rows": pa.array([rows], pa.int64()),
        "errors": pa.array([errors], pa.int64()),
        "retry_later": pa.array([retry_later], pa.int64()),
        "retry_sample": pa.array([sample], pa.string()),
    })


def write_commit_record(run_dir: str, receipts: list[Mapping[str, Any]], storage: Mapping[str, Any] | None = None) -> str | None:
    """``<run_dir>/_committed.json``: the Parquet files the run committed (names relative to the
    run's folder) and their row counts. None when the run committed nothing."""
    files = sorted(({"name": r["file"].rsplit("/", 1)[-1], "rows": int(r["rows"])} for r in receipts if r.get("file")), key=lambda f: f["name"])
    if not files:
        return None
    uri = st.join(run_dir, COMMIT_RECORD)
    st.write_json(uri, {"files": files, "rows": sum(f["rows"] for f in files)}, storage)
    return uri


def committed_files(root: str, storage: Mapping[str, Any] | None = None) -> list[str]:
    """URIs of the committed Parquet files under ``root`` (temp files never match): those the LIST
    shows, and those the commit records under ``root`` name that the LIST lacks but a HEAD finds."""
    fs, path = st.resolve(root, storage)
    if not fs.exists(path):
        return []
    scheme = root.split("://", 1)[0] + "://" if st.is_remote(root) else ""
    listed = fs.find(path)
    found = {f for f in listed if f.endswith(".parquet") and not os.path.basename(f).startswith(".")}
    for record in (f for f in listed if os.path.basename(f) == COMMIT_RECORD):
        folder = record.rsplit("/", 1)[0]
        for entry in json.loads(fs.cat_file(record))["files"]:
            name = f"{folder}/{entry['name']}"
            if name not in found and _exists_now(fs, name):
                log.info("committed file %s is in %s but not in the listing (a lagging LIST)", name, record)
                found.add(name)
    return sorted(scheme + f for f in found)


def _exists_now(fs, path: str) -> bool:
    """A HEAD past any cached listing (s3fs answers ``info`` from a cached parent listing)."""
    fs.invalidate_cache(path)
    try:
        return fs.info(path).get("type") == "file"
    except FileNotFoundError:
        return False


def committed_ids(root: str, storage: Mapping[str, Any] | None = None) -> pa.Array:
    """Every ``image_id`` already committed under ``root`` (all runs of one model on one catalog:
    :func:`.tables.table_dir`)."""
    files = committed_files(root, storage)
    if not files:
        return pa.array([], pa.string())
    fs, _ = st.resolve(root, storage)
    paths = [st.resolve(f, storage)[1] for f in files]
    table = pads.dataset(paths, filesystem=fs, format="parquet").to_table(columns=["image_id"])
    return table.column("image_id").combine_chunks()


def remove_stale_temp_files(root: str, storage: Mapping[str, Any] | None = None, older_than_s: float = 3600.0) -> int:
    """Temp files left by writers killed mid-write (never visible to readers), removed once they
    are older than any live writer could be. Object stores commit with one PUT: nothing to remove."""
    if st.is_remote(root):
        return 0
    fs, path = st.resolve(root, storage)
    if not fs.exists(path):
        return 0
    now, removed = time.time(), 0
    for f in fs.find(path):
        name = os.path.basename(f)
        if name.startswith(".part-") and name.endswith(TEMP_SUFFIX):
            try:
                if now - os.path.getmtime(f) > older_than_s:
                    os.remove(f)
                    removed += 1
            except FileNotFoundError:
                pass
    return removed


def commit_memory(rows_per_file: int, embedding_dim: int) -> float:
    """What a commit task holds: its block of rows (the float32 embedding and ~512 bytes of the rest
    per row), the Parquet file being encoded, and Arrow's working copies: about three times the block,
    declared so Ray does not pack more commits onto a node than its memory holds."""
    return 3.0 * rows_per_file * (4 * embedding_dim + 512)
