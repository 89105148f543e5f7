"""Catalogs as Ray Datasets: read a manifest or list a prefix, then fetch and decode on CPU tasks.

Rows that fail at any step keep flowing with ``error`` set; nothing raises out of a task for a bad
image, so one corrupt object never fails a job.
"""

from __future__ import annotations

import io
import logging
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from PIL import Image

from .. import storage as st
from ..catalogs.table import iter_table_file
from ..storage import http
from .images import AccessDenied, DecodeError, ImageError, ImageTooLarge, MissingObject, Preprocessing, ReadError, RefusedURI, decode, error_string

# Memory reserved per decode task (MiB) unless data.decode_memory_mb says otherwise. Besides
# scheduling, a declared memory that differs from the predictor's keeps Ray Data from fusing decode
# into the inference actors, so the CPU decode step and the model step overlap as separate operators.
DECODE_MEMORY_MB = 256

log = logging.getLogger("catalog_vision")

LAYOUTS = ("auto", "flat", "class_folders")


def _resolve_uri(uri: str, base: str) -> str:
    """Manifest URIs may be absolute (``s3://…``, ``https://…``, ``/…``) or relative to the manifest's folder."""
    if "://" in uri or uri.startswith("/"):
        return uri
    return st.join(base, uri)


def list_images(prefix: str, storage: Mapping[str, Any] | None = None, layout: str = "auto", label_level: Any = "leaf", splits: Mapping[str, float] | None = None, split_seed: Any = 0) -> pa.Table:
    """List a prefix (the same reader as ``make_catalog source=folders``): ``image_id`` is the key
    under the prefix; class folders (nested at any depth) give ``label``. With ``splits`` every row
    gets a ``split`` by the hash of its id, exactly as an imported catalog would."""
    from ..catalogs.folders import read_folders
    from ..catalogs.splits import assign_splits

    if layout not in LAYOUTS:
        raise ValueError(f"data.layout={layout!r}; choose one of {list(LAYOUTS)}")
    table, report = read_folders(prefix, storage, label_level=label_level, labeled=True)
    if report.get("skipped_by_extension"):
        log.warning("listed %s: %d images; skipped %d files that are not images, by extension: %s", prefix, table.num_rows,
                    sum(report["skipped_by_extension"].values()), dict(report["skipped_by_extension"]))
    depth = set(pc.utf8_length(pc.replace_substring_regex(table.column("image_id"), "[^/]", "")).to_pylist())
    if layout == "auto":
        # Only an unambiguous tree (every file exactly one folder deep) is read as class folders.
        layout = "class_folders" if depth == {1} else "flat"
    if layout == "class_folders" and 0 in depth:
        raise ValueError(f"layout=class_folders expects <prefix>/<class folders...>/<file>; some files under {prefix!r} are at the top level")
    table = table.select(["image_id", "uri", "label"])
    if layout == "flat":
        table = table.set_column(2, "label", pa.nulls(table.num_rows, pa.string()))
    if splits:
        table, _ = assign_splits(table, splits, split_seed)
    return table


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


# What planning reads of a manifest (a product export may have many more columns).
MANIFEST_COLUMNS = ("image_id", "uri", "label", "labels", "split")
NORMALISE_ROWS = 262144


