"""Online serving load: closed-loop HTTP clients against the Serve app on 127.0.0.1.

    python bench/serve.py --checkpoint data/output/model            # any checkpoint directory
    python bench/serve.py --checkpoint … --seconds 10 serve.max_batch_size=64   # + Hydra overrides

Rows: single-image ``POST /classify`` at concurrency 1, 8 and 32, and 64-image v2 ``infer``
requests at concurrency 1 and 4; each row with dynamic batching on (``serve.max_batch_size`` from
the config) and off (``max_batch_size=1``). Each row runs ``--seconds`` (bounded also by
``--max-requests``) and prints requests/s, images/s, p50/p95/p99 latency, the mean batch size the
replica formed (``GET /stats``) and the error count. Then the Serve overhead at concurrency 1:
median HTTP latency of one image minus the median of decode + ``Predictor.predict_pixels`` on the
same image in this process.

The clients are Python threads on the same 2-core machine as the server: they take CPU from it, so
the figures are a floor for what a separate client host would see.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
import results as results_file  # noqa: E402


def closed_loop(send, concurrency: int, seconds: float, max_requests: int) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client():
        nonlocal errors
        s = requests.Session()
        while time.perf_counter() < stop_at:
            with lock:
                if len(latencies) + errors >= max_requests:
                    return
            t = time.perf_counter()
            ok = send(s)
            dt = time.perf_counter() - t
            with lock:
                if ok:
                    latencies.append(dt)
                else:
                    errors += 1

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(client) for _ in range(concurrency)]:
            f.result()
    return latencies, errors, time.perf_counter() - t0


def run_backfill(checkpoint: str, n: int, overrides: list[str]) -> float:
    """images/s of a backfill of ``n`` Fashion-MNIST PNGs with ``checkpoint`` (the predictor overrides
    apply: same dtype as the service), as the backfill reports it."""
    import tempfile

    import backfill as bench_backfill
    from conftest import FMNIST, make_cfg

    from catalog_vision.backfill.run import backfill

    with tempfile.TemporaryDirectory(prefix="cvserve-backfill-") as d:
        manifest = bench_backfill.build_catalog(Path(d) / "catalog", n, "small", str(FMNIST))
        predictor = [o for o in overrides if o.startswith("predictor.")]
        out = backfill(make_cfg(f"paths.root={d}", f"data.manifest={manifest}", "data.split=null", f"predictor.checkpoint={checkpoint}", *predictor))
    print(f"backfill: {out['counts']['predicted']:,} images, {out['images_per_s']:,.0f} images/s, dtype {out['predictor']['resolved_dtype']}", flush=True)
    return float(out["images_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--max-requests", type=int, default=20_000)
    ap.add_argument("--backfill-images", type=int, default=70_000,
                    help="the backfill the 64-image rows are compared with: this many Fashion-MNIST PNGs, same checkpoint and dtype, "
                         "on the same Ray before Serve starts (0: skip)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import ray
    from ray import serve

    from conftest import FMNIST, free_port, make_cfg

    from catalog_vision.catalogs.fashion_mnist import load_fashion_mnist
    from catalog_vision.ingest.images import decode, encode_png
    from catalog_vision.infer.predictor import Predictor
    from catalog_vision.serve import build_app

    x, _ = load_fashion_mnist(str(FMNIST))["test"]
    pngs = [encode_png(x[i]) for i in range(256)]
    from catalog_vision.runtime import workers_at_driver_priority
    from catalog_vision.serve.run import set_ingress

    set_ingress(make_cfg(*args.overrides)["serve"], None)  # serve.ingress: read by Serve when Ray starts
    workers_at_driver_priority()  # as jobs/serve.py's own Ray: replicas not 15 nice levels below the clients
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    backfill_rate = run_backfill(args.checkpoint, args.backfill_images, args.overrides) if args.backfill_images else None
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    base = make_cfg(f"predictor.checkpoint={args.checkpoint}", "serve.predictions.write=false", *args.overrides)
    batch = int(base["serve"]["max_batch_size"])
    settings = (f"serve.max_batch_size={batch}, batch_wait_timeout_s={base['serve']['batch_wait_timeout_s']}, "
                f"max_ongoing_requests={base['serve']['max_ongoing_requests']}, replicas={base['serve']['num_replicas']}, predictor.dtype={base['predictor']['dtype']}")
    print(f"# checkpoint {args.checkpoint}; {settings}")
    columns = ["batching", "request", "concurrency", "requests", "req/s", "images/s", "p50 ms", "p95 ms", "p99 ms", "mean batch", "errors"]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    table = []
    rates64: dict[int, float] = {}  # images/s of the 64-image rows with batching on, by concurrency
    counter = iter(range(10**9))

    def one(s):
        r = s.post(f"{url}/classify", data=pngs[next(counter) % len(pngs)], headers={"Content-Type": "image/png"}, timeout=30)
        return r.status_code == 200

    body64 = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [64], "data": [base64.b64encode(b).decode() for b in pngs[:64]]}],
        "outputs": [{"name": "label"}, {"name": "score"}],
    }

    def sixty_four(s):
        r = s.post(f"{url}/v2/models/{base['serve']['model_name']}/infer", json=body64, timeout=60)
        return r.status_code == 200

    single_c1 = None
    for mode, max_batch in (("on", batch), ("off", 1)):
        cfg = make_cfg(f"predictor.checkpoint={args.checkpoint}", "serve.predictions.write=false", *args.overrides, f"serve.max_batch_size={max_batch}")
        serve.run(build_app(cfg), name=cfg["serve"]["model_name"], route_prefix="/")
        for name, send, images, concurrency in (
            ("1 image", one, 1, 1),
            ("1 image", one, 1, 8),
            ("1 image", one, 1, 32),
            ("64 images", sixty_four, 64, 1),
            ("64 images", sixty_four, 64, 4),
        ):
            closed_loop(send, concurrency, 1.0, 10**6)  # warm-up
            before = requests.get(f"{url}/stats", timeout=30).json()
            lat, errors, wall = closed_loop(send, concurrency, args.seconds, args.max_requests)
            after = requests.get(f"{url}/stats", timeout=30).json()
            mean_batch = (after["images"] - before["images"]) / max(1, after["batches"] - before["batches"])
            p50, p95, p99 = (np.percentile(lat, q) * 1e3 for q in (50, 95, 99)) if lat else (float("nan"),) * 3
            if mode == "on" and images == 64:
                rates64[concurrency] = len(lat) * images / wall
            table.append([mode, name, str(concurrency), f"{len(lat):,}", f"{len(lat) / wall:,.0f}", f"{len(lat) * images / wall:,.0f}",
                          f"{p50:.1f}", f"{p95:.1f}", f"{p99:.1f}", f"{mean_batch:.1f}", str(errors)])
            print("| " + " | ".join(table[-1]) + " |", flush=True)
            if mode == "on" and name == "1 image" and concurrency == 1:
                single_c1 = p50

    # Serve overhead at concurrency 1: the same image, decoded and predicted in this process.
    p = Predictor(args.checkpoint, device=base["predictor"]["device"], dtype=base["predictor"]["dtype"], num_threads=base["serve"]["threads_per_replica"])
    times = []
    for i in range(300):
        t = time.perf_counter()
        p.predict_pixels(np.stack([decode(pngs[i % len(pngs)], p.spec)]))
        times.append(time.perf_counter() - t)
    direct = float(np.median(times[50:])) * 1e3
    overhead = (f"direct decode + predict_pixels, 1 image: p50 {direct:.2f} ms; over HTTP (batching on, concurrency 1): p50 {single_c1:.2f} ms; "
                f"Serve overhead {single_c1 - direct:.2f} ms")
    print("\n" + overhead)
    ingress = base["serve"]["ingress"]
    notes = [f"{settings}, serve.ingress={ingress}; {args.seconds:g} s per row after a 1 s warm-up; clients are threads in the benchmark's process, on the server's host.", overhead]
    if backfill_rate:
        rates = ", ".join(f"concurrency {c}: {r:,.0f} images/s = {r / backfill_rate:.2f}x" for c, r in rates64.items())
        notes.append(f"backfill of {args.backfill_images:,} PNGs, same checkpoint and dtype, same Ray (before Serve started): {backfill_rate:,.0f} images/s "
                     f"(its _run.json images_per_s); 64-image requests with batching on, {rates} of it")
        print(notes[-1])
    results_file.save("serve" if ingress == "haproxy" else f"serve-{ingress}", "python bench/serve.py " + " ".join(sys.argv[1:]), columns, table, notes, align="llrrrrrrrrr")
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
