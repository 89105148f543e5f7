"""Similarity search at catalog scale: the project's index against exact search and other libraries.

    python bench/search.py --table data/output/predictions/<model_id>/<catalog_id>      # 1,000,000 vectors
    python bench/search.py --table ... --vectors 100000 --libs all                       # every library, smaller

Vectors: the table's real embeddings (a backfill's, error rows out) first, then copies of them
with Gaussian noise, re-normalised, up to ``--vectors``. The noise is set so a copy is as similar to
its source as a real embedding is to its 10th nearest real neighbour (median over a sample): a
copy is a plausible new image, neither a duplicate nor a random vector. Queries are further such
copies (not in the index). Ground truth: faiss ``IndexFlatIP`` (exact inner product = cosine),
also the plain baseline, and checked against the README's DuckDB query on a few queries.

Columns: build s (2 threads: train + add, or the graph); B/vector (the serialised index / vectors);
recall@k against exact; p50/p99 ms of one query per call on 1 thread (a request's latency);
queries/s for all queries in one call on 2 threads. Timings are noisy on a shared machine: the
load average is printed beside them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

import results as results_file  # noqa: E402
from catalog_vision.search import ann  # noqa: E402

COLUMNS = ["index", "build s", "B/vector", "recall@{k}", "p50 ms", "p99 ms", "queries/s", "load"]
ROWS: list[list[str]] = []  # every printed row, for the result file
NOTES: list[str] = []


def real_embeddings(table: str) -> np.ndarray:
    import pyarrow.compute as pc

    from catalog_vision.backfill.query import read_predictions

    t = read_predictions(table, columns=["embedding", "error"])
    t = t.filter(pc.and_(pc.is_null(t["error"]), pc.is_valid(t["embedding"])))
    emb = t.column("embedding").combine_chunks()
    return emb.flatten().to_numpy().reshape(len(emb), emb.type.list_size).astype(np.float32)


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def noise_sigma(real: np.ndarray, rng, sample: int = 1000) -> tuple[float, float]:
    """(sigma, c): c = median cosine of a real embedding to its 10th nearest real neighbour; a copy
    with noise sigma * N(0, I/D) has expected cosine 1/sqrt(1 + sigma^2) = c to its source."""
    import faiss

    flat = faiss.IndexFlatIP(real.shape[1])
    flat.add(real)
    scores, _ = flat.search(real[rng.choice(len(real), min(sample, len(real)), replace=False)], 11)
    c = float(np.median(scores[:, 10]))
    return float(np.sqrt(1 / c**2 - 1)), c


def noisy(real: np.ndarray, idx: np.ndarray, sigma: float, rng) -> np.ndarray:
    base = real[idx]
    return normalise(base + sigma * rng.standard_normal(base.shape, dtype=np.float32) / np.sqrt(base.shape[1])).astype(np.float32)


def tile(real: np.ndarray, n: int, sigma: float, rng, chunk: int = 100_000) -> np.ndarray:
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    m = min(n, len(real))
    out[:m] = real[:m]
    for i in range(m, n, chunk):
        j = min(n, i + chunk)
        out[i:j] = noisy(real, np.arange(i, j) % len(real), sigma, rng)
    return out


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def measure(name: str, build, search_one, search_many, size_bytes, queries: np.ndarray, truth: np.ndarray, k: int, latency_queries: int, threads: int) -> dict:
    """One row: build (``threads``), size, recall@k, 1-thread latency per query, ``threads`` throughput."""
    set_threads(threads)
    index, build_s = timed(build)
    ids, batch_s = timed(lambda: search_many(index, queries, k))
    set_threads(1)
    lat = []
    for q in queries[:latency_queries]:
        t = time.perf_counter()
        search_one(index, q[None], k)
        lat.append((time.perf_counter() - t) * 1000)
    set_threads(threads)
    recall = np.mean([len(set(a[a >= 0]) & set(b)) / k for a, b in zip(np.asarray(ids), truth)])
    row = {"index": name, "build_s": build_s, "bytes_per_vector": size_bytes(index) / index_size(index), "recall": recall,
           "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)), "qps": len(queries) / batch_s, "load": os.getloadavg()[0]}
    print_row(row)
    return row, index


def index_size(index) -> int:
    """Vectors held (faiss: ntotal; usearch: len; hnswlib: element count)."""
    for get in (lambda i: i.ntotal, lambda i: len(i), lambda i: i.get_current_count()):
        try:
            return int(get(index))
        except (AttributeError, TypeError):
            continue
    raise TypeError(f"cannot count the vectors of {type(index).__name__}")


def set_threads(n: int) -> None:
    import faiss

    faiss.omp_set_num_threads(n)


def faiss_size(index) -> int:
    return len(ann.serialize(index))


def faiss_factory(xb: np.ndarray, spec: str, ef_search: int | None = None, nprobe: int | None = None):
    import faiss

    def build():
        index = faiss.index_factory(xb.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:  # a sample of at most 256k rows (the project's index: 64 per cell, 4096 cells at 1M)
            index.train(xb[np.random.default_rng(0).choice(len(xb), min(len(xb), 256 * 1024), replace=False)])
        index.add(xb)
        if ef_search:
            index.hnsw.efSearch = ef_search
        if nprobe:
            faiss.extract_index_ivf(index).nprobe = nprobe
        return index

    return build


def faiss_search_ours(nprobe: int):
    return lambda index, q, k: ann.search(index, q, k, nprobe)[1]


def faiss_search(index, q, k):
    return index.search(q, k)[1]


def candidates(xb: np.ndarray, libs: set[str], nprobe: int, k: int) -> list[tuple]:
    """(name, build, search_one, search_many, size) per library and setting."""
    d = xb.shape[1]
    out = []
    if "ivf" in libs or "all" in libs:
        params = ann.IndexParams(nprobe=nprobe)
        ours = lambda index, q, k: ann.search(index, q, k, params.nprobe)[1]  # noqa: E731
        out.append((f"catalog-vision: faiss IVF{params.cells(len(xb))},SQfp16 nprobe={nprobe}", lambda: ann.build(xb, params), ours, ours, faiss_size))
    if "all" in libs or "faiss" in libs:
        nl = ann.IndexParams().cells(len(xb))
        flat = ann.IndexParams(encoding="Flat", nprobe=nprobe)  # float32 codes: where the float16 codes' recall ceiling comes from
        out.append((f"faiss IVF{nl},Flat nprobe={nprobe}", lambda: ann.build(xb, flat), faiss_search_ours(nprobe), faiss_search_ours(nprobe), faiss_size))
        out.append((f"faiss IVF{nl},SQ8 nprobe={nprobe}", faiss_factory(xb, f"IVF{nl},SQ8", nprobe=nprobe), faiss_search, faiss_search, faiss_size))
        pq = f"IVF{nl},PQ{d // 4}"
        out.append((f"faiss {pq} nprobe={nprobe}", faiss_factory(xb, pq, nprobe=nprobe), faiss_search, faiss_search, faiss_size))
        out.append(("faiss HNSW32,Flat efSearch=64", faiss_factory(xb, "HNSW32,Flat", ef_search=64), faiss_search, faiss_search, faiss_size))
        out.append(("faiss HNSW16,SQ8 efSearch=64", faiss_factory(xb, "HNSW16,SQ8", ef_search=64), faiss_search, faiss_search, faiss_size))
    if "all" in libs or "usearch" in libs:
        out += usearch_candidates(xb)
    if "all" in libs or "hnswlib" in libs:
        out += hnswlib_candidates(xb)
    return out


def file_size(save):
    def size(index) -> int:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "index")
            save(index, path)
            return os.path.getsize(path)

    return size


def usearch_candidates(xb: np.ndarray) -> list[tuple]:
    try:
        from usearch.index import Index
    except ImportError:
        print("(usearch not installed: pip install -e '.[bench]')")
        return []
    rows = []
    for dtype in ("f16", "i8"):
        def build(dtype=dtype):
            index = Index(ndim=xb.shape[1], metric="ip", dtype=dtype, connectivity=16, expansion_add=128, expansion_search=64)
            index.add(np.arange(len(xb)), xb, threads=2)
            return index

        def search(index, q, k):
            return np.atleast_2d(index.search(q, k, threads=1 if len(q) == 1 else 2).keys).astype(np.int64)

        rows.append((f"usearch {dtype} HNSW M=16 ef=64", build, search, search, file_size(lambda index, path: index.save(path))))
    return rows


def hnswlib_candidates(xb: np.ndarray) -> list[tuple]:
    try:
        import hnswlib
    except ImportError:
        print("(hnswlib not installed: pip install -e '.[bench]')")
        return []

    def build():
        index = hnswlib.Index(space="ip", dim=xb.shape[1])
        index.init_index(max_elements=len(xb), M=16, ef_construction=128, random_seed=0)
        index.set_num_threads(2)
        index.add_items(xb, np.arange(len(xb)))
        index.set_ef(64)
        return index

    def search(index, q, k):
        index.set_num_threads(1 if len(q) == 1 else 2)
        return index.knn_query(q, k)[0].astype(np.int64)

    return [("hnswlib float32 HNSW M=16 ef=64", build, search, search, file_size(lambda index, path: index.save_index(path)))]


def duckdb_check(xb: np.ndarray, queries: np.ndarray, truth: np.ndarray, k: int, n: int) -> dict:
    """The README's exact query (array_cosine_similarity over FLOAT[D]) on ``n`` queries."""
    import duckdb
    import pyarrow as pa

    d = xb.shape[1]
    con = duckdb.connect()
    con.register("emb", pa.table({"image_id": pa.array(np.arange(len(xb))), "embedding": pa.FixedSizeListArray.from_arrays(pa.array(xb.reshape(-1)), d)}))
    lat, hits = [], 0
    for q, t in zip(queries[:n], truth[:n]):
        t0 = time.perf_counter()
        sql = f"SELECT image_id FROM emb ORDER BY array_cosine_similarity(embedding::FLOAT[{d}], $q::FLOAT[{d}]) DESC LIMIT {k}"
        got = con.execute(sql, {"q": q.tolist()}).fetchall()
        lat.append((time.perf_counter() - t0) * 1000)
        hits += len({g[0] for g in got} & set(t))
    row = {"index": f"DuckDB exact (README query, {n} queries)", "build_s": 0.0, "bytes_per_vector": 4 * d, "recall": hits / (k * n),
           "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)), "qps": 1000 / np.mean(lat), "load": os.getloadavg()[0]}
    print_row(row)
    return row


def print_row(r: dict) -> None:
    cells = [r["index"], f"{r['build_s']:.1f}", f"{r['bytes_per_vector']:.0f}", f"{r['recall']:.4f}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}",
             f"{r['qps']:,.0f}", f"{r['load']:.1f}"]
    ROWS.append(cells)
    print("| " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", required=True, help="a model's predictions table (or a run folder) with real embeddings")
    ap.add_argument("--vectors", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--latency-queries", type=int, default=1000, help="single-query calls timed for p50/p99")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nprobe", type=int, default=ann.IndexParams().nprobe)
    ap.add_argument("--sweep", default="8,16,32,64,128", help="nprobe values for the project's index ('' = none)")
    ap.add_argument("--libs", default="ivf", help="ivf (the project's index) | faiss | usearch | hnswlib | all, comma-separated")
    ap.add_argument("--duckdb-queries", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="search", help="the result file: bench/results/NAME.json")
    ap.add_argument("--job", metavar="DIR", help="also time the index job end to end: write the vectors as a predictions table under DIR "
                    "(100,000-row Parquet files), build (Ray Data read + one row per image + train + add + write), then add one more file")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    load0 = os.getloadavg()
    real = real_embeddings(args.table)
    sigma, c = noise_sigma(real, rng)
    xb, gen_s = timed(lambda: tile(real, args.vectors, sigma, rng))
    queries = noisy(real, rng.choice(len(real), args.queries), sigma, rng)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"# bench/search.py {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {socket.gethostname()} ({os.cpu_count()} CPUs, {cpu}); "
          f"load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    data = (f"{len(xb):,} vectors of dimension {xb.shape[1]}: {min(len(real), len(xb)):,} real embeddings + noisy copies "
            f"(sigma {sigma:.3f}: copy-to-source cosine ~{c:.3f}, the median real 10th-neighbour cosine); "
            f"{len(queries)} held-out noisy queries, k={args.k}, {args.threads} threads (latency: 1 thread, one query per call)")
    print(f"# {data}; real embeddings from {args.table}; made in {gen_s:.1f} s")
    NOTES.append(data + f"; load average {load0[0]:.2f} at the start, the load column when each row finished.")
    columns = [c.format(k=args.k) for c in COLUMNS]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|---|")
    truth = exact_baseline(xb, queries, args)
    if args.duckdb_queries:
        duckdb_check(xb, queries, truth, args.k, args.duckdb_queries)
    libs = set(args.libs.split(","))
    ours = None
    for name, build, one, many, size in candidates(xb, libs, args.nprobe, args.k):
        _, index = measure(name, build, one, many, size, queries, truth, args.k, args.latency_queries, args.threads)
        ours = index if name.startswith("catalog-vision") else ours
        del index
    if args.sweep and ours is not None:
        sweep(ours, queries, truth, args)
    if args.job:
        job(xb, args)
    load1 = os.getloadavg()
    print(f"# load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    results_file.save(args.name, "python bench/search.py " + " ".join(sys.argv[1:]), columns, ROWS, NOTES)


def write_table(xb: np.ndarray, folder: str, run_id: str, first: int, rows_per_file: int = 100_000) -> None:
    """``xb`` as a predictions table's run folder: the columns the index reads, backfill types."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    labels = np.array(["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"])
    for i in range(0, len(xb), rows_per_file):
        part = xb[i : i + rows_per_file]
        ids = [f"img-{first + i + j:08d}" for j in range(len(part))]
        pq.write_table(pa.table({
            "image_id": pa.array(ids), "uri": pa.array([f"s3://bucket/images/{x}.jpg" for x in ids]),
            "label": pa.array(labels[(first + i + np.arange(len(part))) % 10]),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1)), part.shape[1]),
            "run_id": pa.array([run_id] * len(part)), "error": pa.array([None] * len(part), pa.string()),
        }), os.path.join(folder, f"part-{first + i:08d}.parquet"), compression="zstd")


def job(xb: np.ndarray, args) -> None:
    """``search.build.build`` (what jobs/index.py runs) on the vectors as a table: full, then incremental."""
    import ray
    import ray.data

    from catalog_vision.search.build import build

    from catalog_vision.runtime import quiet_ray_logs

    table, out = os.path.join(args.job, "table"), os.path.join(args.job, "index")
    extra = max(1, len(xb) // 100)
    write_table(xb[:-extra], os.path.join(table, "20260101T000000-aaaaaa"), "20260101T000000-aaaaaa", 0)
    quiet_ray_logs(None)  # Ray Data's plan and progress INFO lines off, as in the jobs
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    set_threads(args.threads)
    params = ann.IndexParams(nprobe=args.nprobe)
    for label in ("full", "incremental"):
        if label == "incremental":
            write_table(xb[-extra:], os.path.join(table, "20260102T000000-bbbbbb"), "20260102T000000-bbbbbb", len(xb) - extra)
        t = time.perf_counter()
        m = build(table, out, params, model_id="bench", catalog="bench")
        b, mib = m["build"], m["index_bytes"] / 2**20
        why = f" ({b['reason']})" if b.get("reason") else ""
        line = (f"index job, {b['mode']} build{why}: {b['added_rows']:,} rows from {b['new_files']} file(s) in {time.perf_counter() - t:.1f} s "
                f"(Ray Data read, one row per image, faiss, write; {m['rows']:,} images, {mib:.0f} MiB index); load {os.getloadavg()[0]:.1f}")
        print("# " + line)
        NOTES.append(line)
    ray.shutdown()


def exact_baseline(xb: np.ndarray, queries: np.ndarray, args) -> np.ndarray:
    """faiss IndexFlatIP: the ground truth, and the plain baseline's row."""
    set_threads(args.threads)
    index, build_s = timed(faiss_factory(xb, "Flat"))
    truth, batch_s = timed(lambda: index.search(queries, args.k)[1])
    set_threads(1)
    lat = []
    for q in queries[: min(args.latency_queries, 200)]:
        t = time.perf_counter()
        index.search(q[None], args.k)
        lat.append((time.perf_counter() - t) * 1000)
    set_threads(args.threads)
    print_row({"index": "faiss IndexFlatIP (exact, baseline)", "build_s": build_s, "bytes_per_vector": faiss_size(index) / len(xb), "recall": 1.0,
               "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)), "qps": len(queries) / batch_s, "load": os.getloadavg()[0]})
    return truth


def sweep(index, queries, truth, args) -> None:
    """Recall and speed of the project's index against nprobe (a search setting: the same build)."""
    for nprobe in [int(x) for x in args.sweep.split(",")]:
        name = f"catalog-vision IVF{ann.nlist_of(index)},SQfp16 nprobe={nprobe} (same build)"
        ours = lambda index_, q, k, n=nprobe: ann.search(index_, q, k, n)[1]  # noqa: E731
        measure(name, lambda: index, ours, ours, faiss_size, queries, truth, args.k, min(args.latency_queries, 300), args.threads)


if __name__ == "__main__":
    main()