def catalog_table(data: Mapping[str, Any], storage: Mapping[str, Any] | None = None, split: str | None = None) -> pa.Table:
    """The selected catalog as ``image_id, uri, label`` (label may be null), read on the driver.

    It is metadata only (about 100 bytes a row: 100 MB for a million images); reading it here lets
    the driver plan a run, skip what is done and count inputs without a Ray Data pass.
    Duplicate ids are a manifest error: they would break one-row-per-image.
    """
    if data.get("images_prefix"):
        from ..catalogs.splits import check_fractions

        # A listed prefix has no split column: give it the same hash splits an import would, so
        # training never validates on its own training images.
        fractions = check_fractions(data["splits"], [data.get("train_split"), data.get("val_split")]) if split and data.get("splits") else None
        table = list_images(st.absolute(data["images_prefix"]), storage, data.get("layout", "auto"), data.get("label_level", "leaf"), fractions, data.get("split_seed", 0))
        if split:
            if "split" not in table.column_names:
                raise ValueError(f"data.split={split!r} for a listed prefix needs data.splits (fractions per split), or data.split=null")
            table = table.filter(pc.equal(table.column("split"), split))
        table = table.select(["image_id", "uri", "label"])
    else:
        if not data.get("manifest"):
            raise ValueError("set data.manifest (Parquet/CSV: image_id, uri, label, split) or data.images_prefix")
        manifest = st.absolute(data["manifest"])
        if not st.exists(manifest, storage):
            raise FileNotFoundError(f"manifest {manifest!r} not found; build one with jobs/make_catalog.py or set data.manifest")
        # In parts: Parquet decoding and the URI rules' intermediate columns exist for one part at a time.
        parts = []
        for part in iter_table_file(manifest, storage, columns=MANIFEST_COLUMNS, batch_rows=NORMALISE_ROWS):
            missing = {"image_id", "uri"} - set(part.column_names)
            if missing:
                raise ValueError(f"manifest {manifest!r} lacks columns {sorted(missing)}; it has {part.column_names}")
            if split:
                if "split" not in part.column_names:
                    raise ValueError(f"data.split={split!r} but manifest {manifest!r} has no 'split' column")
                part = part.filter(pc.equal(part.column("split"), split))
            parts += [_normalise_manifest(part.slice(i, NORMALISE_ROWS), manifest, data.get("uri_schemes"), data.get("uri_prefixes"))
                      for i in range(0, max(1, part.num_rows), NORMALISE_ROWS)]
        table = pa.concat_tables(parts, promote_options="default")
        del parts
    http.options(storage)  # a bad storage.http value fails here, not as an error row per image
    ids = table.column("image_id")
    if pc.count_distinct(ids).as_py() != len(ids):
        dup = [v["values"] for v in pc.value_counts(ids).to_pylist() if v["counts"] > 1][:5]
        raise ValueError(f"the catalog has duplicate image_id values, e.g. {dup}; each image needs a unique id")
    return table


def resolve_classes(data: Mapping[str, Any], storage: Mapping[str, Any] | None = None, table: pa.Table | None = None) -> list[str]:
    """``data.classes``, or with ``auto`` (or null) the sorted labels of the whole catalog (every
    split: a class seen only in val or test still gets an output, and a later catalog's new labels
    are reported by the evaluation as unknown classes, not errors)."""
    classes = data.get("classes")
    if classes not in (None, "auto"):
        if isinstance(classes, str):
            raise ValueError(f"data.classes={classes!r}; give a list of class names or auto")
        return [str(c) for c in classes]
    from ..catalogs.summary import class_counts

    names = sorted(class_counts(table if table is not None else catalog_table(data, storage)))
    if not names:
        raise ValueError("data.classes=auto but the catalog has no labels (no 'label'/'labels' values, or no class folders); label it or list data.classes")
    return names


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


def _normalise_manifest(batch: pa.Table, manifest: str, schemes: Sequence[str] | None = None, prefixes: Sequence[str] | None = None) -> pa.Table:
    """``image_id, uri, label`` (+ ``labels``, list<string>, for multi-label catalogs; + ``refused``,
    why a row's URI may not be fetched, when the manifest's URI policy refuses any: see
    :mod:`catalog_vision.storage.policy`)."""
    from ..storage.policy import refusals_column, resolve_column

    n = batch.num_rows
    label = batch.column("label").cast(pa.string()) if "label" in batch.column_names else pa.nulls(n, pa.string())
    raw = pc.fill_null(batch.column("uri").cast(pa.string()), "").combine_chunks()
    uris = resolve_column(raw, manifest.rsplit("/", 1)[0])
    cols = {"image_id": batch.column("image_id").cast(pa.string()), "uri": uris, "label": label}
    if "labels" in batch.column_names:
        cols["labels"] = batch.column("labels").cast(pa.list_(pa.string()))
    refused = refusals_column(raw, uris, manifest, schemes, prefixes)
    if refused is not None:
        cols["refused"] = refused
    return pa.table(cols)


