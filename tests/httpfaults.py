"""An image server on 127.0.0.1 that injects HTTP faults by path, for the ``http(s)://`` source tests.

``GET /<fault>/<name>`` serves ``objects[name]`` after the fault named by the first path segment:

* ``ok``: the bytes; ``slow``: the bytes after ``slow_s`` (to measure concurrency);
* ``missing`` 404, ``gone`` 410, ``unauthorized`` 401, ``forbidden`` 403, ``error500`` 500 on every attempt;
* ``flaky503``: 503 on the first attempt, then the bytes; ``throttle429``: 429 with
  ``Retry-After: <retry_after>`` first, then the bytes; ``reset``: a TCP reset first, then the bytes;
* ``stall``: waits ``stall_s`` before answering (past the client's timeout), every attempt;
* ``huge``: declares a ``Content-Length`` of 1 TB and streams; ``endless``: a chunked body that never
  ends (only a client that caps what it reads finishes); ``notimage``: a text body with status 200;
* ``redirect``: 302 to ``/ok/<name>`` on the same server; ``redirect-metadata``: 302 to the cloud's
  instance-metadata address; ``redirect-file``: 302 to ``file:///etc/passwd``; ``redirect-loop``: 302 to itself.

Every request is recorded (per path: arrival times; in flight now and at most, per server and
across servers sharing one :class:`Stats`; client ports, i.e. TCP connections).
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("ok", "slow", "missing", "gone", "unauthorized", "forbidden", "error500", "flaky503", "throttle429", "reset", "stall", "huge", "endless", "notimage",
          "redirect", "redirect-metadata", "redirect-file", "redirect-loop")
REDIRECTS = {"redirect": "/ok/{name}", "redirect-metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
             "redirect-file": "file:///etc/passwd", "redirect-loop": "/redirect-loop/{name}"}


class Stats:
    """Request counts shared by one or more servers (the overall-concurrency test uses two)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def enter(self):
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self):
        with self.lock:
            self.in_flight -= 1


class FaultServer:
    def __init__(self, objects: dict[str, bytes], *, retry_after: int = 1, slow_s: float = 0.05, stall_s: float = 5.0, ssl_context: ssl.SSLContext | None = None, stats: Stats | None = None):
        self.objects = objects
        self.retry_after, self.slow_s, self.stall_s = retry_after, slow_s, stall_s
        self.stats = Stats()  # this server alone
        self.shared = stats or self.stats  # across servers
        self.arrivals: dict[str, list[float]] = defaultdict(list)
        self.ports: set[int] = set()
        self.lock = threading.Lock()
        self.closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is visible
            disable_nagle_algorithm = True  # headers and body go out in two writes; no 40 ms ACK waits

            def log_message(self, *args):
                pass

            def handle(self):
                try:
                    super().handle()
                except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                    pass  # a client hanging up on a kept-alive connection is not a server error

            def do_GET(self):
                self.counted = True
                server.stats.enter()
                if server.shared is not server.stats:
                    server.shared.enter()
                try:
                    server.handle(self)
                finally:
                    server.answered(self)

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default 5 drops SYNs under a burst of connects: 1 s client stalls
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        if ssl_context is not None:
            self.httpd.socket = ssl_context.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https" if ssl_context else "http"
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def url(self, fault: str, name: str) -> str:
        assert fault in FAULTS, fault
        return f"{self.base}/{fault}/{name}"

    def attempts(self, fault: str, name: str) -> list[float]:
        with self.lock:
            return list(self.arrivals[f"/{fault}/{name}"])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- request handling ---------------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        _, fault, name = (path.split("/", 2) + ["", ""])[:3]
        with self.lock:
            self.arrivals[path].append(time.monotonic())
            self.ports.add(h.client_address[1])
            n = len(self.arrivals[path])
        body = self.objects.get(name)
        if fault not in FAULTS or body is None:
            return self.reply(h, 404, b"no such object\n")
        if fault in ("missing", "gone", "unauthorized", "forbidden", "error500"):
            status = {"missing": 404, "gone": 410, "unauthorized": 401, "forbidden": 403, "error500": 500}[fault]
            return self.reply(h, status, f"injected {status}\n".encode())
        if fault in REDIRECTS:
            return self.reply(h, 302, b"", {"Location": REDIRECTS[fault].format(name=name)})
        if fault == "flaky503" and n == 1:
            return self.reply(h, 503, b"slow down\n")
        if fault == "throttle429" and n == 1:
            return self.reply(h, 429, b"too many requests\n", {"Retry-After": str(self.retry_after)})
        if fault == "reset" and n == 1:
            # SO_LINGER 0: close() sends a RST instead of a FIN.
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
            h.connection.close()
            return
        if fault == "stall":
            self.closing.wait(self.stall_s)
        if fault == "slow":
            time.sleep(self.slow_s)
        if fault == "notimage":
            body = b"<html>this CDN returned a page, not an image</html>\n"
        if fault == "huge":
            return self.stream(h, {"Content-Length": str(10**12)})
        if fault == "endless":
            return self.stream(h, {"Transfer-Encoding": "chunked"}, chunked=True)
        self.reply(h, 200, body, {"Content-Type": "image/png"})

    def answered(self, h) -> None:
        """A request stops counting as in flight just before its answer goes out: once the client has
        the answer it may start another request, and that one must not overlap this one's count."""
        if getattr(h, "counted", False):
            h.counted = False
            self.stats.leave()
            if self.shared is not self.stats:
                self.shared.leave()

    def reply(self, h, status: int, body: bytes, headers: dict | None = None) -> None:
        self.answered(h)
        try:
            h.send_response(status)
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            h.close_connection = True

    def stream(self, h, headers: dict, chunked: bool = False) -> None:
        """Zero bytes, 64 KiB at a time, until the client hangs up (or 2 GiB: a client bug)."""
        self.answered(h)
        h.send_response(200)
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        chunk = b"\0" * 65536
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk
        h.close_connection = True
        try:
            for _ in range(2**15):
                if self.closing.is_set():
                    return
                h.wfile.write(frame)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            return


def self_signed(tmp_dir) -> tuple[str, str]:
    """A certificate for 127.0.0.1 signed by its own key (a private CA): ``(cert.pem, key.pem)`` paths."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "catalog-vision test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = f"{tmp_dir}/ca.pem", f"{tmp_dir}/key.pem"
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def server_ssl_context(cert_path: str, key_path: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx
