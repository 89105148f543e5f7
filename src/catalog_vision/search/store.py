"""A built index on storage, and queries against it.

``<index root>/<model_id>/<catalog_id>/`` holds ``manifest.json`` and the two files it names,
``index-<build>.faiss`` (the faiss index, :mod:`.ann`) and ``rows-<build>.parquet`` (``id, image_id,
uri, label, run_id, file, live``: row ``id`` is faiss id ``id``). A build writes its two files under
new names and the manifest last, so a reader never pairs an index with another build's rows.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import storage as st
from . import ann

MANIFEST = "manifest.json"
FORMAT = "catalog-vision/index/v1"
RESULT_SCHEMA = pa.schema([
    ("query", pa.string()),
    ("rank", pa.int32()),
    ("image_id", pa.string()),
    ("uri", pa.string()),
    ("label", pa.string()),
    ("score", pa.float32()),
])


class UnknownImage(KeyError):
    """An ``image_id`` the index does not hold."""

    def __str__(self) -> str:
        return str(self.args[0])


def index_dir(root: str, model_id: str, catalog: str) -> str:
    """``<root>/<model_id>/<catalog_id>``: one model's index over its table for one catalog."""
    return st.join(st.absolute(root), model_id, catalog)


def read_manifest(folder: str, storage: Mapping[str, Any] | None = None) -> dict | None:
    uri = st.join(folder, MANIFEST)
    if not st.exists(uri, storage):
        return None
    return st.read_json(uri, storage)


class SimilarityIndex:
    """A loaded index: top-``k`` similar images for vectors or for ``image_id`` s already in it."""

    def __init__(self, index, rows: pa.Table, manifest: Mapping[str, Any]):
        self.index, self.rows, self.manifest = index, rows, dict(manifest)
        self.nprobe = int(manifest["params"]["nprobe"])
        self.exact_filter_below = int(manifest["params"].get("exact_filter_below", 0))
        live = rows.column("live").to_numpy(zero_copy_only=False)
        self.live_ids = np.flatnonzero(live).astype(np.int64)
        self.all_live = len(self.live_ids) == index.ntotal
        self._live_rows = rows.take(pa.array(self.live_ids))
        self._by_label: dict[str, np.ndarray] = {}
        self._image_ids = self._live_rows.column("image_id").combine_chunks()

    @classmethod
    def load(cls, folder: str, storage: Mapping[str, Any] | None = None) -> "SimilarityIndex":
        folder = st.absolute(folder)
        manifest = read_manifest(folder, storage)
        if manifest is None:
            raise FileNotFoundError(f"no index at {folder!r} (no {MANIFEST}): build it with python jobs/index.py")
        import io

        index = ann.deserialize(st.read_bytes(st.join(folder, manifest["index_file"]), storage))
        rows = pq.read_table(io.BytesIO(st.read_bytes(st.join(folder, manifest["rows_file"]), storage)))
        return cls(index, rows, manifest)

    @property
    def size(self) -> int:
        return len(self.live_ids)

    def labels(self) -> list[str]:
        return sorted(x for x in pc.unique(self._live_rows.column("label")).to_pylist() if x is not None)

    def ids_of(self, image_ids: Sequence[str]) -> np.ndarray:
        """Faiss ids of live rows for ``image_ids``; :class:`UnknownImage` names any it lacks."""
        pos = pc.index_in(pa.array(list(image_ids), pa.string()), value_set=self._image_ids)
        missing = [i for i, p in zip(image_ids, pos.to_pylist()) if p is None]
        if missing:
            m = self.manifest
            raise UnknownImage(
                f"image_id {missing[0]!r}{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''} is not in the index of {m['model_id']} "
                f"for catalog {m['catalog_id']} ({self.size} images): it has no row in the predictions table, or only error rows "
                f"(no embedding), or was added after the index was built (rebuild: python jobs/index.py)"
            )
        return self.live_ids[pos.to_numpy(zero_copy_only=False).astype(np.int64)]

    def vectors(self, image_ids: Sequence[str]) -> np.ndarray:
        """The stored embeddings of ``image_ids`` (float16 codes: within ~1e-3 of the table's)."""
        return self.index.reconstruct_batch(self.ids_of(image_ids))

    def allowed(self, label: str | None) -> np.ndarray | None:
        """Ids a query may return: ``None`` for every row (no label, nothing superseded)."""
        if label is None:
            return None if self.all_live else self.live_ids
        if label not in self._by_label:
            mask = pc.equal(self._live_rows.column("label"), label).fill_null(False).to_numpy(zero_copy_only=False)
            if not mask.any():
                raise ValueError(f"label {label!r} has no images in this index; its labels: {self.labels()}")
            self._by_label[label] = self.live_ids[mask]
        return self._by_label[label]

    def search(self, vectors: np.ndarray, names: Sequence[str], k: int = 10, label: str | None = None, exclude: Sequence[str] | None = None) -> pa.Table:
        """Top-``k`` rows per query vector as ``query, rank, image_id, uri, label, score`` (cosine
        similarity, best first); ``names`` fill ``query``. ``exclude[i]``: an image id left out of
        query ``i``'s answer (the query image itself)."""
        if k < 1:
            raise ValueError(f"k={k}; must be >= 1")
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        extra = 1 if exclude is not None else 0
        scores, ids = ann.search(self.index, vectors, k + extra, self.nprobe, self.allowed(label), self.exact_filter_below)
        q, rank, rid, sc = [], [], [], []
        for i, name in enumerate(names):
            keep = ids[i] >= 0
            row_ids, row_scores = ids[i][keep], scores[i][keep]
            if exclude is not None:
                own = self.rows.column("image_id").take(pa.array(row_ids)).to_pylist()
                sel = [j for j, x in enumerate(own) if x != exclude[i]][:k]
                row_ids, row_scores = row_ids[sel], row_scores[sel]
            row_ids, row_scores = row_ids[:k], row_scores[:k]
            q += [name] * len(row_ids)
            rank += list(range(1, len(row_ids) + 1))
            rid.append(row_ids)
            sc.append(row_scores)
        take = pa.array(np.concatenate(rid) if rid else np.zeros(0, np.int64))
        hits = self.rows.select(["image_id", "uri", "label"]).take(take)
        return pa.table(
            [pa.array(q, pa.string()), pa.array(rank, pa.int32()), hits.column("image_id"), hits.column("uri"), hits.column("label"),
             pa.array(np.concatenate(sc) if sc else np.zeros(0, np.float32), pa.float32())],
            schema=RESULT_SCHEMA,
        )

    def similar_to(self, image_ids: Sequence[str], k: int = 10, label: str | None = None, exclude_self: bool = False) -> pa.Table:
        """Top-``k`` similar images for ``image_ids`` already in the index (each one's own row comes
        first, score ~1, unless ``exclude_self``)."""
        image_ids = [str(i) for i in image_ids]
        return self.search(self.vectors(image_ids), image_ids, k, label, exclude=image_ids if exclude_self else None)
