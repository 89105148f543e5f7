"""``http://`` and ``https://`` image URLs: many fetched concurrently, each failure a value.

:func:`fetch_many` is synchronous, so Ray Data tasks and actors call it like the fsspec reads. It
returns, in order, the body ``bytes`` or an :class:`~catalog_vision.ingest.errors.ImageError` per URL:
``MissingObject`` (404/410), ``AccessDenied`` (401/403), ``ImageTooLarge`` (over ``max_bytes``),
``ReadError`` (anything else, after retries). Options come from the ``storage.http`` config block
(:class:`.http_options.HttpOptions`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import email.utils
import os
import random
import re
import ssl
import threading
import time
from typing import Any, Sequence
from urllib.parse import urlsplit

from ..ingest.errors import AccessDenied, ImageError, ImageTooLarge, MissingObject, ReadError, RefusedURI
from .hosts import PrivateHost, check_url, guarded_resolver
from .http_options import HttpOptions

# 408 and 429 say "later"; 5xx are the server's or a proxy's trouble. Other 4xx will not change.
RETRY_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
_CHUNK = 64 * 1024


def is_http(uri: str) -> bool:
    """``http://`` or ``https://``, in any case."""
    return uri[:8].lower().startswith(("http://", "https://"))


# Userinfo and query strings carry credentials (basic auth, presigned-URL signatures): messages
# show scheme, host, port and path only.
_URL = re.compile(r"(?i)\b(https?://)(?:[^/@\s?#'\"]*@)?([^\s?#'\"]*)(?:[?#][^\s'\"]*)?")


def safe_url(text: str) -> str:
    """``text`` with every http(s) URL's userinfo, query and fragment removed."""
    return _URL.sub(r"\1\2", text)


def fetch_many(urls: Sequence[str], opts: HttpOptions | None = None) -> list[bytes | ImageError]:
    """Fetch ``urls`` concurrently; ``bytes`` or an ``ImageError`` per URL, in order.

    Runs on one event loop in a daemon thread per process, so it works from synchronous code and
    from code already inside an event loop (Ray Serve), and keeps connections alive between calls.
    The concurrency limits hold per process: threads calling at once share them.
    """
    if not urls:
        return []
    opts = opts or HttpOptions()
    return asyncio.run_coroutine_threadsafe(_fetch_all(list(urls), opts), _loop()).result()


_state: dict[str, Any] = {"pid": None, "loop": None, "clients": {}}
_lock = threading.Lock()


def _loop() -> asyncio.AbstractEventLoop:
    # Keyed by pid: a forked child inherits the dict but not the thread that runs the loop.
    with _lock:
        if _state["pid"] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="catalog-vision-http", daemon=True).start()
            _state.update(pid=os.getpid(), loop=loop, clients={})
            atexit.register(_close, os.getpid(), loop, _state["clients"])
        return _state["loop"]


def _close(pid: int, loop: asyncio.AbstractEventLoop, clients: dict) -> None:
    async def close_all():
        for c in clients.values():
            await c.session.close()

    # A forked child inherits this handler but not the loop's thread: nothing there to close.
    if pid == os.getpid() and loop.is_running():
        try:
            asyncio.run_coroutine_threadsafe(close_all(), loop).result(timeout=5)
        except Exception:  # closing at exit is a courtesy to the servers; never fail the exit
            pass


class _Client:
    """A session (its pool keeps connections alive across batches) and the process-wide limits.

    The limits are semaphores taken before each attempt, not the connector's pool limits: aiohttp
    counts a wait for a pooled connection against the request's ``total`` timeout, so a 512-URL batch
    queued behind 16 connections would time out requests that were never sent.
    """

    def __init__(self, opts: HttpOptions, resolver=None):
        import aiohttp

        ctx: ssl.SSLContext | bool = True
        if opts.ca_file:
            # Added to the system's CAs, not instead of them: a catalog may mix internal and public hosts.
            ctx = ssl.create_default_context()
            ctx.load_verify_locations(cafile=opts.ca_file)
        self.session = aiohttp.ClientSession(
            # The resolver refuses private and metadata addresses, and the connector connects only to
            # the addresses it returned: the check holds for the connection (storage/hosts.py).
            connector=aiohttp.TCPConnector(limit=opts.max_concurrency, limit_per_host=opts.per_host_concurrency, ssl=ctx,
                                           resolver=guarded_resolver(opts.allow_private_hosts, resolver)),
            # identity: image bytes reach the decoder as stored, never a gzip bomb unpacked here.
            headers={"User-Agent": opts.user_agent, "Accept-Encoding": "identity"},
            timeout=aiohttp.ClientTimeout(total=opts.timeout, sock_connect=opts.connect_timeout),
            auto_decompress=False,
        )
        self.opts = opts
        self.overall = asyncio.Semaphore(opts.max_concurrency)
        # host -> [semaphore, users]; dropped when unused, so a catalog spanning many hosts stays small.
        self.hosts: dict[tuple, list] = {}

    @contextlib.asynccontextmanager
    async def slot(self, url: str):
        try:
            parts = urlsplit(url)
            key = (parts.scheme.lower(), parts.hostname, parts.port)
        except ValueError:  # a malformed URL fails in the request, with its own message
            key = ("", url, None)
        entry = self.hosts.setdefault(key, [asyncio.Semaphore(self.opts.per_host_concurrency), 0])
        entry[1] += 1
        try:
            async with entry[0], self.overall:
                yield
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self.hosts[key]


def _client(opts: HttpOptions) -> _Client:
    clients = _state["clients"]
    if opts not in clients:
        clients[opts] = _Client(opts)
    return clients[opts]


