"""One model's predictions as analysis inputs: one row per image, error rows left out, the
embeddings as a ``float32 (N, D)`` array.

A table folder (``<predictions>/<model_id>/<catalog_id>``) holds every run of one model on one
catalog; a run folder holds one run. An image labeled by two runs (a serve row, then a backfill
that did not yet see it) keeps its latest row (run ids sort by time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..backfill.query import read_predictions

COLUMNS = ["image_id", "uri", "label", "score", "embedding", "model_id", "run_id", "error"]


@dataclass
class Predictions:
    """``rows``: the kept rows without the embedding column; ``embeddings``: their vectors, row-aligned."""

    uri: str
    rows: pa.Table
    embeddings: np.ndarray | None
    error_rows: int
    duplicate_rows: int

    @property
    def model_ids(self) -> list[str]:
        return sorted(set(self.rows.column("model_id").to_pylist()))

    @property
    def dim(self) -> int | None:
        return None if self.embeddings is None else int(self.embeddings.shape[1])


def load_predictions(uri: str, storage: Mapping[str, Any] | None = None, *, embeddings: bool = True, setting: str = "predictions") -> Predictions:
    """Read a predictions table or run folder (local or ``s3://``); clear errors for a folder with no
    Parquet files, a table without the predictions columns, or one that mixes several models."""
    try:
        table = read_predictions(uri, storage)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{setting}={uri!r}: no predictions Parquet files there; name a run folder <predictions>/<model_id>/<catalog_id>/<run_id> "
            "or a model's table <predictions>/<model_id>/<catalog_id>"
        ) from None
    wanted = COLUMNS if embeddings else [c for c in COLUMNS if c != "embedding"]
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise ValueError(f"{setting}={uri!r}: not a predictions table (no column {missing}); expected the backfill schema {COLUMNS}")
    table = table.select(wanted)
    ok = pc.is_null(table.column("error"))
    n_errors = table.num_rows - pc.sum(ok.cast(pa.int64())).as_py() if table.num_rows else 0
    table = table.filter(ok)
    models = sorted(set(table.column("model_id").to_pylist()))
    if len(models) > 1:
        raise ValueError(f"{setting}={uri!r} holds predictions of {len(models)} models {models[:5]}: "
                         "name one model's table <predictions>/<model_id>/<catalog_id>")
    table, n_dup = latest_per_image(table)
    emb = None
    if embeddings:
        emb = embedding_matrix(table.column("embedding"), f"{setting}={uri!r}")
        table = table.drop_columns(["embedding"])
    return Predictions(uri=uri, rows=table, embeddings=emb, error_rows=int(n_errors), duplicate_rows=n_dup)


def latest_per_image(table: pa.Table) -> tuple[pa.Table, int]:
    """One row per ``image_id``: the row of the latest ``run_id``; returns the table and how many rows were dropped."""
    ids = table.column("image_id").to_numpy(zero_copy_only=False)
    runs = table.column("run_id").fill_null("").to_numpy(zero_copy_only=False)
    order = np.lexsort((runs, ids))  # by image_id, then run_id ascending
    ids_sorted = ids[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = ids_sorted[1:] != ids_sorted[:-1]
    if last.all():
        return table, 0
    keep = np.sort(order[last])
    return table.take(pa.array(keep)), int(len(order) - len(keep))


def embedding_matrix(column: pa.ChunkedArray, where: str) -> np.ndarray:
    """A fixed-size (or equal-length) list column → contiguous ``float32 (N, D)``."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(arr) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if pa.types.is_fixed_size_list(arr.type):
        dim = arr.type.list_size
    elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        if lengths.min() != lengths.max():
            raise ValueError(f"{where}: embeddings of different lengths ({lengths.min()}..{lengths.max()}) in one table")
        dim = int(lengths[0])
    else:
        raise ValueError(f"{where}: the embedding column is {arr.type}, not a list of floats")
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return np.ascontiguousarray(values.reshape(len(arr), dim))
