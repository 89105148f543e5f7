"""Where Serve's overhead at concurrency 1 goes: one client, one request at a time, against variants
of the same application deployed one after another in the same run, beside the direct in-process call.

    python bench/serve_overhead.py --checkpoint data/output/model [--requests 300] [--rounds 2]

Rows (p50 of --requests sequential requests per variant and round, the rounds interleaved so drift
in the machine's load hits every variant alike):

* direct: decode + ``Predictor.predict_pixels`` of one image in this process;
* ``GET /v2/health/live``: a route that does nothing: HTTP proxy -> replica -> back (Serve's transport);
* ``POST /classify`` 1 image: the full path, with dynamic batching on (serve.max_batch_size and
  batch_wait_timeout_s from the config) and off (max_batch_size=1), and with Serve's per-request
  access log on and off (``logging_config.enable_access_log``).

Only ratios from one run mean anything on a shared machine: the load average is printed per row.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
import results as results_file  # noqa: E402

VARIANTS = {
    "batching on, access log on": [],
    "batching on, access log off": ["serve.access_log=false"],
    "batching off, access log on": ["serve.max_batch_size=1", "serve.admission_limit=null"],
    "batching off, access log off": ["serve.max_batch_size=1", "serve.admission_limit=null", "serve.access_log=false"],
}


def p50(send, n: int) -> float:
    for _ in range(20):
        send()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        send()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    # Serve kills an HTTP proxy not ready within 5 s; on a loaded 2-core machine starting one can take longer.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    import ray
    from ray import serve

    from conftest import FMNIST, free_port, make_cfg

    from catalog_vision.catalogs.fashion_mnist import load_fashion_mnist
    from catalog_vision.ingest.images import decode, encode_png
    from catalog_vision.infer.predictor import Predictor
    from catalog_vision.serve import build_app

    x, _ = load_fashion_mnist(str(FMNIST))["test"]
    pngs = [encode_png(x[i]) for i in range(64)]
    from catalog_vision.serve.run import set_ingress

    set_ingress(make_cfg(*args.overrides)["serve"], None)  # serve.ingress: read by Serve when Ray starts
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    s = requests.Session()
    counter = iter(range(10**9))
    base = make_cfg(f"predictor.checkpoint={args.checkpoint}", "serve.predictions.write=false", *args.overrides)
    p = Predictor(args.checkpoint, device=base["predictor"]["device"], dtype=base["predictor"]["dtype"], num_threads=base["serve"]["threads_per_replica"])

    def direct():
        p.predict_pixels(np.stack([decode(pngs[next(counter) % len(pngs)], p.spec)]))

    def live():
        assert s.get(f"{url}/v2/health/live", timeout=30).status_code == 200

    def classify():
        r = s.post(f"{url}/classify", data=pngs[next(counter) % len(pngs)], headers={"Content-Type": "image/png"}, timeout=30)
        assert r.status_code == 200

    sv = base["serve"]
    print(f"# {args.checkpoint}; batch_wait_timeout_s={sv['batch_wait_timeout_s']}, dtype={base['predictor']['dtype']}; {args.requests} requests per cell")
    print("| round | variant | route | p50 ms | vs direct | load avg |")
    print("|---:|---|---|---:|---:|---:|")
    rows: dict[tuple[str, str], list[float]] = {}
    for rnd in range(1, args.rounds + 1):
        d = p50(direct, args.requests)
        rows.setdefault(("direct", "decode + predict_pixels"), []).append(d)
        print(f"| {rnd} | direct (in process) | decode + predict_pixels | {d:.2f} | 1.0x | {os.getloadavg()[0]:.1f} |", flush=True)
        for name, extra in VARIANTS.items():
            cfg = make_cfg(f"predictor.checkpoint={args.checkpoint}", "serve.predictions.write=false", *args.overrides, *extra)
            serve.run(build_app(cfg), name=cfg["serve"]["model_name"], route_prefix="/")
            for route, send in (("GET /v2/health/live", live), ("POST /classify", classify)):
                v = p50(send, args.requests)
                rows.setdefault((name, route), []).append(v)
                print(f"| {rnd} | {name} | {route} | {v:.2f} | {v / d:.1f}x | {os.getloadavg()[0]:.1f} |", flush=True)
    print("\nmedian over rounds (ms): " + "; ".join(f"{n} {r}: {np.median(v):.2f}" for (n, r), v in rows.items()))
    save(rows, args, sv, base)
    serve.shutdown()
    ray.shutdown()


def save(rows: dict, args, sv: dict, base: dict) -> None:
    """One row per variant and route: the median over rounds, its ratio to the direct call's, and each round's p50."""
    direct = float(np.median(rows[("direct", "decode + predict_pixels")]))
    columns = ["variant", "route", "p50 ms (median of rounds)", "x direct", "p50 ms per round"]
    table = [[name, route, f"{np.median(v):.2f}", f"{np.median(v) / direct:.1f}", " / ".join(f"{x:.2f}" for x in v)] for (name, route), v in rows.items()]
    notes = [f"One client, one request at a time; {args.requests} requests per variant and round, {args.rounds} rounds interleaved; "
             f"serve.max_batch_size={sv['max_batch_size']}, batch_wait_timeout_s={sv['batch_wait_timeout_s']}, dtype={base['predictor']['dtype']}, "
             f"serve.ingress={sv['ingress']}."]
    name = "serve_overhead" if sv["ingress"] == "haproxy" else f"serve_overhead-{sv['ingress']}"
    results_file.save(name, "python bench/serve_overhead.py " + " ".join(sys.argv[1:]), columns, table, notes, align="llrrl")


if __name__ == "__main__":
    main()
