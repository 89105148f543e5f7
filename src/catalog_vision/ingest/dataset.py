"""Catalogs as Ray Datasets: the catalog table in blocks, then fetch and decode on CPU tasks.

Rows that fail at any step keep flowing with ``error`` set; nothing raises out of a task for a bad
image, so one corrupt object never fails a job.
"""

from __future__ import annotations

import io
from typing import Any, Mapping

import numpy as np
import pyarrow as pa

from PIL import Image

from .catalog import catalog_table
from .errors import DecodeError, ImageError, ReadError, RefusedURI, error_string, is_error
from .fetch import fetch_many
from .images import Preprocessing, decode

# Memory reserved per decode task (MiB) unless data.decode_memory_mb says otherwise. Besides
# scheduling, a declared memory that differs from the predictor's keeps Ray Data from fusing decode
# into the inference actors, so the CPU decode step and the model step overlap as separate operators.
DECODE_MEMORY_MB = 256


def rows_per_block(data: Mapping[str, Any], preprocessing: Mapping[str, Any]) -> int:
    """Images per decode block: ``data.decode_batch_size``, but no more than fits in
    ``data.decode_block_mb`` of decoded pixels. Small images get big blocks (low per-task overhead);
    224x224 RGB gets ~50-image blocks, so the predictor actors share the work evenly and the first
    batch reaches them sooner."""
    shape = Preprocessing.from_dict(preprocessing).shape
    image_bytes = int(np.prod(shape))
    by_bytes = int(float(data.get("decode_block_mb") or 8) * 2**20) // image_bytes
    return max(1, min(int(data.get("decode_batch_size", 256)), max(8, by_bytes)))


# JPEG bytes one decode block may pass on to the predictor for device decoding (MiB) unless
# data.encoded_block_mb says otherwise: further JPEGs in that block decode on CPU.
ENCODED_BLOCK_MB = 32


def encoded_budget(data: Mapping[str, Any]) -> int:
    """``data.encoded_block_mb`` in bytes: with ``jpeg_decode_on_device``, what a decode block ships
    to the predictor as encoded JPEGs at most (blocks are otherwise sized by decoded pixels, and a
    manifest's JPEGs can be up to ``storage.max_object_bytes`` each)."""
    v = data.get("encoded_block_mb")
    v = ENCODED_BLOCK_MB if v is None else v
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"data.encoded_block_mb={v!r}; give a positive number of MiB")
    return int(float(v) * 2**20)


def _decode_memory(data: Mapping[str, Any]) -> float:
    return float(data.get("decode_memory_mb") or DECODE_MEMORY_MB) * 2**20


def to_dataset(table: pa.Table, rows_per_block: int):
    """A catalog table as a Ray Dataset of blocks of ``rows_per_block`` rows, so decode runs in parallel tasks."""
    import ray.data

    # Each block is a compacted copy: a zero-copy slice would pickle its parent's whole buffers
    # (every block would carry the whole catalog). from_blocks computes block metadata here;
    # from_arrow would wait on a remote task for it, which on a fresh job means waiting for a
    # worker process to start.
    idx = np.arange(table.num_rows)
    blocks = [table.take(idx[i : i + rows_per_block]) for i in range(0, table.num_rows, rows_per_block)] or [table]
    return ray.data.from_blocks(blocks) if hasattr(ray.data, "from_blocks") else ray.data.from_arrow(blocks)


class _Deferred:
    """``defer_jpeg`` output: per row either the JPEG's bytes (``encoded``, for the predictor's
    device) or the CPU-decoded pixels' bytes (``decoded``); never a pixel array for a deferred row.
    At most ``budget`` bytes of JPEGs are deferred per call; later JPEGs decode on CPU."""

    def __init__(self, n: int, budget: int):
        self.encoded = np.full(n, b"", dtype=object)
        self.decoded = np.full(n, b"", dtype=object)
        self.left = budget

    def put(self, i: int, data: bytes, spec: Preprocessing) -> None:
        if len(data) <= self.left and is_plain_jpeg(data, spec):
            self.encoded[i] = data
            self.left -= len(data)
        else:
            self.decoded[i] = decode(data, spec).tobytes()


