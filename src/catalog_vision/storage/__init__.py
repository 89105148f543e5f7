"""One way to reach object storage: local folders and ``s3://`` (any S3-compatible endpoint).

Every read and write in catalog-vision goes through :func:`resolve`, so the same code runs on a
laptop folder, MinIO, Ceph or AWS by changing the ``storage`` config group only. Credentials come
from the environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN`` or an
AWS profile), never from saved configs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import uuid
from typing import Any, Mapping

import fsspec
import pyarrow.fs as pafs

from .secrets import redact, redact_text  # noqa: F401  (re-exported: st.redact, st.redact_text)



def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def absolute(uri: str) -> str:
    """Local paths become absolute (Ray workers do not share the driver's cwd); URIs pass through."""
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if is_remote(uri):
        return uri.rstrip("/")
    return os.path.abspath(os.path.expanduser(uri))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


@functools.lru_cache(maxsize=8)
def _filesystem(protocol: str, options_json: str) -> fsspec.AbstractFileSystem:
    options = json.loads(options_json)
    if protocol in ("s3", "s3a"):
        import s3fs

        client_kwargs = {}
        if options.get("endpoint_url"):
            client_kwargs["endpoint_url"] = options["endpoint_url"]
        if options.get("region"):
            client_kwargs["region_name"] = options["region"]
        config_kwargs = {
            # Retries with backoff for throttling (503 SlowDown), resets and timeouts.
            "retries": {"max_attempts": int(options.get("max_attempts", 10)), "mode": "adaptive"},
            "connect_timeout": float(options.get("connect_timeout", 10)),
            "read_timeout": float(options.get("read_timeout", 60)),
        }
        return s3fs.S3FileSystem(
            anon=bool(options.get("anon", False)),
            client_kwargs=client_kwargs,
            config_kwargs=config_kwargs,
            # Listing caches would hide objects written by other processes during a run.
            use_listings_cache=False,
        )
    if protocol in ("file", "local"):
        return fsspec.filesystem("file", auto_mkdir=True)
    return fsspec.filesystem(protocol, **options)


def _options(storage: Mapping[str, Any] | None) -> dict:
    storage = dict(storage or {})
    return {k: v for k, v in storage.items() if k in ("endpoint_url", "region", "anon", "max_attempts", "connect_timeout", "read_timeout") and v is not None}


def resolve(uri: str, storage: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for a local path or URI, using the ``storage`` config."""
    uri = absolute(uri)
    if is_remote(uri):
        protocol, path = uri.split("://", 1)
    else:
        protocol, path = "file", uri
    fs = _filesystem(protocol, json.dumps(_options(storage), sort_keys=True))
    return fs, path


def arrow_filesystem(uri: str, storage: Mapping[str, Any] | None = None) -> tuple[pafs.FileSystem | None, str]:
    """``(pyarrow filesystem, path)`` for Ray Data readers/writers and Ray Train storage.

    Local paths return ``None`` so Ray uses its own local filesystem handling.
    """
    fs, path = resolve(uri, storage)
    if not is_remote(absolute(uri)):
        return None, path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def read_bytes(uri: str, storage: Mapping[str, Any] | None = None) -> bytes:
    fs, path = resolve(uri, storage)
    return fs.cat_file(path)


TEMP_SUFFIX = ".tmp"


def write_bytes(uri: str, data: bytes | memoryview, storage: Mapping[str, Any] | None = None) -> None:
    """Write a whole object atomically: readers see the old content or the new, never a part. An
    object store's PUT is atomic; a local file is written beside its target and renamed over it."""
    if not is_remote(absolute(uri)):
        write_local_atomic(absolute(uri), data)
        return
    fs, path = resolve(uri, storage)
    fs.pipe_file(path, bytes(data) if isinstance(data, memoryview) else data)


def write_local_atomic(path: str, data: bytes | memoryview) -> None:
    """A hidden temp file in the same folder (same filesystem), fsync, then ``os.replace``."""
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    fsync_dir(folder)


def fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable: POSIX keeps the new directory entry in memory until the
    directory itself is fsynced, so a power loss could otherwise bring back the old file (or none)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # no directory handles here (e.g. Windows): nothing more to do
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the data itself is already synced
    finally:
        os.close(fd)


def write_json(uri: str, obj: Any, storage: Mapping[str, Any] | None = None) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), storage)


def read_json(uri: str, storage: Mapping[str, Any] | None = None) -> Any:
    return json.loads(read_bytes(uri, storage))


def exists(uri: str, storage: Mapping[str, Any] | None = None) -> bool:
    fs, path = resolve(uri, storage)
    return fs.exists(path)


