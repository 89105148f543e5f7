"""Driver memory for planning and counting a backfill against a model's history.

    python bench/driver_memory.py                          # 1M and 10M already-committed ids
    python bench/driver_memory.py --sizes 100000,1000000   # quicker
    python bench/driver_memory.py --code /path/to/older/checkout/src   # the same measurement on older code

For each size N it builds (once, under --root) a synthetic catalog of N + --new rows (realistic id
and URI lengths: ``s3://`` URIs in a local Parquet manifest, 10 classes) and a model table holding
N committed rows in files of 100,000 (the columns a backfill writes, without the embedding, which
planning and counting never read). Then, in a fresh process per size, it runs what the backfill's
driver runs: ``plan_run`` (read the catalog, check the URI policy, read every committed id, take
the rows still to do) and ``count_files`` (read back ids and errors of every committed file for the
end-of-run counts), and prints the driver's peak RSS above its state after imports, the peak of
Python's own heap during the work (tracemalloc: Arrow's buffers are not in it, Python objects per
image would be), and the per-image cost and the catalog size at which a head node runs out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import results as results_file  # noqa: E402

ROWS_PER_FILE = 100_000
GIB = 2**30


def build(root: Path, n: int, new: int) -> tuple[str, str]:
    """Manifest with n + new rows, and a model table with the first n of them committed."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    manifest, table = root / "catalog" / "manifest.parquet", root / "predictions" / "model" / "catalog"
    done = root / ".built"
    if done.exists():
        return str(manifest), str(table)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    classes = pa.array(["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"])
    total = n + new
    with pq.ParquetWriter(manifest, pa.schema([("image_id", pa.string()), ("uri", pa.string()), ("label", pa.string()), ("split", pa.string())])) as w:
        for lo in range(0, total, 1_000_000):
            i = np.arange(lo, min(total, lo + 1_000_000))
            ids = pc.binary_join_element_wise("SKU", pa.array(np.char.zfill(i.astype(str), 10)), "-front", "")
            uris = pc.binary_join_element_wise("s3://shop-images/catalog/2026/11/", ids, ".jpg", "")
            w.write_table(pa.table({"image_id": ids, "uri": uris, "label": classes.take(pa.array(i % 10)),
                                    "split": pa.array(np.where(i % 10 < 8, "train", "test"))}))
    run = table / "run-00000000T000000-synthetic"
    run.mkdir(parents=True, exist_ok=True)
    src = pq.ParquetFile(manifest)
    written, part = 0, 0
    for batch in src.iter_batches(batch_size=ROWS_PER_FILE, columns=["image_id", "uri", "label"]):
        k = min(batch.num_rows, n - written)
        if k <= 0:
            break
        b = pa.Table.from_batches([batch]).slice(0, k)
        err = pa.array([None] * k, pa.string())
        err = pc.if_else(pa.array(np.arange(written, written + k) % 1000 == 7), "NotAnImage: cannot identify image", err)
        pq.write_table(b.append_column("score", pa.array(np.full(k, 0.9, np.float32))).append_column("error", err),
                       run / f"part-{part:05d}.parquet", compression="zstd")
        written, part = written + k, part + 1
    done.touch()
    return str(manifest), str(table)


