"""Near-duplicate groups in one model's predictions table (``jobs/duplicates.py``).

[1] Load the table: one row per image, error rows skipped (:mod:`.load`).
[2] Every pair with cosine similarity >= ``duplicates.threshold`` (:mod:`.pairs`).
[3] Groups: connected components of the pair graph (a ~ b and b ~ c put a, b, c in one group).
[4] Leakage: images of one split (``test``) with a near-duplicate pair in another (``train``),
    from the manifest's ``split`` column.
[5] Write ``groups.parquet`` (``image_id, duplicate_group_id, group_size``; images in no pair are
    left out), ``pairs.parquet``, ``summary.json`` and ``contact_sheet.png``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

import numpy as np
import pyarrow as pa

from .. import storage as st
from ..storage.secrets import redact
from .load import load_predictions
from .pairs import similar_pairs

log = logging.getLogger("catalog_vision")


def connected_groups(n: int, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group id per row (``-1`` for rows in no pair) and the size of each group. Ids are ranked by
    size (largest first), then by the group's first row, so a rerun numbers groups the same way."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    sizes = np.bincount(comp)
    first = np.full(len(sizes), n, dtype=np.int64)
    np.minimum.at(first, comp, np.arange(n))
    multi = np.flatnonzero(sizes > 1)
    ranked = multi[np.lexsort((first[multi], -sizes[multi]))]
    new_id = np.full(len(sizes), -1, dtype=np.int64)
    new_id[ranked] = np.arange(len(ranked))
    return new_id[comp], sizes[ranked]


def leakage(ids: np.ndarray, i: np.ndarray, j: np.ndarray, split_of: Mapping[str, str], source: str = "train", target: str = "test") -> dict:
    """How many ``target`` images have a near-duplicate pair with a ``source`` image, and pair counts
    per split pair. Images missing from the manifest count as split ``None``."""
    splits = np.array([split_of.get(x) for x in ids], dtype=object)
    si, sj = splits[i], splits[j]
    cross = ((si == source) & (sj == target)) | ((si == target) & (sj == source))
    leaked = np.unique(np.concatenate([i[cross & (si == target)], j[cross & (sj == target)]]))
    pairs_by_split: dict[str, int] = {}
    for a, b in zip(si, sj):
        key = "-".join(sorted([str(a), str(b)]))
        pairs_by_split[key] = pairs_by_split.get(key, 0) + 1
    n_target = int(np.sum(splits == target))
    return {
        "source": source,
        "target": target,
        "target_images": n_target,
        "target_with_duplicate_in_source": int(len(leaked)),
        "fraction": (len(leaked) / n_target) if n_target else None,
        "pairs_by_split": dict(sorted(pairs_by_split.items())),
        "leaked_image_ids": [str(x) for x in ids[leaked[:20]]],
    }


def find_duplicates(x: np.ndarray, ids: np.ndarray, threshold: float, search: Mapping[str, Any] | None = None) -> dict:
    """Pairs and groups for embeddings ``x`` (rows aligned with ``ids``): a plain function the job and tests call."""
    t0 = time.perf_counter()
    i, j, sim, info = similar_pairs(x, threshold, **dict(search or {}))
    t_search = time.perf_counter() - t0
    group, sizes = connected_groups(len(ids), i, j)
    return {"i": i, "j": j, "similarity": sim, "group": group, "sizes": sizes, "search": {**info, "seconds": round(t_search, 3)}}


def groups_table(ids: np.ndarray, group: np.ndarray, sizes: np.ndarray) -> pa.Table:
    rows = np.flatnonzero(group >= 0)
    rows = rows[np.lexsort((ids[rows], group[rows]))]
    return pa.table({
        "image_id": pa.array(ids[rows].tolist(), pa.string()),
        "duplicate_group_id": pa.array(group[rows], pa.int64()),
        "group_size": pa.array(sizes[group[rows]], pa.int64()),
    })


def pairs_table(ids: np.ndarray, i: np.ndarray, j: np.ndarray, sim: np.ndarray) -> pa.Table:
    return pa.table({
        "image_id_a": pa.array(ids[i].tolist(), pa.string()),
        "image_id_b": pa.array(ids[j].tolist(), pa.string()),
        "similarity": pa.array(sim, pa.float64()),
    })


def largest_groups(ids: np.ndarray, labels: np.ndarray, group: np.ndarray, sizes: np.ndarray, split_of: Mapping[str, str], top: int) -> list[dict]:
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], np.arange(min(top, len(sizes))))
    out = []
    for g, s in enumerate(starts):
        members = order[s : s + sizes[g]]
        lab, cnt = np.unique(labels[members].astype(str), return_counts=True)
        spl, scnt = np.unique(np.array([str(split_of.get(x)) for x in ids[members]]), return_counts=True)
        out.append({
            "duplicate_group_id": g,
            "group_size": int(sizes[g]),
            "labels": dict(zip(lab.tolist(), cnt.tolist())),
            "splits": dict(zip(spl.tolist(), scnt.tolist())),
            "image_ids": sorted(ids[members].tolist())[:10],
        })
    return out


def write_parquet(table: pa.Table, uri: str, storage: Mapping[str, Any] | None) -> None:
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    st.write_bytes(uri, buf.getvalue(), storage)


def split_map(manifest: str | None, storage: Mapping[str, Any] | None) -> dict[str, str]:
    if not manifest:
        return {}
    from ..backfill.query import read_manifest

    m = read_manifest(st.absolute(manifest), storage)
    if "split" not in m.column_names:
        raise ValueError(f"duplicates.manifest={manifest!r} has no 'split' column: the leakage count needs one (or set duplicates.manifest=null)")
    return dict(zip(m.column("image_id").cast(pa.string()).to_pylist(), m.column("split").cast(pa.string()).to_pylist()))


def run_duplicates(cfg: Mapping[str, Any]) -> dict:
    """``jobs/duplicates.py``: groups, pairs, summary and contact sheet for one model's table."""
    from .contact_sheet import contact_sheet
    from .paths import analytics_output, predictions_table

    t0 = time.perf_counter()
    d, storage = dict(cfg["duplicates"]), cfg["storage"]
    table = predictions_table(cfg, d.get("predictions"))
    preds = load_predictions(table, storage, setting="duplicates.predictions")
    ids = preds.rows.column("image_id").to_numpy(zero_copy_only=False).astype(object)
    labels = preds.rows.column("label").to_numpy(zero_copy_only=False).astype(object)
    split_of = split_map(d.get("manifest"), storage)
    search = {k: d[k] for k in ("method", "exact_max_rows", "block_rows") if d.get(k) is not None}
    search.update({k: v for k, v in (d.get("ivf") or {}).items() if v is not None})
    found = find_duplicates(preds.embeddings, ids, float(d["threshold"]), search)
    i, j, group, sizes = found["i"], found["j"], found["group"], found["sizes"]
    out = d.get("output") or analytics_output(cfg, "duplicates", preds.model_ids[0] if preds.model_ids else "empty", table)
    write_parquet(groups_table(ids, group, sizes), st.join(out, "groups.parquet"), storage)
    write_parquet(pairs_table(ids, i, j, found["similarity"]), st.join(out, "pairs.parquet"), storage)
    lk = d.get("leakage") or {}
    summary = {
        "predictions": table,
        "model_id": preds.model_ids[0] if preds.model_ids else None,
        "threshold": float(d["threshold"]),
        "images": int(len(ids)),
        "error_rows_skipped": preds.error_rows,
        "older_rows_skipped": preds.duplicate_rows,
        "pairs": int(len(i)),
        "groups": int(len(sizes)),
        "images_in_groups": int(sizes.sum()),
        "group_size_counts": {str(k): int(v) for k, v in zip(*np.unique(sizes, return_counts=True))},
        "largest_groups": largest_groups(ids, labels, group, sizes, split_of, int(d["top_groups"])),
        "leakage": leakage(ids, i, j, split_of, lk.get("source", "train"), lk.get("target", "test")) if split_of else None,
        "search": found["search"],
        "output": out,
    }
    sheet = d.get("contact_sheet") or {}
    if sheet.get("groups", 0) > 0 and len(sizes):
        uris = preds.rows.column("uri").to_numpy(zero_copy_only=False).astype(object)
        summary["contact_sheet"] = contact_sheet(st.join(out, "contact_sheet.png"), ids, uris, group, sizes, split_of, storage, **sheet)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    summary = redact(summary)  # URIs with credentials in them (user:password@, presigned queries) are masked
    st.write_json(st.join(out, "summary.json"), summary, storage)
    return summary
