"""A model's predictions table as index rows: one per image, read with Ray Data.

A table is ``<predictions>/<model_id>/<catalog_id>/<run_id>/part-*.parquet`` (:mod:`..tables`):
every run of the model on the catalog, backfills and served rows (``serve-<run id>``). Rows with an
``error`` (no embedding) are skipped; an image with rows in several runs keeps the row of the
latest run (:func:`run_order`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import storage as st

COLUMNS = ["image_id", "uri", "label", "embedding", "run_id", "error"]
SERVE_PREFIX = "serve-"


def run_order(run_id: str | None) -> str:
    """Sort key putting runs in time order: run ids start with a UTC timestamp
    (``20261123T120000-ab12cd``), served rows' runs with ``serve-`` before it."""
    run_id = run_id or ""
    return run_id[len(SERVE_PREFIX) :] if run_id.startswith(SERVE_PREFIX) else run_id


def list_files(table: str, storage: Mapping[str, Any] | None = None) -> dict[str, int]:
    """``{file uri: size in bytes}`` of the table's committed Parquet files (temp files excluded),
    from one listing of the table's folder."""
    fs, path = st.resolve(table, storage)
    if not fs.exists(path):
        return {}
    scheme = table.split("://", 1)[0] + "://" if st.is_remote(table) else ""
    found = fs.find(path, detail=True)
    return {scheme + p: int(info.get("size") or 0) for p, info in sorted(found.items()) if p.endswith(".parquet") and not os.path.basename(p).startswith(".")}


def read_rows(files: list[str], storage: Mapping[str, Any] | None = None) -> tuple[pa.Table, int]:
    """The rows of ``files`` with an embedding (Ray Data reads the Parquet in parallel tasks), each
    with the ``file`` it came from; returns ``(rows, error rows skipped)``."""
    import ray.data

    if not files:
        return empty_rows(), 0
    fs, _ = st.arrow_filesystem(files[0], storage)
    paths = [st.resolve(f, storage)[1] for f in files]
    uri_of = dict(zip(paths, files))
    ds = ray.data.read_parquet(paths, filesystem=fs, columns=COLUMNS, include_paths=True)
    parts = [b for b in ds.iter_batches(batch_format="pyarrow", batch_size=None) if b.num_rows]
    if not parts:
        return empty_rows(), 0
    table = pa.concat_tables([_normalise(p) for p in parts])
    ok = pc.and_(pc.is_null(table.column("error")), pc.is_valid(table.column("embedding")))
    skipped = table.num_rows - pc.sum(ok.cast(pa.int64())).as_py()
    table = table.filter(ok)
    files = map_values(table.column("path"), lambda p: uri_of.get(p, p))
    return table.drop_columns(["path", "error"]).append_column("file", files), int(skipped)


def map_values(column, fn) -> pa.Array:
    """``fn`` applied to each distinct string of ``column`` (a handful of files or runs, a million rows)."""
    enc = pc.cast(column, pa.string()).combine_chunks().dictionary_encode()
    values = pa.array([fn(v) for v in enc.dictionary.to_pylist()], pa.string())
    return pa.DictionaryArray.from_arrays(enc.indices, values).cast(pa.string())


def _normalise(batch: pa.Table) -> pa.Table:
    emb = batch.schema.field("embedding").type
    if not (pa.types.is_fixed_size_list(emb) and pa.types.is_float32(emb.value_type)):
        raise ValueError(f"the predictions' embedding column is {emb}, not fixed_size_list<float32>[D] (the backfill's schema)")
    return batch.combine_chunks()


def empty_rows() -> pa.Table:
    return pa.table({
        "image_id": pa.array([], pa.string()),
        "uri": pa.array([], pa.string()),
        "label": pa.array([], pa.string()),
        "embedding": pa.array([], pa.list_(pa.float32(), 1)),
        "run_id": pa.array([], pa.string()),
        "file": pa.array([], pa.string()),
    })


def latest_per_image(rows: pa.Table) -> tuple[pa.Table, int]:
    """One row per ``image_id``, the latest run's (ties: the later file name); returns
    ``(rows, rows dropped)``."""
    if rows.num_rows == 0:
        return rows, 0
    order = map_values(rows.column("run_id"), run_order)
    keyed = rows.append_column("_order", order).append_column("_pos", pa.array(np.arange(rows.num_rows)))
    idx = pc.sort_indices(keyed, sort_keys=[("image_id", "ascending"), ("_order", "descending"), ("file", "descending")])
    ids = keyed.column("image_id").take(idx).to_numpy(zero_copy_only=False)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    keep = np.sort(idx.to_numpy()[first])
    return rows.take(pa.array(keep)), rows.num_rows - len(keep)


def vectors_of(rows: pa.Table) -> np.ndarray:
    emb = rows.column("embedding").combine_chunks()
    if rows.num_rows == 0:
        return np.zeros((0, emb.type.list_size), dtype=np.float32)
    return emb.flatten().to_numpy(zero_copy_only=False).reshape(rows.num_rows, emb.type.list_size).astype(np.float32, copy=False)
