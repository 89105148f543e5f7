"""The predictions table: its schema, and its rows from a predictor's outputs.

Backfills commit these rows as Parquet and serving returns (and may record) the same rows: one
schema, one builder, so an image labelled online and offline looks the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ..ingest.errors import is_error
from ..storage.secrets import redact_text


def predictions_schema(embedding_dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("uri", pa.string()),
            ("label", pa.string()),
            ("score", pa.float32()),
            ("topk_labels", pa.list_(pa.string())),
            ("topk_scores", pa.list_(pa.float32())),
            ("labels", pa.list_(pa.string())),
            ("embedding", pa.list_(pa.float32(), embedding_dim)),
            ("low_confidence", pa.bool_()),
            ("model_id", pa.string()),
            ("run_id", pa.string()),
            ("error", pa.string()),
        ]
    )


def predictions_table(p: Any, image_id, uri, outputs: tuple[np.ndarray, np.ndarray] | None, errors) -> pa.Table:
    """Rows in the predictions schema from ``(probabilities, embeddings)`` of the rows without an
    error (``None`` when every row has one). ``p``: the :class:`.predictor.Predictor` (its classes, top-k,
    thresholds, model and run ids, schema)."""
    n = len(image_id)
    errors = [str(e) if is_error(e) else None for e in errors]
    ok = np.array([e is None for e in errors], dtype=bool)
    d, k = p.embedding_dim, p.topk
    emb = np.zeros((n, d), dtype=np.float32)
    top_s = np.zeros((n, k), dtype=np.float32)
    top_i = np.zeros((n, k), dtype=np.int64)
    above = np.zeros((n, len(p.classes)), dtype=bool)
    if ok.any():
        probs, feats = outputs
        s, i = torch.topk(torch.from_numpy(np.ascontiguousarray(probs)), k, dim=1)
        top_s[ok], top_i[ok] = s.numpy(), i.numpy()
        emb[ok] = feats
        if p.task == "multilabel":
            above[ok] = probs >= p.thresholds[None, :]
    bad = pa.array(~ok)
    # Column-wise Arrow construction: no per-row Python.
    names = p._class_names.take(pa.array(top_i.reshape(-1)))
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    one = pa.array(np.arange(0, n + 1, dtype=np.int32))
    score = top_s[:, 0]
    if p.task == "multilabel":  # labels above their thresholds, in class order
        rows, cols = np.nonzero(above)
        labels_col = pa.ListArray.from_arrays(pa.array(np.searchsorted(rows, np.arange(n + 1)).astype(np.int32)), p._class_names.take(pa.array(cols)), mask=bad)
    else:
        labels_col = pa.ListArray.from_arrays(one, names.take(pa.array(np.arange(0, n * k, k))), mask=bad)
    return pa.Table.from_arrays(
        [
            pa.array(list(image_id), pa.string()),
            pa.array([redact_text(u) if u and ("@" in u or "?" in u) else u for u in uri], pa.string()),  # no credentials in tables
            pa.array(names.to_numpy(zero_copy_only=False)[::k], pa.string(), mask=~ok),
            pa.array(score, pa.float32(), mask=~ok),
            pa.ListArray.from_arrays(offsets, names, mask=bad),
            pa.ListArray.from_arrays(offsets, pa.array(top_s.reshape(-1), pa.float32()), mask=bad),
            labels_col,
            pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), d, mask=bad),
            pa.array(score < p.threshold, pa.bool_(), mask=~ok),
            pa.array([p.model_id] * n, pa.string()),
            pa.array([p.run_id] * n, pa.string()),
            pa.array(errors, pa.string()),
        ],
        schema=p.schema,
    )

