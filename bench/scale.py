"""Flat memory at scale: backfill throughput and peak memory of the whole local cluster at
10,000, 100,000 and 1,000,000 small images.

    python bench/scale.py                       # 10k, 100k, 1M (builds a 1M-file catalog once, ~4 GB)
    python bench/scale.py --sizes 10000,100000  # a quicker look
    python bench/scale.py --root /mnt/big/cvscale output.rows_per_file=50000   # + Hydra overrides

Each size runs in a fresh process that starts its own local Ray (driver, GCS, raylet, workers and
actors are all its descendants). A sampler in this process reads every descendant's memory once
a second and records the peak of the sum: PSS (proportional set size: shared pages such as the
object store and libtorch are split between the processes mapping them, so the sum is the real
total) and, for reference, the sum of RSS (which counts shared pages once per process).

The catalog is Fashion-MNIST's 70,000 images written as PNG files and repeated under new names up
to the largest size (1,000 files per folder); smaller sizes use the first N rows of its manifest.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import results as results_file  # noqa: E402


def _write_pngs(args):
    start, stop, root, source = args
    import numpy as np
    from PIL import Image

    from catalog_vision.catalogs import load_fashion_mnist

    x = np.concatenate([load_fashion_mnist(source)[s][0] for s in ("train", "test")])
    for i in range(start, stop):
        path = Path(root) / "images" / f"{i // 1000:04d}" / f"{i:07d}.png"
        if i % 1000 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            Image.fromarray(x[i % len(x)]).save(path, format="PNG", compress_level=1)
    return stop - start


def build(root: Path, n: int, source: str) -> None:
    """Write n PNG files and manifest-<n>.parquet (+ one for each smaller size on request)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from catalog_vision.catalogs import load_fashion_mnist

    done = root / f".built-{n}"
    if done.exists():
        return
    t = time.perf_counter()
    chunks = [(s, min(s + 10000, n), str(root), source) for s in range(0, n, 10000)]
    with mp.get_context("fork").Pool(os.cpu_count()) as pool:
        for k, _ in enumerate(pool.imap_unordered(_write_pngs, chunks), 1):
            if k % 10 == 0:
                print(f"  catalog: {k * 10000:,}/{n:,} files", flush=True)
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    import numpy as np

    y = np.concatenate([load_fashion_mnist(source)[s][1] for s in ("train", "test")])
    ids = [f"img-{i:07d}" for i in range(n)]
    uris = [str(root / "images" / f"{i // 1000:04d}" / f"{i:07d}.png") for i in range(n)]
    labels = [classes[int(y[i % len(y)])] for i in range(n)]
    pq.write_table(pa.table({"image_id": ids, "uri": uris, "label": labels}), root / "manifest.parquet")
    done.touch()
    print(f"  catalog of {n:,} files built in {time.perf_counter() - t:.0f}s", flush=True)


def prepare_cache(root: Path, n: int, mode: str) -> None:
    if mode == "cold":
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    elif mode == "warm":
        from concurrent.futures import ThreadPoolExecutor

        import pyarrow.parquet as pq

        t = time.perf_counter()
        uris = pq.read_table(root / "manifest.parquet", columns=["uri"]).column("uri").to_pylist()[:n]
        with ThreadPoolExecutor(16) as pool:
            total = sum(pool.map(lambda u: len(Path(u).read_bytes()), uris, chunksize=256))
        print(f"  page cache warmed with {n:,} files ({total / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f}s (not timed)", flush=True)


