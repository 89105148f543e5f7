"""One backfill at a time per model and catalog: a lease taken before planning.

The lease is a small JSON object ``_lease.json`` in the model-and-catalog folder, created with an
exclusive create (``O_CREAT|O_EXCL`` locally; a PUT with ``If-None-Match: *`` on S3), so of two
runs that start together exactly one gets it. The holder renews it from a background thread every
``ttl_s / 3``; a lease not renewed for ``ttl_s`` (its run died) is taken over, and so is a lease
whose holder is a process on this host that no longer exists. Takeover and renewal are
conditional too (a lock file and a content check locally; ``If-Match: <etag>`` on S3), so two
runs that find the same stale lease cannot both take it.

Writers check the lease before each commit (:func:`check`): a writer left behind by a killed
driver stops committing once a rerun has taken the lease over.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

from .. import storage as st

log = logging.getLogger("catalog_vision")

LEASE_NAME = "_lease.json"


class LeaseHeld(RuntimeError):
    """Another run holds the lease of this model and catalog."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (it stopped renewing for longer than the lease's ttl)."""


@dataclass
class Lease:
    uri: str
    token: str
    run_id: str
    ttl_s: float
    storage: dict
    etag: str | None = None  # S3: the ETag of our last write, for conditional renewals
    lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def release(self) -> None:
        """Stop renewing and delete the lease (only if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        current, _ = _read(self.uri, self.storage)
        if current and current.get("token") == self.token:
            fs, path = st.resolve(self.uri, self.storage)
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(path)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(uri: str, run_id: str, storage: Mapping[str, Any] | None = None, ttl_s: float = 300.0, wait_s: float = 0.0, poll_s: float | None = None) -> Lease:
    """Take the lease at ``uri`` for ``run_id``, waiting up to ``wait_s`` for a running holder to
    finish; raise :class:`LeaseHeld` naming the holder's run id when it does not."""
    if ttl_s <= 0:
        raise ValueError(f"output.lease.ttl_s={ttl_s!r}: must be > 0 (seconds a lease lives without renewal)")
    storage = dict(storage or {})
    lease = Lease(uri=uri, token=f"{run_id}/{uuid.uuid4().hex}", run_id=run_id, ttl_s=float(ttl_s), storage=storage)
    deadline = time.monotonic() + max(0.0, float(wait_s))
    poll_s = poll_s or min(5.0, max(0.2, ttl_s / 10))
    waited = False
    while True:
        holder = _try_take(lease)
        if holder is None:
            break
        if time.monotonic() >= deadline:
            raise LeaseHeld(
                f"run {holder.get('run_id')!r} (host {holder.get('host')}, pid {holder.get('pid')}) is backfilling this model and catalog "
                f"(lease {uri}, renewed {time.time() - float(holder.get('renewed_at', 0)):.0f} s ago, expires after {holder.get('ttl_s')} s without renewal); "
                f"wait for it, or set output.lease.wait_s to wait up to that many seconds"
            )
        if not waited:
            log.warning("run %r holds the lease %s; waiting up to %.0f s (output.lease.wait_s)", holder.get("run_id"), uri, wait_s)
            waited = True
        time.sleep(poll_s)
    lease._thread = threading.Thread(target=_heartbeat, args=(lease,), daemon=True, name="backfill-lease")
    lease._thread.start()
    return lease