def _fetch_many(uris: Sequence[str], storage: Mapping[str, Any] | None) -> list[bytes | BaseException]:
    """Fetch objects concurrently (s3fs batches requests); per-object failures come back as values."""
    if not uris:
        return []
    if http.is_http(uris[0]):
        return http.fetch_many(uris, http.options(storage))
    limit = max_object_bytes(storage)
    if not st.is_remote(uris[0]):
        return [_read_local(st.absolute(u), limit) for u in uris]
    fs, _ = st.resolve(uris[0], storage)
    paths = [st.resolve(u, storage)[1] for u in uris]
    return [_storage_error(v, p) if isinstance(v, BaseException) else _within(v, p, limit) for p, v in zip(paths, cat_literal(fs, paths, limit))]


MAX_OBJECT_BYTES = 50 * 2**20


def max_object_bytes(storage: Mapping[str, Any] | None) -> int:
    """``storage.max_object_bytes``: the largest object a fetch reads (local files and object
    storage; http(s) has ``storage.http.max_bytes``). Larger ones are ``ImageTooLarge`` rows, found
    by reading one byte past the limit, never the whole object."""
    v = (storage or {}).get("max_object_bytes") or MAX_OBJECT_BYTES
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"storage.max_object_bytes={v!r}; give a positive number of bytes")
    return v


def _within(data: bytes, path: str, limit: int) -> bytes | ImageError:
    if len(data) > limit:
        return ImageTooLarge(f"{path}: larger than storage.max_object_bytes={limit} (stopped reading at {len(data)} bytes)")
    return data


# Concurrent GETs per fetch call (s3fs's own default for its bulk calls).
FETCH_CONCURRENCY = 64


def cat_literal(fs, paths: Sequence[str], limit: int | None = None) -> list[bytes | BaseException]:
    """Each path's bytes (or its exception), fetched concurrently, every path taken literally; with
    ``limit``, a ranged read of at most ``limit + 1`` bytes (enough to tell an object is too large).

    Not ``fs.cat(paths)``: fsspec expands paths containing ``*``, ``?`` or ``[`` as globs there,
    so ``shirt[1].jpg`` would be looked up as a character class (a false ``MissingObject``) and a
    manifest row ``s3://bucket/**`` would download a whole bucket into one task.
    """
    if not getattr(fs, "async_impl", False):
        out: list[bytes | BaseException] = []
        for p in paths:
            try:
                out.append(fs.cat_file(p, start=0, end=None if limit is None else limit + 1))
            except Exception as e:
                out.append(b"" if _empty_range(e) else e)
        return out
    import asyncio

    from fsspec.asyn import sync

    async def fetch_all():
        gate = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def one(p):
            async with gate:
                try:
                    return await fs._cat_file(p, start=0, end=None if limit is None else limit + 1)
                except OSError as e:
                    if _empty_range(e):
                        return b""
                    raise

        return await asyncio.gather(*(one(p) for p in paths), return_exceptions=True)

    return list(sync(fs.loop, fetch_all))


def _empty_range(exc: BaseException) -> bool:
    """S3's answer to a ranged read of a zero-byte object (416 InvalidRange): the object is empty."""
    return "InvalidRange" in str(exc) or "range is not satisfiable" in str(exc).lower()


def _read_local(path: str, limit: int = MAX_OBJECT_BYTES) -> bytes | BaseException:
    """A local file's bytes (at most ``limit``), or its error as a value. Plain ``open``: fsspec's
    local filesystem adds a per-file cost that shows on small images (README "Benchmarks")."""
    try:
        with open(path, "rb") as f:
            return _within(f.read(limit + 1), path, limit)
    except OSError as e:
        return _storage_error(e, path)


