"""Is bfloat16 (or float16) inference accurate enough for this checkpoint? Same images, each dtype.

    python bench/precision.py --checkpoint data/output/model --manifest data/catalog/manifest.parquet --split test

Prints, per dtype: images/s of the model alone (1 thread and all threads), top-1 accuracy against
the manifest labels, top-1 agreement with float32, and the worst embedding cosine similarity to
float32. ``predictor.dtype=auto`` picks bfloat16 where it measures clearly faster; this is the accuracy check.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as results_file  # noqa: E402


def main() -> None:
    from catalog_vision import storage as st
    from catalog_vision.ingest.images import Preprocessing, decode
    from catalog_vision.infer.predictor import Predictor
    from catalog_vision.infer.device import cpu_has_native_bf16

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=10000)
    ap.add_argument("--batch-size", type=int, default=512)
    args = ap.parse_args()

    table = pq.read_table(args.manifest)
    if args.split and "split" in table.column_names:
        table = table.filter(pc.equal(table.column("split"), args.split))
    table = table.slice(0, args.limit)
    base = args.manifest.rsplit("/", 1)[0]
    uris = [u if u.startswith("/") or "://" in u else f"{base}/{u}" for u in table.column("uri").to_pylist()]
    labels = table.column("label").to_pylist()
    results = {}
    pixels = None
    all_threads = torch.get_num_threads()
    for dtype in ("float32", "bfloat16", "float16"):
        p = Predictor(args.checkpoint, device="cpu", dtype=dtype)
        if pixels is None:
            spec = Preprocessing.from_dict(p.loaded.preprocessing)
            pixels = np.stack([decode(st.read_bytes(u), spec) for u in uris])
        probs, emb = [], []
        t = time.perf_counter()
        for s in range(0, len(pixels), args.batch_size):
            pr, em = p.predict_pixels(pixels[s : s + args.batch_size])
            probs.append(pr)
            emb.append(em)
        secs = time.perf_counter() - t
        torch.set_num_threads(1)
        t1 = time.perf_counter()
        for s in range(0, min(len(pixels), 4 * args.batch_size), args.batch_size):
            p.predict_pixels(pixels[s : s + args.batch_size])
        one = min(len(pixels), 4 * args.batch_size) / (time.perf_counter() - t1)
        torch.set_num_threads(all_threads)
        results[dtype] = (np.concatenate(probs), np.concatenate(emb), len(pixels) / secs, one)
        names = np.asarray(p.loaded.classes)
    ref_top = results["float32"][0].argmax(1)
    print(f"{len(pixels)} images from {args.manifest} (split={args.split}); CPU native bf16: {cpu_has_native_bf16()}")
    columns = ["dtype", "images/s, all threads", "images/s, 1 thread", "top-1 accuracy", "top-1 agreement with float32", "min cos(embedding)"]
    table = []
    for dtype, (probs, emb, rate, one) in results.items():
        top = probs.argmax(1)
        acc = float(np.mean(names[top] == np.asarray(labels)))
        agree = float(np.mean(top == ref_top))
        cos = float(np.min(np.sum(emb * results["float32"][1], axis=1)))
        table.append([dtype, f"{rate:,.0f}", f"{one:,.0f}", f"{acc:.4f}", f"{agree:.4f}", f"{cos:.5f}"])
    for line in [columns, *table]:
        print("  ".join(line))
    notes = [f"{len(pixels):,} images of {args.manifest} (split {args.split}), checkpoint {args.checkpoint}; {torch.get_num_threads()} threads"]
    results_file.save("precision", "python bench/precision.py " + " ".join(sys.argv[1:]), columns, table, notes)

if __name__ == "__main__":
    main()