def check(uri: str, token: str, storage: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`LeaseLost` unless the lease at ``uri`` is still held with ``token``."""
    current, _ = _read(uri, storage)
    if not current or current.get("token") != token:
        holder = (current or {}).get("run_id")
        raise LeaseLost(f"the lease {uri} is no longer held by this run (now: {holder!r}); not committing")


def _record(lease: Lease) -> bytes:
    now = time.time()
    return json.dumps(
        {"run_id": lease.run_id, "token": lease.token, "host": socket.gethostname(), "pid": os.getpid(), "renewed_at": now, "ttl_s": lease.ttl_s},
        sort_keys=True,
    ).encode()


def _stale(holder: Mapping[str, Any]) -> bool:
    """Expired, or held by a process of this host that is gone."""
    if time.time() - float(holder.get("renewed_at", 0)) > float(holder.get("ttl_s", 0)):
        return True
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


def _try_take(lease: Lease) -> dict | None:
    """Take the lease (return None) or return the live holder's record."""
    if _create(lease):
        return None
    holder, etag = _read(lease.uri, lease.storage)
    if holder is None:  # released between our create and our read: try again
        return None if _create(lease) else (_read(lease.uri, lease.storage)[0] or {"run_id": "?"})
    if not _stale(holder):
        return holder
    if _replace_if(lease, holder, etag):
        log.warning(
            "took over the lease %s from run %r (not renewed for %.0f s, or its process is gone)",
            lease.uri,
            holder.get("run_id"),
            time.time() - float(holder.get("renewed_at", 0)),
        )
        return None
    return _read(lease.uri, lease.storage)[0] or {"run_id": "?"}


def _read(uri: str, storage: Mapping[str, Any] | None) -> tuple[dict | None, str | None]:
    fs, path = st.resolve(uri, storage)
    try:
        if st.is_remote(uri):
            bucket, key, _ = fs.split_path(path)
            resp = fs.call_s3("get_object", Bucket=bucket, Key=key)
            body = _sync_read(fs, resp["Body"])
            return json.loads(body), resp.get("ETag")
        with open(path, "rb") as f:
            return json.loads(f.read()), None
    except FileNotFoundError:
        return None, None
    except json.JSONDecodeError:  # a local lease being written this instant
        return {"run_id": "?", "renewed_at": time.time(), "ttl_s": 60.0}, None


def _sync_read(fs, body) -> bytes:
    from fsspec.asyn import sync

    async def read():
        async with body:
            return await body.read()

    return sync(fs.loop, read)


def _put_if(lease: Lease, fs, path: str, data: bytes, lost: tuple[type[Exception], ...], **condition: str | None) -> bool:
    """A conditional S3 PutObject (``IfNoneMatch="*"`` or ``IfMatch=<etag>``); False when the
    condition fails (or s3fs raises one of ``lost``), and the new ETag kept on success."""
    bucket, key, _ = fs.split_path(path)
    try:
        resp = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
    except lost:
        return False
    except OSError as e:
        if _precondition_failed(e) or _conflict(e):
            return False
        raise
    lease.etag = resp.get("ETag")
    return True


def _create(lease: Lease) -> bool:
    """Exclusive create; False when the lease exists."""
    fs, path = st.resolve(lease.uri, lease.storage)
    data = _record(lease)
    if st.is_remote(lease.uri):
        return _put_if(lease, fs, path, data, (FileExistsError,), IfNoneMatch="*")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


def _replace_if(lease: Lease, expected: Mapping[str, Any], etag: str | None) -> bool:
    """Overwrite the lease with ours if it still holds ``expected`` (conditional on S3's ETag,
    under an exclusive lock file locally)."""
    fs, path = st.resolve(lease.uri, lease.storage)
    data = _record(lease)
    if st.is_remote(lease.uri):
        return _put_if(lease, fs, path, data, (FileNotFoundError, FileExistsError), IfMatch=etag)
    import fcntl

    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            current, _ = _read(lease.uri, lease.storage)
            if not current or current.get("token") != expected.get("token"):
                return False
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            return True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _error_code(e: BaseException) -> str:
    cause = e.__cause__
    return str(getattr(cause, "response", {}).get("Error", {}).get("Code", "")) if cause is not None else ""


def _precondition_failed(e: BaseException) -> bool:
    return _error_code(e) in ("PreconditionFailed", "412") or (isinstance(e, OSError) and e.errno == errno.EINVAL and "Precondition" in str(e))


def _conflict(e: BaseException) -> bool:
    # S3 answers 409 ConditionalRequestConflict when two conditional writes race.
    return _error_code(e) in ("ConditionalRequestConflict", "409", "OperationAborted")


def _heartbeat(lease: Lease) -> None:
    interval = lease.ttl_s / 3
    while not lease._stop.wait(interval):
        try:
            current, etag = _read(lease.uri, lease.storage)
            if not current or current.get("token") != lease.token:
                lease.lost = True
                log.error("lost the lease %s to run %r; this run's commits will stop", lease.uri, (current or {}).get("run_id"))
                return
            if not _replace_if(lease, current, etag):
                lease.lost = True
                log.error("lost the lease %s while renewing it", lease.uri)
                return
        except Exception as e:  # a storage hiccup: try again at the next beat (the ttl leaves two more)
            log.warning("could not renew the lease %s: %s: %s", lease.uri, type(e).__name__, e)