# S3 answers that s3fs turns into PermissionError but that say nothing about the object: the
# credentials expired or are wrong, or the clock is off. Fixed, the same read succeeds.
_CREDENTIAL_CODES = frozenset({"ExpiredToken", "InvalidAccessKeyId", "SignatureDoesNotMatch", "RequestTimeTooSkewed", "TokenRefreshRequired", "InvalidToken"})


def _storage_error(exc: BaseException, path: str) -> ImageError:
    """A failed read as an error row: ``MissingObject`` (404) and ``AccessDenied`` (403) are final;
    everything else (timeouts, 5xx and throttling after the client's retries, resets, credential
    failures) is ``ReadError``, which is never committed, so the next run retries it (:mod:`catalog_vision.backfill.outcome`)."""
    if isinstance(exc, FileNotFoundError):
        return MissingObject(f"no object at {path}")
    code = str(getattr(exc.__cause__, "response", {}).get("Error", {}).get("Code", ""))
    if isinstance(exc, PermissionError) and code not in _CREDENTIAL_CODES:
        return AccessDenied(f"{path}: {exc}")
    return ReadError(f"{path}: {type(exc).__name__}: {code + ': ' if code else ''}{exc}")


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
            fetched = _fetch_many([uris[i] for i in idx], storage)
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
        fn_kwargs={"preprocessing": dict(preprocessing), "storage": dict(storage or {}), "defer_jpeg": bool(defer_jpeg), "encoded_budget": encoded_budget(data)},
        batch_size=batch_size,
        batch_format="numpy",
        memory=_decode_memory(data),
    )


def decoded_catalog(data: Mapping[str, Any], preprocessing: Mapping[str, Any], storage: Mapping[str, Any] | None = None, split: str | None = None, table: pa.Table | None = None):
    """[1] read the catalog (or take the ``table`` the caller already read), [2] fetch and decode on CPU tasks."""
    if table is None:
        table = catalog_table(data, storage, split=split)
    ds = to_dataset(table, rows_per_block(data, preprocessing))
    return decode_catalog(ds, data, preprocessing, storage)


def is_error(e: Any) -> bool:
    """Error cells may come back from Arrow as None or NaN when a whole batch is clean."""
    return isinstance(e, str) and bool(e)


TASKS = ("multiclass", "multilabel")


def to_training(batch: dict[str, np.ndarray], classes: Sequence[str], task: str = "multiclass") -> dict[str, np.ndarray]:
    """Drop error rows and unlabeled rows. Multi-class: class names → indices (``y`` int64);
    multi-label: the ``labels`` lists → multi-hot ``y`` (float32, one column per class)."""
    index = {c: i for i, c in enumerate(classes)}
    ok = [not is_error(e) for e in batch["error"]]
    if task == "multilabel":
        if "labels" not in batch:
            raise ValueError("data.task=multilabel needs a 'labels' column (list of class names) in the manifest")
        lists = [list(v) if v is not None and o else None for v, o in zip(batch["labels"], ok)]
        unknown = {c for v in lists if v for c in v if c not in index}
        if unknown:
            raise ValueError(f"manifest labels {sorted(unknown)[:10]} are not in data.classes={list(classes)}")
        keep = np.array([v is not None for v in lists], dtype=bool)
        y = np.zeros((int(keep.sum()), len(classes)), dtype=np.float32)
        for r, v in enumerate(v for v in lists if v is not None):
            y[r, [index[c] for c in v]] = 1.0
        return {"pixels": batch["pixels"][keep], "y": y}
    if task != "multiclass":
        raise ValueError(f"data.task={task!r}; choose one of {list(TASKS)}")
    keep = np.array([o and lbl in index for o, lbl in zip(ok, batch["label"])], dtype=bool)
    unknown = {lbl for o, lbl in zip(ok, batch["label"]) if o and isinstance(lbl, str) and lbl not in index}
    if unknown:
        raise ValueError(f"manifest labels {sorted(unknown)[:10]} are not in data.classes={list(classes)}")
    return {
        "pixels": batch["pixels"][keep],
        "y": np.array([index[lbl] for lbl in batch["label"][keep]], dtype=np.int64),
    }
