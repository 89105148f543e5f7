"""Which embedding cosine means "the same picture" for this model? Pairs found at --low and above,
in bands of cosine, with the pixel correlation of their raw images (read from the predictions'
uris; on up to --per-band pairs per band), and the nearest-neighbour cosine of a sample of images.

    python bench/duplicate_threshold.py --predictions data/output/predictions/<model_id>/<catalog_id>
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as results_file  # noqa: E402


def pixels(uri: str) -> np.ndarray:
    from catalog_vision import storage as st

    return np.asarray(Image.open(io.BytesIO(st.read_bytes(uri))).convert("L"), dtype=np.float64).ravel()


def correlation(a: str, b: str) -> float:
    u, v = pixels(a), pixels(b)
    if u.shape != v.shape:
        return float("nan")
    u, v = u - u.mean(), v - v.mean()
    return float(u @ v / np.sqrt((u @ u) * (v @ v)))


def main() -> None:
    import faiss

    from catalog_vision.analytics.load import load_predictions
    from catalog_vision.analytics.pairs import similar_pairs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictions", required=True)
    ap.add_argument("--low", type=float, default=0.998)
    ap.add_argument("--bands", type=float, nargs="+", default=[0.998, 0.999, 0.9995, 0.9999])
    ap.add_argument("--per-band", type=int, default=400)
    args = ap.parse_args()
    p = load_predictions(args.predictions)
    x, uris = p.embeddings, p.rows.column("uri").to_pylist()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, _ = index.search(x[:: max(1, len(x) // 10000)], 2)
    nn = sims[:, 1]
    nn_line = (f"{len(x):,} images; nearest-neighbour cosine of {len(nn):,} of them: median {np.median(nn):.4f}, "
               + ", ".join(f"share >= {t}: {np.mean(nn >= t):.1%}" for t in (0.98, 0.99, 0.999)))
    print(nn_line)
    i, j, s, _ = similar_pairs(x, args.low, method="exact")
    rng = np.random.default_rng(0)
    columns = ["embedding cosine", "pairs", "median pixel correlation", "pairs with pixel correlation > 0.95"]
    print("\n| " + " | ".join(columns) + " |\n|---|---:|---:|---:|")
    edges = list(args.bands) + [1.01]
    table = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        k = np.flatnonzero((s >= lo) & (s < hi))
        pick = k if len(k) <= args.per_band else rng.choice(k, args.per_band, replace=False)
        c = np.array([correlation(uris[i[q]], uris[j[q]]) for q in pick])
        c = c[~np.isnan(c)]
        band = f"{lo} – {hi}" if hi <= 1 else f"≥ {lo}"
        table.append([band, f"{len(k):,}", f"{np.median(c) if len(c) else float('nan'):.3f}", f"{np.mean(c > 0.95) if len(c) else float('nan'):.0%}"])
        print("| " + " | ".join(table[-1]) + " |", flush=True)
    notes = [f"{nn_line}; pixel correlation on up to {args.per_band} pairs per band."]
    results_file.save("duplicate_threshold", "python bench/duplicate_threshold.py " + " ".join(sys.argv[1:]), columns, table, notes)


if __name__ == "__main__":
    main()