def measure(manifest: str, table: str) -> dict:
    """In this (fresh) process: what the driver holds while planning and counting."""
    import resource
    import tracemalloc

    import psutil
    import pyarrow as pa

    import pyarrow.compute as pc

    try:
        from catalog_vision.backfill.plan import count_files
        from catalog_vision.backfill.sink import committed_files, committed_ids
        from catalog_vision.ingest.catalog import catalog_table
    except ImportError:  # --code: a checkout from before the package layout (flat catalog_vision/*.py)
        from catalog_vision.data import catalog_table
        from catalog_vision.sink import committed_files, committed_ids

        try:
            from catalog_vision.plan import count_files
        except ImportError:  # code from before the planning module
            from catalog_vision.backfill import count_files

    def rss_peak() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    base = psutil.Process().memory_info().rss
    tracemalloc.start()
    out = {"rss_after_imports": base}
    t = time.perf_counter()
    # What plan_run does (spelled out so older code without plan_run can be measured the same way).
    rows = catalog_table({"manifest": manifest, "split": None})
    done = committed_ids(table)
    todo = rows.filter(pc.invert(pc.is_in(rows.column("image_id"), value_set=done)))
    out.update(plan_s=time.perf_counter() - t, plan_peak=rss_peak() - base, plan_py_peak=tracemalloc.get_traced_memory()[1],
               catalog=rows.num_rows, committed=len(done), todo=todo.num_rows, arrow_after_plan=pa.total_allocated_bytes())
    del done
    t = time.perf_counter()
    ids = rows.column("image_id").combine_chunks()
    counts = count_files(committed_files(table), restrict_to=ids)
    out.update(count_s=time.perf_counter() - t, peak=rss_peak() - base, py_peak=tracemalloc.get_traced_memory()[1], counted=counts["rows"],
               errors=counts["errors"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,10000000", help="already-committed ids per run")
    ap.add_argument("--new", type=int, default=10_000, help="catalog rows not yet committed (an incremental run)")
    ap.add_argument("--root", default="/tmp/cv-driver-memory", help="where the synthetic catalogs are built (kept for reruns)")
    ap.add_argument("--code", default=str(REPO / "src"), help="the catalog_vision source tree to measure")
    ap.add_argument("--head-gib", type=float, default=16.0)
    ap.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    for n in sizes:
        t = time.perf_counter()
        manifest, table = build(Path(args.root) / f"n{n}", n, args.new)
        print(f"[{n}] catalog and model table ready ({time.perf_counter() - t:.0f}s)", flush=True)
        env = {**os.environ, "PYTHONPATH": args.code}
        r = subprocess.run([sys.executable, __file__, "--measure", manifest, table], env=env, capture_output=True, text=True, check=False)
        if r.returncode:
            sys.exit(f"measurement for {n} failed:\n{r.stderr[-3000:]}")
        results.append((n, json.loads(r.stdout.strip().splitlines()[-1])))
    columns = ["committed ids", "catalog rows", "to do", "plan s", "count s", "plan peak MiB", "run peak MiB", "bytes/image", "Python heap peak MiB"]
    rows = []
    for n, r in results:
        assert r["counted"] == n and r["todo"] == args.new, "the synthetic table was not read back whole"
        rows.append([f"{r['committed']:,}", f"{r['catalog']:,}", f"{r['todo']:,}", f"{r['plan_s']:.1f}", f"{r['count_s']:.1f}",
                     f"{r['plan_peak'] / 2**20:,.0f}", f"{r['peak'] / 2**20:,.0f}", f"{r['peak'] / r['catalog']:.0f}", f"{r['py_peak'] / 2**20:.1f}"])
    print_table(columns, rows)
    (n0, r0), (n1, r1) = results[0], results[-1]
    slope = (r1["peak"] - r0["peak"]) / (r1["catalog"] - r0["catalog"]) if n1 > n0 else r1["peak"] / r1["catalog"]
    base = r1["rss_after_imports"]
    driver_only = (args.head_gib * GIB - base) / slope
    # A Ray head node also runs the GCS, raylet and dashboard (about 1 GiB here) and by default gives
    # 30% of its memory to the object store.
    with_ray = (0.7 * args.head_gib * GIB - 1 * GIB - base) / slope
    notes = [
        f"Per image (the slope between {n0:,} and {n1:,} committed ids): **{slope:.0f} bytes** of driver memory; the driver "
        f"uses {base / 2**20:.0f} MiB after its imports.",
        f"A {args.head_gib:.0f} GiB head node runs out at about **{driver_only / 1e6:.0f}M images** for the driver alone, "
        f"{with_ray / 1e6:.0f}M with Ray's default 30% object store and ~1 GiB of Ray processes beside it.",
    ]
    for line in notes:
        print(line.replace("**", ""))
    command = "python bench/driver_memory.py " + " ".join(sys.argv[1:])
    if args.code == str(REPO / "src"):
        results_file.save("driver_memory", command.strip(), columns, rows, notes)


def print_table(columns: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    print()
    for line in [columns, *rows]:
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths)))
    print()


if __name__ == "__main__":
    main()
