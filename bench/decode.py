"""Decode cost per CPU core: what a node's CPUs can feed its GPU, for the README's capacity planning.

    python bench/decode.py                     # 300 images per workload
    python bench/decode.py --images 1000

For each workload (the backfill bench's catalogs: Fashion-MNIST PNGs at 28x28 grayscale, and
photo-like JPEGs at 640x480, 1600x1200 and 4032x3024, a 12-megapixel phone photo, decoded to 224x224
RGB with DCT scaling, as the backfill does), it times ``catalog_vision.ingest.images.decode`` in one thread
and reports images per CPU-second (process CPU time, so other load on the machine does not count),
the file size, and the decoded bytes, plus the bytes of one output row of the predictions table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backfill as bf  # noqa: E402  (the backfill bench's catalog builder)
import results as results_file  # noqa: E402

bf.PHOTO_SIZES.setdefault("photo4032", (4032, 3024))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--workloads", default="small,photo640,photo1600,photo4032")
    ap.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
    args = ap.parse_args()
    import pyarrow.parquet as pq
    import torch

    from catalog_vision.ingest.images import Preprocessing, decode

    torch.set_num_threads(1)
    columns = ["workload", "file (mean)", "decoded to", "images per CPU-second", "MB read per CPU-second"]
    table = []
    with tempfile.TemporaryDirectory(prefix="cvdecode-") as d:
        for w in args.workloads.split(","):
            n = args.images if w != "photo4032" else max(20, args.images // 5)
            manifest = bf.build_catalog(Path(d) / w, n, "resnet" if w == "resnet" else w, args.source)
            files = [Path(u).read_bytes() for u in pq.read_table(manifest).column("uri").to_pylist()]
            spec = Preprocessing(image_size=(28, 28), channels=1) if w == "small" else Preprocessing(
                image_size=(224, 224), channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), fit="center_crop")
            decode(files[0], spec)
            t = time.process_time()
            for f in files:
                decode(f, spec)
            cpu = time.process_time() - t
            size = sum(len(f) for f in files) / len(files)
            shape = "x".join(map(str, spec.shape))
            table.append([w, f"{size / 1024:,.1f} KiB", f"{shape} uint8", f"{len(files) / cpu:,.0f}", f"{sum(map(len, files)) / cpu / 1e6:,.1f}"])
            print("  ".join(table[-1]), flush=True)
    notes = ["One thread; CPU time of this process (load from other processes on the machine does not count). A predictions row of "
             "resnet18 (512-float embedding) is about 2.3 KB before compression; resnet50's (2048) about 8.4 KB."]
    results_file.save("decode", "python bench/decode.py " + " ".join(sys.argv[1:]), columns, table, notes, align="lrlrr")


if __name__ == "__main__":
    main()
