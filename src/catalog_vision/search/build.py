"""Build (or bring up to date) a model's similarity index from its predictions table.

[1] List the table's committed files; compare with the files the last build's manifest covers.
[2] Full build (first build, changed settings, a covered file gone or rewritten, cells that no
    longer fit, too many superseded rows): read every file with Ray Data, one row per image,
    train the cells, add every vector.
[3] Incremental build (only new files): read the new files only; an image already indexed is
    replaced when the new row comes from a later run (the old vector is masked, not removed).
[4] Write the index and its row table under new names, then the manifest naming them.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import time
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import storage as st
from ..runtime import new_run_id
from . import ann
from .rows import latest_per_image, list_files, read_rows, run_order, vectors_of
from .store import FORMAT, MANIFEST, read_manifest

log = logging.getLogger("catalog_vision")


def library() -> dict:
    faiss = ann.faiss_module()

    return {"name": "faiss-cpu", "version": faiss.__version__}


def full_reason(prev: Mapping[str, Any] | None, files: Mapping[str, int], params: ann.IndexParams, incremental: bool) -> str | None:
    """Why the index must be built from scratch, or ``None`` when new files can be added to it."""
    if not incremental:
        return "index.incremental=false"
    if prev is None:
        return "no index yet"
    if prev.get("format") != FORMAT:
        return f"the index's format {prev.get('format')!r} is not {FORMAT!r}"
    if prev["library"]["version"].split(".")[:2] != library()["version"].split(".")[:2]:
        return f"built with faiss {prev['library']['version']}, this is {library()['version']}"
    if prev["params"]["build"] != params.build_key():
        return f"settings changed: {prev['params']['build']} -> {params.build_key()}"
    gone = [f for f in prev["files"] if f not in files]
    if gone:
        return f"{len(gone)} covered file(s) are no longer in the table (e.g. {gone[0]}): rows may have been removed"
    changed = [f for f, meta in prev["files"].items() if files[f] != meta["size"]]
    if changed:
        return f"{len(changed)} covered file(s) changed size (e.g. {changed[0]}): rewritten"
    return None


def growth_reason(prev: Mapping[str, Any], total: int, dead: int, params: ann.IndexParams, max_growth: float, max_superseded: float) -> str | None:
    """After reading the new rows: why adding them would leave a poor index (then: full build)."""
    nlist = prev["params"]["nlist"]
    if params.nlist is None and params.cells(total) != nlist:
        return f"{total} vectors call for {params.cells(total)} cells, the index has {nlist}"
    if nlist > 1 and total > prev["trained_rows"] * (1 + max_growth):
        return f"the cells were trained on {prev['trained_rows']} rows; {total} would pass index.max_growth={max_growth}"
    if total and dead / total > max_superseded:
        return f"{dead} of {total} vectors would be superseded rows, over index.max_superseded={max_superseded}"
    return None


def build(table: str, out: str, params: ann.IndexParams, storage: Mapping[str, Any] | None = None, *, model_id: str, catalog: str,
          incremental: bool = True, max_growth: float = 1.0, max_superseded: float = 0.2) -> dict:
    """Build or update the index of ``table`` (a model's predictions for one catalog) in ``out``;
    returns the manifest written (``build.mode``: ``full``, ``incremental`` or ``unchanged``)."""
    t0 = time.perf_counter()
    # [1] What the table holds now, and what the last build covered.
    files = list_files(table, storage)
    if not files:
        raise FileNotFoundError(f"no predictions under {table!r}: run jobs/backfill.py for model {model_id} on catalog {catalog} first")
    prev = read_manifest(out, storage)
    reason = full_reason(prev, files, params, incremental)
    if reason is None:
        new_files = [f for f in files if f not in prev["files"]]
        if not new_files:
            return _unchanged(prev, out, storage, params)
        result = _incremental(prev, out, new_files, storage, params, max_growth, max_superseded)
        if isinstance(result, str):
            reason = result
    if reason is not None:
        log.info("full index build of %s: %s", table, reason)
        result = _full(list(files), storage, params)
    index, rows, stats = result
    stats["reason"] = reason
    return _write(out, index, rows, files, stats, params, storage, model_id=model_id, catalog=catalog, table=table, prev=prev, seconds=time.perf_counter() - t0)


def _full(files: list[str], storage, params: ann.IndexParams):
    # [2] Every file, one row per image.
    rows, errors = read_rows(files, storage)
    rows, dropped = latest_per_image(rows)
    if rows.num_rows == 0:
        raise ValueError(f"the table's {len(files)} file(s) hold no row with an embedding ({errors} error rows): nothing to index")
    index = ann.build(vectors_of(rows), params)
    table = _row_table(rows, 0)
    stats = {"mode": "full", "new_files": len(files), "added_rows": rows.num_rows, "error_rows_skipped": errors, "older_rows_dropped": dropped,
             "trained_rows": rows.num_rows}
    return index, table, stats


def _incremental(prev, out, new_files, storage, params, max_growth, max_superseded):
    # [3] The new files only; a later run's row replaces an indexed image's.
    new, errors = read_rows(new_files, storage)
    new, dropped = latest_per_image(new)
    index = ann.deserialize(st.read_bytes(st.join(out, prev["index_file"]), storage))
    rows = pq.read_table(io.BytesIO(st.read_bytes(st.join(out, prev["rows_file"]), storage)))
    if new.num_rows and new.schema.field("embedding").type.list_size != index.d:
        return f"new rows have {new.schema.field('embedding').type.list_size}-d embeddings, the index {index.d}-d"
    live = np.flatnonzero(rows.column("live").to_numpy(zero_copy_only=False))
    live_ids = rows.column("image_id").take(pa.array(live))
    pos = pc.index_in(new.column("image_id"), value_set=live_ids).to_pylist()
    new_runs = new.column("run_id").to_pylist()
    old_runs = rows.column("run_id").take(pa.array(live)).to_pylist()
    keep, superseded = np.ones(new.num_rows, dtype=bool), []
    for i, p in enumerate(pos):
        if p is None:
            continue
        if run_order(new_runs[i]) >= run_order(old_runs[p]):
            superseded.append(int(live[p]))
        else:
            keep[i] = False  # an earlier run's row showed up late: the indexed one stays
    new = new.filter(pa.array(keep))
    live_flags = rows.column("live").to_numpy(zero_copy_only=False).copy()
    live_flags[superseded] = False
    total = index.ntotal + new.num_rows
    dead = int((~live_flags).sum())
    why = growth_reason(prev, total, dead, params, max_growth, max_superseded)
    if why is not None:
        return why
    ann.add(index, vectors_of(new))
    rows = rows.set_column(rows.schema.get_field_index("live"), "live", pa.array(live_flags))
    rows = pa.concat_tables([rows, _row_table(new, index.ntotal - new.num_rows)])
    stats = {"mode": "incremental", "new_files": len(new_files), "added_rows": new.num_rows, "error_rows_skipped": errors,
             "older_rows_dropped": dropped + int((~keep).sum()), "superseded_rows": len(superseded), "trained_rows": prev["trained_rows"]}
    return index, rows, stats


def _row_table(rows: pa.Table, first_id: int) -> pa.Table:
    return pa.table({
        "id": pa.array(np.arange(first_id, first_id + rows.num_rows, dtype=np.int64)),
        "image_id": rows.column("image_id"),
        "uri": rows.column("uri"),
        "label": rows.column("label"),
        "run_id": rows.column("run_id"),
        "file": rows.column("file"),
        "live": pa.array(np.ones(rows.num_rows, dtype=bool)),
    })


def _unchanged(prev: dict, out: str, storage, params: ann.IndexParams) -> dict:
    """Nothing to add; the search settings (nprobe, exact_filter_below) are the config's now."""
    manifest = {**prev, "build": {**prev["build"], "mode": "unchanged", "reason": "no new files in the table since the last build"},
                "params": {**prev["params"], "nprobe": params.nprobe, "exact_filter_below": params.exact_filter_below}}
    st.write_json(st.join(out, MANIFEST), manifest, storage)
    return manifest


def _write(out, index, rows, files, stats, params, storage, *, model_id, catalog, table, prev, seconds) -> dict:
    # [4] Two new files, then the manifest that names them; the previous build's files go last.
    build_id = new_run_id()
    data = ann.serialize(index)
    index_file, rows_file = f"index-{build_id}.faiss", f"rows-{build_id}.parquet"
    st.write_bytes(st.join(out, index_file), data, storage)
    buf = io.BytesIO()
    pq.write_table(rows, buf, compression="zstd")
    st.write_bytes(st.join(out, rows_file), buf.getvalue(), storage)
    live = int(pc.sum(rows.column("live").cast(pa.int64())).as_py() or 0)
    nlist = ann.nlist_of(index)
    manifest = {
        "format": FORMAT,
        "model_id": model_id,
        "catalog_id": catalog,
        "predictions": table,
        "rows": live,
        "vectors": int(index.ntotal),
        "superseded": int(index.ntotal) - live,
        "dim": int(index.d),
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "build_s": round(seconds, 2),
        "build": stats,
        "trained_rows": stats["trained_rows"],
        "params": {"build": params.build_key(), "nlist": nlist, "nprobe": params.nprobe, "exact_filter_below": params.exact_filter_below,
                   "factory": f"IVF{nlist},{params.encoding}", "metric": "inner_product"},
        "library": library(),
        "index_file": index_file,
        "rows_file": rows_file,
        "index_bytes": len(data),
        "bytes_per_vector": round(len(data) / max(1, index.ntotal), 1),
        "files": {f: {"size": size} for f, size in files.items()},
        "embedding_dtypes": run_dtypes(files, storage),
    }
    st.write_json(st.join(out, MANIFEST), manifest, storage)
    if prev:
        for name in {prev["index_file"], prev["rows_file"]} - {index_file, rows_file}:
            fs, path = st.resolve(st.join(out, name), storage)
            if fs.exists(path):
                fs.rm_file(path)
    return manifest


def run_dtypes(files: Mapping[str, int], storage) -> list[str]:
    """The dtypes the backfill runs behind ``files`` ran the model in (their ``_run.json``): a new
    image is embedded in the same one."""
    found = set()
    for run in sorted({f.rsplit("/", 1)[0] for f in files}):
        uri = st.join(run, "_run.json")
        if st.exists(uri, storage):
            dtype = (st.read_json(uri, storage).get("predictor") or {}).get("resolved_dtype")
            if dtype:
                found.update(dtype.split(","))
    return sorted(found)
