"""How to run the HTTP fetcher's event loop from synchronous Ray tasks: the cost of one 512-URL batch.

    python bench/http_fetch.py                    # http and https, 512 URLs a batch, 10 batches
    python bench/http_fetch.py --batches 20 --kib 60

Strategies, same coroutine (``catalog_vision.storage.http._fetch_all``), same options:

* ``loop thread`` — what ``fetch_many`` does: one event loop in a daemon thread per process and one
  ``aiohttp`` session per option set, so connections stay open from one batch to the next;
* ``asyncio.run`` — a fresh event loop and a fresh session (new connections, new TLS handshakes)
  for every batch.

The server is the test suite's threaded ``http.server`` on 127.0.0.1 (tests/httpfaults.py) in its own
process: on loopback the network costs nothing, so the difference is loop, session and connection
setup (over the internet each new connection also costs round trips).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
import results as results_file  # noqa: E402


def fresh_loop(urls, opts):
    from catalog_vision.storage import http

    async def run():
        # A private session state, so nothing carries over between batches.
        saved = http._state["clients"]
        http._state["clients"] = {}
        try:
            return await http._fetch_all(urls, opts)
        finally:
            for c in http._state["clients"].values():
                await c.session.close()
            http._state["clients"] = saved

    return asyncio.run(run())


def serve(conn, body: bytes, cert: tuple[str, str] | None) -> None:
    """The image server in its own process, so its threads do not share the client's GIL."""
    from httpfaults import FaultServer, server_ssl_context

    with FaultServer({"img": body}, ssl_context=server_ssl_context(*cert) if cert else None) as server:
        conn.send(server.base)
        while conn.recv() == "ports":  # the client asks for the connections seen so far
            conn.send(set(server.ports))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--urls", type=int, default=512)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--kib", type=int, default=20, help="body size of each image")
    args = ap.parse_args()

    from catalog_vision.storage import http, http_options
    from httpfaults import self_signed

    body = os.urandom(args.kib * 1024)
    tmp = tempfile.mkdtemp()
    ca, key = self_signed(tmp)
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {args.urls} URLs x {args.kib} KiB a batch, median of {args.batches} batches")
    table = []
    for scheme, cert in (("http", None), ("https", (ca, key))):
        parent, child = mp.Pipe()
        proc = mp.get_context("spawn").Process(target=serve, args=(child, body, cert), daemon=True)
        proc.start()
        base = parent.recv()
        opts = http_options.HttpOptions(timeout=60, ca_file=ca if cert else None)
        urls = [f"{base}/ok/img?i={i}" for i in range(args.urls)]
        for name, fetch in (("loop thread", http.fetch_many), ("asyncio.run", fresh_loop)):
            fetch(urls[:8], opts)  # warm: imports, the thread
            times, conns = [], []
            for _ in range(args.batches):
                parent.send("ports")
                seen = parent.recv()
                t0 = time.perf_counter()
                got = fetch(urls, opts)
                times.append(time.perf_counter() - t0)
                parent.send("ports")
                conns.append(len(parent.recv() - seen))
                assert all(isinstance(g, bytes) and len(g) == len(body) for g in got), "a fetch failed"
            med = statistics.median(times)
            print(f"{scheme:5s}  {name:12s}  {med * 1000:7.1f} ms/batch  ({args.urls / med:6.0f} URLs/s)  new connections per batch: {statistics.median(conns):.0f}")
            table.append([scheme, name, f"{med * 1000:.1f}", f"{args.urls / med:,.0f}", f"{statistics.median(conns):.0f}"])
        parent.send("stop")
        proc.join(10)
    results_file.save("http_fetch", "python bench/http_fetch.py " + " ".join(sys.argv[1:]), ["scheme", "event loop", "ms per batch", "URLs/s", "new connections per batch"],
                      table, [f"{args.urls} URLs x {args.kib} KiB a batch, median of {args.batches} batches, loopback server in another process"], align="llrrr")


if __name__ == "__main__":
    main()
