"""Image bytes from local files, object storage (s3fs, every path taken literally) and http(s), fetched
concurrently. A failed object is a value, never an exception: ``MissingObject`` and ``AccessDenied``
are final, ``ReadError`` is retried by the next run (:mod:`catalog_vision.backfill.outcome`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .. import storage as st
from ..storage import http, http_options
from .errors import AccessDenied, ImageError, ImageTooLarge, MissingObject, ReadError


def fetch_many(uris: Sequence[str], storage: Mapping[str, Any] | None) -> list[bytes | BaseException]:
    """Fetch objects concurrently (s3fs batches requests); per-object failures come back as values."""
    if not uris:
        return []
    if http.is_http(uris[0]):
        return http.fetch_many(uris, http_options.options(storage))
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
