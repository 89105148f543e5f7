"""A catalog with a staged shift, to backfill and compare with jobs/drift.py: one split of a
manifest's images, brightened (pixels x --bright, clipped; 1.0 = an unchanged copy), written as
PNG files with their own manifest (same image ids, labels and split).

    python bench/staged_catalog.py --manifest data/catalog/manifest.parquet --split test --bright 1.25 --out data/staged/bright
    python jobs/backfill.py data.manifest=data/staged/bright/manifest.parquet data.split=test
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    from catalog_vision import storage as st
    from catalog_vision.analytics.shifts import brighten

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--bright", type=float, default=1.25)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    table = pq.read_table(args.manifest)
    table = table.filter(pc.equal(table.column("split"), args.split))
    base = os.path.dirname(os.path.abspath(args.manifest))
    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    uris = []
    for image_id, uri in zip(table.column("image_id").to_pylist(), table.column("uri").to_pylist()):
        src = uri if os.path.isabs(uri) or "://" in uri else os.path.join(base, uri)
        im = Image.open(io.BytesIO(st.read_bytes(src)))
        arr = brighten(np.asarray(im), factor=args.bright)
        dst = os.path.join(out, "images", f"{image_id}.png")
        Image.fromarray(arr, mode=im.mode).save(dst)
        uris.append(dst)
    table = table.set_column(table.column_names.index("uri"), "uri", pa.array(uris, pa.string()))
    pq.write_table(table, os.path.join(out, "manifest.parquet"))
    print(f"staged catalog: {table.num_rows} {args.split} images x{args.bright} brightness -> {out}/manifest.parquet")


if __name__ == "__main__":
    main()
