"""Every pair of embeddings with cosine similarity at or above a threshold (a range search).

``exact``: faiss ``IndexFlatIP`` range search in blocks of queries, each block against the rows
from its own start on (the upper triangle: every pair is computed once). Complete by construction.

``ivf``: faiss ``IndexIVFFlat`` (inner product): vectors are assigned to ``nlist`` k-means cells
and each query scans its ``nprobe`` nearest cells. A near-duplicate lies in its partner's cell or
a neighbouring one, so few probes find almost all pairs; a pair found from either end counts.
Measured against ``exact`` by ``bench/duplicates.py``.

Candidates are searched at a slightly lower radius and re-scored in float64, so the result is the
same set a float64 brute force computes, whatever rounding faiss's BLAS path does.
"""

from __future__ import annotations

import logging
import math

import numpy as np

# faiss logs at INFO which CPU build it loads (and the ones it could not): not a job's output.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

METHODS = ("auto", "exact", "ivf")
SLACK = 1e-4


def similar_pairs(
    x: np.ndarray,
    threshold: float,
    *,
    method: str = "auto",
    exact_max_rows: int = 200_000,
    block_rows: int = 8192,
    nlist: int | None = None,
    nprobe: int = 4,
    train_rows: int = 100_000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Pairs ``(i, j, similarity)`` with ``i < j`` and ``x[i]·x[j] >= threshold`` (rows of ``x`` are
    L2-normalised); the last item says which method ran and with what parameters."""
    if method not in METHODS:
        raise ValueError(f"duplicates.method={method!r}; choose one of {list(METHODS)}")
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"duplicates.threshold={threshold}: a cosine similarity, between -1 and 1")
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if method == "auto":
        method = "exact" if n <= exact_max_rows else "ivf"
    if n < 2:
        return _empty() + ({"method": method},)
    if method == "exact":
        i, j = _exact(x, threshold - SLACK, block_rows)
        info = {"method": "exact", "block_rows": block_rows}
    else:
        nlist = int(nlist or max(1, min(n // 39, round(4 * math.sqrt(n)))))
        i, j = _ivf(x, threshold - SLACK, block_rows, nlist, nprobe, train_rows, seed)
        info = {"method": "ivf", "nlist": nlist, "nprobe": int(nprobe), "train_rows": int(min(max(train_rows, 40 * nlist), n)), "block_rows": block_rows}
    sim = rescore(x, i, j)
    keep = sim >= threshold
    return i[keep], j[keep], sim[keep], info


def rescore(x: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 1_000_000) -> np.ndarray:
    out = np.empty(len(i), dtype=np.float64)
    for s in range(0, len(i), chunk):
        a, b = x[i[s : s + chunk]].astype(np.float64), x[j[s : s + chunk]].astype(np.float64)
        out[s : s + chunk] = np.einsum("ij,ij->i", a, b)
    return out


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)


def _hits(lims: np.ndarray, labels: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    q = np.repeat(np.arange(len(lims) - 1, dtype=np.int64), np.diff(lims.astype(np.int64))) + start
    return q, labels.astype(np.int64)


def _exact(x: np.ndarray, radius: float, block: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    n, d = x.shape
    found_i, found_j = [], []
    for start in range(0, n, block):
        index = faiss.IndexFlatIP(d)
        index.add(x[start:])  # this block's queries against rows start.. (the upper triangle)
        lims, _, labels = index.range_search(x[start : start + block], radius)
        q, j = _hits(lims, labels, start)
        j = j + start
        keep = j > q
        found_i.append(q[keep])
        found_j.append(j[keep])
    return np.concatenate(found_i), np.concatenate(found_j)


def _ivf(x: np.ndarray, radius: float, block: int, nlist: int, nprobe: int, train_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    n, d = x.shape
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    train_rows = max(int(train_rows), 40 * nlist)  # k-means wants at least 39 points per cell
    sample = x if n <= train_rows else x[np.sort(rng.choice(n, train_rows, replace=False))]
    index.cp.seed = seed
    index.cp.niter = 10  # cells only need to keep near vectors together, not be optimal
    index.train(sample)
    index.add(x)
    index.nprobe = min(int(nprobe), nlist)
    keys = []
    for start in range(0, n, block):
        lims, _, labels = index.range_search(x[start : start + block], radius)
        q, j = _hits(lims, labels, start)
        keep = (j != q) & (j >= 0)
        lo, hi = np.minimum(q[keep], j[keep]), np.maximum(q[keep], j[keep])
        keys.append(np.unique(lo * n + hi))  # a pair found from either end counts once
    k = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
    return k // n, k % n
