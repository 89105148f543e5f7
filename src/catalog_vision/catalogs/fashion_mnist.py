"""Build a catalog the way teams have one: one image file per item plus a Parquet manifest.

Source: Fashion-MNIST IDX files (Debian's ``dataset-fashion-mnist`` puts them in
``/usr/share/datasets/fashion-mnist/``; any local folder or ``s3://`` prefix works).
Target: ``<catalog>/images/<image_id>.<ext>`` and ``<catalog>/manifest.parquet`` with
``image_id, uri, label, split``. Files are written by Ray tasks in parallel.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import time
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage as st
from ..ingest.images import encode_jpeg, encode_png
from ..runtime import init_ray
from .table import read_table_file

log = logging.getLogger("catalog_vision")

FORMATS = {"png": encode_png, "jpeg": encode_jpeg}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(data: bytes) -> np.ndarray:
    """Parse an IDX file (gzipped or not) into a numpy array."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise ValueError("not an unsigned-byte IDX file")
    dims = np.frombuffer(data[4 : 4 + 4 * ndim], dtype=">i4")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def load_fashion_mnist(source: str, storage: Mapping[str, Any] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for split, (img_name, lbl_name) in IDX_FILES.items():
        try:
            images = read_idx(st.read_bytes(st.join(source, img_name), storage))
            labels = read_idx(st.read_bytes(st.join(source, lbl_name), storage))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"Fashion-MNIST IDX files not found under {source!r}; on Debian/Ubuntu run "
                "`apt-get install dataset-fashion-mnist`, or set data.source to a folder or s3:// prefix holding "
                f"{', '.join(IDX_FILES['train'] + IDX_FILES['test'])}"
            ) from None
        out[split] = (images, labels)
    return out


def _write_chunk(images: np.ndarray, ids: list[str], uris: list[str], fmt: str, storage: Mapping[str, Any]) -> int:
    encode = FORMATS[fmt]
    fs, _ = st.resolve(uris[0], storage)
    blobs = {st.resolve(u, storage)[1]: encode(img) for img, u in zip(images, uris)}
    if not st.is_remote(uris[0]):
        os.makedirs(os.path.dirname(next(iter(blobs))), exist_ok=True)
    fs.pipe(blobs)  # s3fs uploads concurrently
    return len(blobs)


def make_tiles(x: np.ndarray, y: np.ndarray, grid: int, fill: float, seed: int = 0) -> tuple[np.ndarray, list[list[int]]]:
    """A multi-label catalog from a single-label one: ``grid x grid`` tiles of consecutive items,
    each cell kept with probability ``fill`` (at least one per tile, others left black). A tile's
    labels are the distinct classes it shows. Items are never shared between tiles or splits."""
    rng = np.random.default_rng(seed)
    per = grid * grid
    n = len(x) // per
    h, w = x.shape[1:3]
    out = np.zeros((n, grid * h, grid * w), dtype=x.dtype)
    labels: list[list[int]] = []
    for t in range(n):
        keep = rng.random(per) < fill
        keep[rng.integers(per)] = True
        present = set()
        for c in np.flatnonzero(keep):
            r, q = divmod(int(c), grid)
            out[t, r * h : (r + 1) * h, q * w : (q + 1) * w] = x[t * per + c]
            present.add(int(y[t * per + c]))
        labels.append(sorted(present))
    return out, labels


def build_fashion_mnist(cfg: Mapping[str, Any]) -> dict:
    """Write image files + manifest for the configured splits; returns a summary."""
    import ray

    t0 = time.perf_counter()
    storage, data = cfg["storage"], cfg["data"]
    fmt = data["image_format"]
    if fmt not in FORMATS:
        raise ValueError(f"data.image_format={fmt!r}; choose one of {sorted(FORMATS)}")
    catalog = st.absolute(cfg["paths"]["catalog"])
    manifest_uri = st.absolute(data["manifest"])
    if st.exists(manifest_uri, storage) and not data.get("overwrite", False):
        table = read_table_file(manifest_uri, storage)
        summary = {"catalog": catalog, "manifest": manifest_uri, "images": table.num_rows, "reused": True, "seconds": round(time.perf_counter() - t0, 1)}
        print("make_catalog summary (existing catalog reused; data.overwrite=true rebuilds): " + json.dumps(summary), flush=True)
        return summary

    init_ray(cfg["ray"])
    src = load_fashion_mnist(st.absolute(data["source"]), storage)
    classes = list(data["classes"])
    limits = data.get("limit") or {}
    val_size = int(data["val_size"])
    train_x, train_y = src["train"]
    splits = {
        data["train_split"]: (train_x[: len(train_x) - val_size], train_y[: len(train_x) - val_size]),
        data["val_split"]: (train_x[len(train_x) - val_size :], train_y[len(train_x) - val_size :]),
        "test": src["test"],
    }
    tiles = data.get("tiles") or {}
    if tiles:
        splits = {name: make_tiles(x, y, int(tiles.get("grid", 2)), float(tiles.get("fill", 0.6)), seed=i) for i, (name, (x, y)) in enumerate(splits.items())}
    rows: dict[str, list] = {"image_id": [], "uri": [], "label": [], "split": []}
    if tiles:
        rows["labels"] = []
    images_dir = manifest_uri.rsplit("/", 1)[0]
    futures = []
    write = ray.remote(_write_chunk).options(num_cpus=1)
    chunk = int(data.get("write_chunk", 2000))
    for split, (x, y) in splits.items():
        limit = limits.get(split)
        n = len(x) if limit is None else min(len(x), int(limit))
        if n == 0:
            continue
        ids = [f"{split}-{i:05d}" for i in range(n)]
        uris = [st.join(images_dir, "images", f"{i}.{'jpg' if fmt == 'jpeg' else 'png'}") for i in ids]
        rows["image_id"] += ids
        rows["uri"] += uris
        if tiles:  # multi-label: the classes present in each tile, no single label
            rows["labels"] += [[classes[int(v)] for v in present] for present in y[:n]]
            rows["label"] += [None] * n
        else:
            rows["label"] += [classes[int(v)] for v in y[:n]]
        rows["split"] += [split] * n
        for s in range(0, n, chunk):
            futures.append(write.remote(x[s : s + chunk], ids[s : s + chunk], uris[s : s + chunk], fmt, dict(storage)))
    written = sum(ray.get(futures))
    table = pa.table({k: pa.array(v, pa.list_(pa.string()) if k == "labels" else pa.string()) for k, v in rows.items()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    # The manifest goes last: its presence means the images are all there.
    st.write_bytes(manifest_uri, buf.getvalue(), storage)
    counts = dict(zip(*np.unique(np.array(rows["split"]), return_counts=True)))
    summary = {
        "catalog": catalog,
        "manifest": manifest_uri,
        "images": written,
        "splits": {k: int(v) for k, v in counts.items()},
        "format": fmt,
        **({"task": "multilabel", "labels_per_image": round(sum(map(len, rows["labels"])) / max(1, len(rows["labels"])), 2)} if tiles else {}),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print("make_catalog summary: " + json.dumps(summary), flush=True)
    return summary