def fetch_and_decode(batch: dict[str, np.ndarray], preprocessing: Mapping[str, Any], storage: Mapping[str, Any] | None = None, defer_jpeg: bool = False,
                     encoded_budget: int = ENCODED_BLOCK_MB * 2**20) -> dict[str, np.ndarray]:
    """``image_id, uri, label`` → ``image_id, uri, label, pixels (N,C,H,W uint8), error``.

    The bytes never leave this function: only decoded, resized pixels move downstream. With
    ``defer_jpeg`` (GPU JPEG decode), baseline RGB/grayscale JPEGs that pass the size check are not
    decoded here, up to ``encoded_budget`` bytes of them: their bytes go on in an ``encoded``
    column for the predictor's device to decode. The other rows' pixels go on as bytes in a
    ``decoded`` column (``pixels`` is then absent: no zero arrays are made or shipped for deferred rows).
    """
    spec = Preprocessing.from_dict(preprocessing)
    uris = [str(u) for u in batch["uri"]]
    n = len(uris)
    deferred = _Deferred(n, encoded_budget) if defer_jpeg else None
    pixels = None if defer_jpeg else np.zeros((n, *spec.shape), dtype=np.uint8)
    errors = np.empty(n, dtype=object)
    # Group by scheme so a mixed manifest (local + s3) still fetches in bulk.
    by_scheme: dict[str, list[int]] = {}
    for i, u in enumerate(uris):
        by_scheme.setdefault(u.split("://", 1)[0] if "://" in u else "file", []).append(i)
    refused = batch.get("refused")
    for idx in by_scheme.values():
        if refused is not None:  # refused by the manifest's URI policy on the driver: never fetched
            for i in [i for i in idx if is_error(refused[i])]:
                errors[i] = error_string(RefusedURI(refused[i]))
            idx = [i for i in idx if not is_error(refused[i])]
        try:
            fetched = fetch_many([uris[i] for i in idx], storage)
        except Exception as e:  # the whole request failed after retries: every row gets the error
            fetched = [ReadError(f"{type(e).__name__}: {e}")] * len(idx)
        for i, data in zip(idx, fetched):
            if isinstance(data, BaseException):
                errors[i] = error_string(data)
                continue
            try:
                if deferred is not None:
                    deferred.put(i, data, spec)
                else:
                    pixels[i] = decode(data, spec)
                errors[i] = None
            except ImageError as e:
                errors[i] = error_string(e)
            except Exception as e:  # a decoder bug must not cost the other rows; final, like the bytes
                errors[i] = error_string(DecodeError(f"unexpected {type(e).__name__}: {e}"))
    out = {
        "image_id": np.asarray(batch["image_id"], dtype=object),
        "uri": np.asarray(uris, dtype=object),
        "label": np.asarray(batch["label"], dtype=object),
        "error": errors,
    }
    if deferred is not None:
        out["encoded"], out["decoded"] = deferred.encoded, deferred.decoded
    else:
        out["pixels"] = pixels
    if "labels" in batch:  # multi-label catalogs; plain lists of str so Arrow stores list<string>
        lists = [None if v is None else [str(c) for c in v] for v in batch["labels"]]
        out["labels"] = np.empty(n, dtype=object)
        out["labels"][:] = lists
    return out


def is_plain_jpeg(data: bytes, spec: Preprocessing) -> bool:
    """A JPEG a device decoder handles (grayscale/RGB) within ``max_pixels``; anything else decodes on CPU."""
    if not data.startswith(b"\xff\xd8\xff"):
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:  # header only
            w, h = im.size
            return im.mode in ("L", "RGB") and w * h <= spec.max_pixels
    except Exception:
        return False


def decode_catalog(ds, data: Mapping[str, Any], preprocessing: Mapping[str, Any], storage: Mapping[str, Any] | None = None, defer_jpeg: bool = False):
    """[2] fetch and decode on CPU tasks: ``image_id, uri, label`` → ``+ pixels, error`` (``+ encoded`` with ``defer_jpeg``)."""
    batch_size = rows_per_block(data, preprocessing)
    return ds.map_batches(
        fetch_and_decode,
        fn_kwargs={"preprocessing": dict(preprocessing), "storage": dict(storage or {}), "defer_jpeg": bool(defer_jpeg),
                   "encoded_budget": encoded_budget(data)},
        batch_size=batch_size,
        batch_format="numpy",
        memory=_decode_memory(data),
    )


def decoded_catalog(data: Mapping[str, Any], preprocessing: Mapping[str, Any], storage: Mapping[str, Any] | None = None, split: str | None = None,
                    table: pa.Table | None = None):
    """[1] read the catalog (or take the ``table`` the caller already read), [2] fetch and decode on CPU tasks."""
    if table is None:
        table = catalog_table(data, storage, split=split)
    ds = to_dataset(table, rows_per_block(data, preprocessing))
    return decode_catalog(ds, data, preprocessing, storage)
