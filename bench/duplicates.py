"""Near-duplicate search at scale: time, and precision/recall against exact pairs on a sample.

    python bench/duplicates.py --predictions data/output/predictions/<model_id>/<catalog_id>
    python bench/duplicates.py --predictions ... --rows 200000 --nprobe 4 8

Data: the table's real embeddings (one row per image, errors skipped), and the same tiled to --rows
(1,000,000) with Gaussian noise: tile 0 is the real rows, each later tile is every real row plus
noise of --noise per dimension, re-normalised (expected cosine to its original about
1/sqrt(1 + D*noise^2)), so the large table keeps the real table's neighbourhoods, denser.

For each method the search runs over the whole table; its pairs with both ends in a random sample
of --sample rows are compared with the exact pairs among the sample (numpy, float64). Every pair a
method returns is re-scored exactly before the threshold, so precision is 1.0 by construction;
recall is what IVF can lose. The plain baseline in the same run is the exact search (faiss flat
range search, upper triangle) on --baseline-rows rows, with its time extrapolated quadratically
to the full table (marked "extrapolated").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as results_file  # noqa: E402


def tiled(x: np.ndarray, rows: int, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((rows, x.shape[1]), dtype=np.float32)
    for start in range(0, rows, len(x)):
        n = min(len(x), rows - start)
        block = x[:n] if start == 0 else x[:n] + rng.normal(0, noise, (n, x.shape[1])).astype(np.float32)
        out[start : start + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def exact_sample_pairs(x: np.ndarray, sample: np.ndarray, threshold: float) -> set:
    xs = x[sample].astype(np.float64)
    found = set()
    for s in range(0, len(xs), 4096):
        sim = xs[s : s + 4096] @ xs.T
        a, b = np.nonzero(sim >= threshold)
        a = a + s
        found |= {(int(sample[i]), int(sample[j])) for i, j in zip(a, b) if i < j}
    return found


def measure(x: np.ndarray, sample: np.ndarray, truth: set, threshold: float, label: str, **search) -> dict:
    from catalog_vision.analytics.pairs import similar_pairs

    t = time.perf_counter()
    i, j, _, info = similar_pairs(x, threshold, **search)
    secs = time.perf_counter() - t
    in_sample = np.zeros(len(x), dtype=bool)
    in_sample[sample] = True
    keep = in_sample[i] & in_sample[j]
    got = set(zip(i[keep].tolist(), j[keep].tolist()))
    tp = len(got & truth)
    return {"data": label, "rows": len(x), "method": info["method"], "params": {k: v for k, v in info.items() if k in ("nlist", "nprobe")},
            "seconds": secs, "pairs": len(i), "sample_pairs": len(truth), "precision": tp / len(got) if got else 1.0,
            "recall": tp / len(truth) if truth else 1.0}


def row(r: dict) -> list[str]:
    params = " ".join(f"{k}={v}" for k, v in r["params"].items())
    return [r["data"], f"{r['rows']:,}", f"{r['method']} {params}".strip(), f"{r['seconds']:.1f}", f"{r['pairs']:,}",
            f"{r['sample_pairs']:,}", f"{r['precision']:.4f}", f"{r['recall']:.4f}"]


def main() -> None:
    from catalog_vision.analytics.load import load_predictions

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictions", required=True, help="a model's table or run folder (backfill output)")
    ap.add_argument("--threshold", type=float, default=0.999)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--noise", type=float, default=0.004)
    ap.add_argument("--sample", type=int, default=50_000)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--baseline-rows", type=int, default=100_000)
    args = ap.parse_args()

    real = load_predictions(args.predictions).embeddings
    big = tiled(real, args.rows, args.noise)
    rng = np.random.default_rng(1)
    print(f"embeddings: {len(real):,} real rows (D={real.shape[1]}) from {args.predictions}; tiled to {args.rows:,} with noise {args.noise}; "
          f"threshold {args.threshold}; loadavg {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs", flush=True)
    results = []
    sample = np.sort(rng.choice(len(real), min(args.sample, len(real)), replace=False))
    truth = exact_sample_pairs(real, sample, args.threshold)
    results.append(measure(real, sample, truth, args.threshold, "real", method="exact"))
    for nprobe in args.nprobe:
        results.append(measure(real, sample, truth, args.threshold, "real", method="ivf", nprobe=nprobe))
    sample = np.sort(rng.choice(len(big), args.sample, replace=False))
    truth = exact_sample_pairs(big, sample, args.threshold)
    base = measure(big[: args.baseline_rows], sample[sample < args.baseline_rows], set(), args.threshold, "tiled", method="exact")
    factor = (len(big) / args.baseline_rows) ** 2
    print(f"  baseline exact on {args.baseline_rows:,} rows: {base['seconds']:.1f} s", flush=True)
    for nprobe in args.nprobe:
        results.append(measure(big, sample, truth, args.threshold, "tiled", method="ivf", nprobe=nprobe))
        print(f"  ivf nprobe={nprobe}: {results[-1]['seconds']:.1f} s", flush=True)
    columns = ["data", "rows", "method", "seconds", "pairs found", f"exact pairs in the {args.sample:,}-row sample", "precision", "recall"]
    table = [row(r) for r in results]
    table.append(["tiled", f"{len(big):,}", "exact (baseline)", f"{base['seconds'] * factor:.0f} (extrapolated: {base['seconds']:.1f} s on "
                  f"{args.baseline_rows:,} rows x {factor:.0f})", "-", "-", "1", "1"])
    print("\n| " + " | ".join(columns) + " |\n|---|---|---|---|---|---|---|---|")
    for cells in table:
        print("| " + " | ".join(cells) + " |")
    print(f"loadavg after: {os.getloadavg()[0]:.1f}; goal: <= 600 s on 1,000,000 rows, precision >= 0.99, recall >= 0.95")
    notes = [f"{len(real):,} real embeddings (D={real.shape[1]}) tiled to {args.rows:,} rows with Gaussian noise {args.noise} per dimension; "
             f"threshold {args.threshold}; precision and recall on the pairs with both ends in a random {args.sample:,}-row sample, "
             "against a numpy float64 brute force over that sample; the baseline is faiss exact range search, its time extrapolated quadratically."]
    results_file.save("duplicates", "python bench/duplicates.py " + " ".join(sys.argv[1:]), columns, table, notes, align="lrlrrrrr")


if __name__ == "__main__":
    main()
