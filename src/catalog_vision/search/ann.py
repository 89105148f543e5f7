"""The approximate nearest-neighbour index: faiss IVF over scalar-quantised vectors, inner product.

Embeddings are L2-normalised, so inner product is cosine similarity. The index is an inverted file
(``IVF<nlist>``: k-means cells; a query scans the ``nprobe`` nearest cells) over ``SQfp16`` codes
(each dimension as float16: 2 bytes, scores within ~1e-3 of float32). Why this and not HNSW is in
README "Similarity search": measured by ``bench/search.py``; in short, it met the recall, latency
and size goals with the shortest build, and it can grow: new rows are added to the trained cells.

Faiss ids are row positions in the index's row table (:mod:`.store`), assigned in insertion order
(the direct map, which :meth:`faiss.Index.reconstruct` needs to answer "images like this id",
only takes sequential ids). Rows are never removed from the faiss index: a row superseded by a
later run's row for the same image is masked out at search time (an ``IDSelectorBitmap``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

ENCODINGS = ("SQfp16", "SQ8", "Flat")


def faiss_module():
    """``faiss``, imported without its loader's INFO lines: wheels built with dynamic dispatch have
    no ``swigfaiss_avx2`` module to find, yet run AVX2/AVX-512 code (``faiss.get_compile_options()``)."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


@dataclass(frozen=True)
class IndexParams:
    """The ``index`` config's build and search settings (see ``conf/index/ivf.yaml``)."""

    encoding: str = "SQfp16"
    nlist: int | None = None  # None: auto (one cell below exhaustive_below rows, else ~4*sqrt(rows), a power of two)
    nprobe: int = 32
    train_per_list: int = 64
    exhaustive_below: int = 20000
    exact_filter_below: int = 50000
    seed: int = 0

    @classmethod
    def from_config(cls, c: Mapping[str, Any]) -> "IndexParams":
        known = {k: c[k] for k in cls.__dataclass_fields__ if k in c}
        if known.get("nlist") in ("auto", 0):
            known["nlist"] = None
        p = cls(**known)
        p.check()
        return p

    def check(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"index.encoding={self.encoding!r}; choose one of {list(ENCODINGS)}")
        for name in ("nprobe", "train_per_list"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"index.{name}={getattr(self, name)!r}; must be an integer >= 1")
        if self.nlist is not None and int(self.nlist) < 1:
            raise ValueError(f"index.nlist={self.nlist!r}; an integer >= 1, or auto")

    def build_key(self) -> dict:
        """What a built index depends on (a change means a full rebuild); nprobe is a search setting."""
        return {k: v for k, v in asdict(self).items() if k not in ("nprobe", "exact_filter_below")}

    def cells(self, rows: int) -> int:
        if self.nlist is not None:
            return int(self.nlist)
        if rows < self.exhaustive_below:
            return 1
        return 2 ** round(math.log2(4 * math.sqrt(rows)))


def set_threads(threads: int | None) -> None:
    if threads:
        faiss = faiss_module()

        faiss.omp_set_num_threads(int(threads))


def build(vectors: np.ndarray, params: IndexParams):
    """A trained faiss index holding ``vectors`` (float32, L2-normalised) as ids ``0..n-1``."""
    faiss = faiss_module()

    n, d = vectors.shape
    nlist = max(1, min(params.cells(n), n))
    index = faiss.index_factory(d, f"IVF{nlist},{params.encoding}", faiss.METRIC_INNER_PRODUCT)
    train = vectors
    if n > nlist * params.train_per_list:
        pick = np.random.default_rng(params.seed).choice(n, nlist * params.train_per_list, replace=False)
        train = vectors[np.sort(pick)]
    index.cp.seed = params.seed
    # float16 (and float32) codes store the vector itself, not its offset from the cell's centroid:
    # scores then do not depend on how the cells were trained (a grown index answers as a rebuilt one).
    index.by_residual = params.encoding == "SQ8"
    index.train(np.ascontiguousarray(train, dtype=np.float32))
    index.set_direct_map_type(faiss.DirectMap.Array)
    add(index, vectors)
    return index


def add(index, vectors: np.ndarray, chunk: int = 100_000) -> None:
    for i in range(0, len(vectors), chunk):
        index.add(np.ascontiguousarray(vectors[i : i + chunk], dtype=np.float32))


def nlist_of(index) -> int:
    faiss = faiss_module()

    return faiss.extract_index_ivf(index).nlist


def serialize(index) -> bytes:
    faiss = faiss_module()

    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes):
    faiss = faiss_module()

    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def bitmap(ids: np.ndarray, n: int) -> np.ndarray:
    """A faiss ``IDSelectorBitmap`` bitmap (bit ``i & 7`` of byte ``i >> 3``) selecting ``ids``."""
    bits = np.zeros((n + 7) // 8, dtype=np.uint8)
    np.bitwise_or.at(bits, ids >> 3, (1 << (ids & 7)).astype(np.uint8))
    return bits


def search(index, queries: np.ndarray, k: int, nprobe: int, allowed: np.ndarray | None = None, exact_below: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) per query row; ids ``-1`` where fewer than ``k`` rows qualify.

    ``allowed``: the ids that may be returned (live rows, of a label), or ``None`` for all. A small
    allowed set (at most ``exact_below`` rows) is scored exactly against its reconstructed vectors;
    a larger one is searched in the index with a selector, probing proportionally more cells so
    about as many allowed vectors are scanned as without a filter."""
    faiss = faiss_module()

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if allowed is None:
        return index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=nprobe))
    if len(allowed) <= exact_below:
        return exact_over(index, queries, k, allowed)
    nlist = nlist_of(index)
    share = len(allowed) / max(1, index.ntotal)
    probe = min(nlist, max(nprobe, math.ceil(nprobe / max(share, 1e-9))))
    bits = bitmap(allowed.astype(np.int64), index.ntotal)
    sel = faiss.IDSelectorBitmap(index.ntotal, faiss.swig_ptr(bits))
    scores, ids = index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=probe, sel=sel))
    del bits  # the selector points into it: kept alive until here
    return scores, ids


def exact_over(index, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` among ``allowed`` ids (their stored vectors; float16 codes decode exactly)."""
    allowed = np.asarray(allowed, dtype=np.int64)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    if len(allowed) == 0:
        return scores, ids
    sims = queries @ index.reconstruct_batch(allowed).T
    kk = min(k, len(allowed))
    top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    scores[:, :kk] = np.take_along_axis(sims, top, axis=1)
    ids[:, :kk] = allowed[top]
    return scores, ids