def run_one(n: int, root: Path, overrides: list[str], num_cpus: int) -> None:
    """Child process: a fresh local Ray, then one backfill of the first n catalog rows."""
    import pyarrow.parquet as pq
    import ray

    sys.path.insert(0, str(REPO / "bench"))
    from backfill import make_cfg, make_checkpoint  # bench/backfill.py

    from catalog_vision.backfill.run import backfill
    from catalog_vision.runtime import setup_logging

    setup_logging()
    work = root / f"run-{n}"
    shutil.rmtree(work, ignore_errors=True)  # a fresh output: every image is labeled
    manifest = work / "manifest.parquet"
    work.mkdir(parents=True, exist_ok=True)
    pq.write_table(pq.read_table(root / "manifest.parquet").slice(0, n), manifest)
    checkpoint, _ = make_checkpoint(work, "small")
    ray.init(num_cpus=num_cpus, include_dashboard=True, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = make_cfg(f"paths.root={work}", f"data.manifest={manifest}", "data.split=null", f"predictor.checkpoint={checkpoint}", f"paths.output={work}/output", *overrides)
    t = time.perf_counter()
    out = backfill(cfg)
    secs = time.perf_counter() - t
    print("RESULT " + json.dumps({"n": n, "seconds": secs, "counts": out["counts"], "timings": out["timings"], "images_per_s": out["images_per_s"]}), flush=True)
    ray.shutdown()


def smaps_rollup(pid: int) -> dict[str, int]:
    """Rss and Pss in bytes from /proc/<pid>/smaps_rollup (one pre-summed read, unlike smaps)."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss"):
                    out[key] = int(rest.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


class Sampler(threading.Thread):
    """Peak of the summed PSS and RSS over a process and all its descendants."""

    def __init__(self, pid: int, interval: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_pss = self.peak_rss = 0
        self.peak_procs = 0
        self.stop = threading.Event()

    def run(self):
        import psutil

        root = psutil.Process(self.pid)
        while not self.stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            pss = rss = 0
            for p in procs:
                got = smaps_rollup(p.pid)
                pss += got.get("Pss", 0)
                rss += got.get("Rss", 0)
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self.peak_procs = max(self.peak_procs, len(procs))
            self.stop.wait(self.interval)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--root", default="/tmp/cvscale", help="where the catalog and outputs go (~4.5 GB for 1M)")
    ap.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--num-cpus", type=int, default=6)
    ap.add_argument("--cache", choices=("warm", "cold", "asis"), default="warm",
                    help="page cache before each size: warm = read its files first (untimed; measures the pipeline), "
                    "cold = drop the cache (root; measures this disk too), asis = leave it")
    ap.add_argument("--run", type=int, help=argparse.SUPPRESS)  # child mode
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for the backfill")
    args = ap.parse_args()
    root = Path(args.root)
    if args.run:
        run_one(args.run, root, args.overrides, args.num_cpus)
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    root.mkdir(parents=True, exist_ok=True)
    build(root, max(sizes), args.source)
    rows = []
    for n in sizes:
        prepare_cache(root, n, args.cache)
        cmd = [sys.executable, __file__, "--root", str(root), "--num-cpus", str(args.num_cpus), "--run", str(n), *args.overrides]
        child = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sampler = Sampler(child.pid)
        sampler.start()
        result = None
        for line in child.stdout:
            if line.startswith("RESULT "):
                result = json.loads(line[7:])
            elif "backfill summary" in line or "Traceback" in line or "Error" in line:
                print(f"  [{n:,}] {line.rstrip()}", flush=True)
        child.wait()
        sampler.stop.set()
        sampler.join()
        if child.returncode or result is None:
            raise SystemExit(f"the {n:,}-image run failed (exit {child.returncode})")
        c = result["counts"]
        rows.append((n, result["seconds"], result["images_per_s"], sampler.peak_pss, sampler.peak_rss, sampler.peak_procs, c["model_rows"], c["model_distinct_image_ids"], c["files"]))
    base = rows[0][3]
    import torch

    columns = ["images", "seconds", "images/s", "peak memory (PSS sum)", "vs first", "RSS sum", "processes", "rows", "distinct ids", "files"]
    table = [[f"{n:,}", f"{secs:.1f}", f"{rate:,.1f}", f"{pss / 2**30:.2f} GiB", f"{pss / base:.2f}x", f"{rss / 2**30:.2f} GiB", str(procs),
              f"{rows_:,}", f"{distinct:,}", str(files)] for n, secs, rate, pss, rss, procs, rows_, distinct, files in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    print()
    for line in [columns, *table]:
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths)))
    notes = [f"torch {torch.__version__}; Ray num_cpus={args.num_cpus}; overrides {args.overrides or 'none'}; page cache: {args.cache}",
             "images/s counts the backfill's pipeline (after planning); seconds is the whole backfill() call"]
    print("\n".join(notes))
    results_file.save("scale", "python bench/scale.py " + " ".join(sys.argv[1:]), columns, table, notes)

if __name__ == "__main__":
    main()