async def _fetch_all(urls: list[str], opts: HttpOptions) -> list[bytes | ImageError]:
    client = _client(opts)
    return list(await asyncio.gather(*(_fetch_one(client, u, opts) for u in urls)))


class _Retry(Exception):
    """A failed attempt worth repeating; ``wait`` is the server's ``Retry-After`` in seconds, if any."""

    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.reason, self.wait = reason, wait


async def _fetch_one(client: _Client, url: str, opts: HttpOptions) -> bytes | ImageError:
    import aiohttp

    where = safe_url(url)
    attempt = 0
    while True:
        attempt += 1
        try:
            async with client.slot(url):  # held for one attempt; backoff waits hold no slot
                return await _attempt(client.session, url, where, opts)
        except ImageError as e:
            return e
        except PrivateHost as e:
            return RefusedURI(f"{where}: {e}")
        except _Retry as e:
            reason, server_wait = e.reason, e.wait
        except (asyncio.TimeoutError, TimeoutError):
            reason, server_wait = f"timed out (timeout={opts.timeout:g} s, connect_timeout={opts.connect_timeout:g} s)", None
        except aiohttp.ClientConnectorCertificateError as e:
            return ReadError(safe_url(f"{where}: TLS certificate not trusted ({e.certificate_error}); set storage.http.ca_file for a private CA"))
        except aiohttp.ClientSSLError as e:
            return ReadError(safe_url(f"{where}: TLS error: {e}"))
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError) as e:
            reason, server_wait = safe_url(f"{type(e).__name__}: {e}"), None
        except aiohttp.InvalidURL:
            return ReadError(f"{where}: not a valid URL")
        except Exception as e:  # an unexpected client error must cost one row, not the batch
            return ReadError(safe_url(f"{where}: {type(e).__name__}: {e}"))
        if attempt > opts.retries:
            return ReadError(f"{where}: {reason}; gave up after {attempt} attempt{'s' * (attempt > 1)}")
        delay = _backoff(attempt, opts)
        if server_wait is not None:
            if server_wait > opts.max_backoff:
                return ReadError(f"{where}: {reason}; Retry-After {server_wait:g} s exceeds storage.http.max_backoff={opts.max_backoff:g}; "
                                 f"gave up after {attempt} attempt{'s' * (attempt > 1)}")
            delay = max(delay, server_wait)
        await asyncio.sleep(delay)


def _backoff(attempt: int, opts: HttpOptions) -> float:
    """Exponential backoff with "equal jitter": half the step fixed, half random, so clients that
    failed together spread out while every wait still grows."""
    step = min(opts.max_backoff, opts.backoff * 2 ** (attempt - 1))
    return step / 2 + random.uniform(0, step / 2)


MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)


def redirect_target(url: str, location: str | None, hops: int) -> str:
    """Where a redirect from ``url`` leads, if the URI policy allows it: a redirect is followed by
    hand, so an allowed host cannot send the fetch to a link-local or instance-metadata address
    (SSRF), to another scheme, or around in circles."""
    from urllib.parse import urljoin

    from .policy import _metadata_host

    where = safe_url(url)
    if not location:
        raise ReadError(f"{where}: redirect without a Location header")
    if hops >= MAX_REDIRECTS:
        raise RefusedURI(f"{where}: more than {MAX_REDIRECTS} redirects")
    target = urljoin(url, location)
    if target.split("://", 1)[0].lower() not in ("http", "https"):
        raise RefusedURI(f"{where}: redirects to {safe_url(target)!r}, not an http(s) URL")
    if _metadata_host(target):
        raise RefusedURI(f"{where}: redirects to {safe_url(target)!r}, a link-local or instance-metadata host")
    return target


async def _attempt(session, url: str, where: str, opts: HttpOptions) -> bytes:
    for hops in range(MAX_REDIRECTS + 1):
        try:
            check_url(url, opts.allow_private_hosts)  # literal IPs: no resolver sees them
        except RefusedURI as e:
            raise RefusedURI(f"{where}: {e}" if not hops else f"{where}: redirects to {safe_url(url)!r}: {e}") from None
        async with session.get(url, allow_redirects=False) as resp:
            if resp.status in REDIRECTS:
                url = redirect_target(url, resp.headers.get("Location"), hops)
                continue
            return await _body(resp, where, opts)
    raise RefusedURI(f"{where}: more than {MAX_REDIRECTS} redirects")


async def _body(resp, where: str, opts: HttpOptions) -> bytes:
    status = resp.status
    if status in (404, 410):
        raise MissingObject(f"no object at {where} (HTTP {status})")
    if status in (401, 403):
        raise AccessDenied(f"{where}: HTTP {status} {resp.reason or ''}".rstrip())
    if status in RETRY_STATUS:
        raise _Retry(f"HTTP {status}", _retry_after(resp.headers.get("Retry-After")))
    if not 200 <= status < 300:
        raise ReadError(f"{where}: HTTP {status} {resp.reason or ''}".rstrip())
    length = resp.content_length
    if length is not None and length > opts.max_bytes:
        resp.close()  # drop the connection rather than drain a body we refuse
        raise ImageTooLarge(f"{where}: Content-Length {length} bytes exceeds storage.http.max_bytes={opts.max_bytes}")
    body = bytearray()
    async for chunk in resp.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > opts.max_bytes:
            resp.close()
            raise ImageTooLarge(f"{where}: body exceeds storage.http.max_bytes={opts.max_bytes} (stopped reading at {len(body)} bytes)")
    return bytes(body)


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
