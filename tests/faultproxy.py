"""A fault-injecting HTTP proxy between the job and the S3 endpoint, on 127.0.0.1.

Clients use the proxy's address as their S3 endpoint; it forwards every request to the real
endpoint, except that it can answer an object GET with a fault first:

* ``503 SlowDown`` (throttling), ``500 InternalError``, a TCP reset, or a delay longer than the
  client's read timeout: each on the first attempt only, so a retrying client succeeds;
* ``403 AccessDenied``: on every attempt, for keys listed in ``deny``;
* an outage: ``503 ServiceUnavailable`` on every attempt, for every key (``outage = True``) or for keys
  ending with one of ``outage`` (a set), until ``outage`` is set back to ``None``.

``first_attempt_faults=False`` turns the first-attempt faults off (only ``deny`` and ``outage``).

``hide_from_list`` (a set of key suffixes) drops those keys from every bucket listing
(ListObjectsV2/ListObjects) the proxy passes on, while GET and HEAD still find them: an S3-compatible
store whose LIST lags behind its writes. ``hidden`` counts the entries dropped.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("slowdown", "internal", "reset", "timeout", None)

_ERROR = """<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>{code}</Code><Message>{message}</Message><RequestId>faultproxy</RequestId></Error>"""


class FaultProxy:
    def __init__(
        self, upstream: str, *, fault_prefix: str, deny: set[str] = frozenset(), delay_s: float = 3.0, outage: bool | set[str] | None = None,
        first_attempt_faults: bool = True, hide_from_list: set[str] | None = None,
    ):
        self.upstream = urlsplit(upstream)
        self.fault_prefix = fault_prefix  # only object keys under this path get faults
        self.deny = set(deny)
        self.delay_s = delay_s
        self.outage = outage
        self.first_attempt_faults = first_attempt_faults
        self.hide_from_list = set(hide_from_list or ())
        self.hidden = 0
        self.attempts: Counter = Counter()  # GETs per object path under fault_prefix
        self.injected: Counter = Counter()  # faults per kind
        self.faulted: dict[str, list[str]] = {}  # object path -> the faults it got, in order
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _forward(self):
                path = self.path.split("?", 1)[0]
                if self.command == "GET" and path.startswith(proxy.fault_prefix):
                    fault = proxy.fault_for(path)
                    if fault == "deny":
                        return self._error(403, "AccessDenied", "Access Denied")
                    if fault == "unavailable":
                        return self._error(503, "ServiceUnavailable", "Service is unable to handle request.")
                    if fault == "slowdown":
                        return self._error(503, "SlowDown", "Please reduce your request rate.")
                    if fault == "internal":
                        return self._error(500, "InternalError", "We encountered an internal error. Please try again.")
                    if fault == "reset":
                        # SO_LINGER 0: close() sends a TCP RST instead of a FIN.
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.close_connection = True
                        self.connection.close()
                        return
                    if fault == "timeout":
                        time.sleep(proxy.delay_s)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "proxy-connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if self.command == "GET" and proxy.hide_from_list and b"<ListBucketResult" in data[:500]:
                    data = proxy.hide(data)
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # HEAD answers carry the object's size, not that of an (absent) body.
                self.send_header("Content-Length", resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def _error(self, status: int, code: str, message: str):
                data = _ERROR.format(code=code, message=message).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def fault_for(self, path: str) -> str | None:
        with self.lock:
            self.attempts[path] += 1
            attempt = self.attempts[path]
        outage = self.outage
        if any(path.endswith(d) for d in self.deny):
            fault = "deny"
        elif outage is True or (outage and any(path.endswith(k) for k in outage)):
            fault = "unavailable"
        elif attempt > 1 or not self.first_attempt_faults:
            return None
        else:
            fault = FAULTS[int(hashlib.sha256(path.encode()).hexdigest(), 16) % len(FAULTS)]
        if fault:
            with self.lock:
                self.injected[fault] += 1
                self.faulted.setdefault(path, []).append(fault)
        return fault

    def hide(self, listing: bytes) -> bytes:
        """A bucket listing without the entries whose key ends with one of ``hide_from_list``."""
        hidden = tuple(self.hide_from_list)
        dropped = 0

        def keep(m: re.Match) -> bytes:
            nonlocal dropped
            key = re.search(rb"<Key>(.*?)</Key>", m.group(0), re.S).group(1).decode()
            if key.endswith(hidden):
                dropped += 1
                return b""
            return m.group(0)

        out = re.sub(rb"<Contents>.*?</Contents>", keep, listing, flags=re.S)
        out = re.sub(rb"<KeyCount>(\d+)</KeyCount>", lambda m: b"<KeyCount>%d</KeyCount>" % (int(m.group(1)) - dropped), out)
        with self.lock:
            self.hidden += dropped
        return out

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
