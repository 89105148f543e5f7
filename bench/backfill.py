"""Backfill throughput: catalog-vision vs a plain PyTorch script vs the model alone, in one run.

    python bench/backfill.py                                  # both workloads, default sizes
    python bench/backfill.py --workloads small --small-images 10000

Workloads (same images, same model, same output columns for every method):

* ``small``  — Fashion-MNIST-size PNGs (28×28 grayscale) with the small CNN: I/O- and overhead-bound;
* ``resnet`` — 224×224 RGB JPEGs with resnet18: compute-bound.

Methods:

* (a) ``catalog-vision`` — ``catalog_vision.backfill`` on a local Ray (started before timing);
* (b) ``plain PyTorch`` — one process: a ``DataLoader`` with worker processes reading and decoding
  the files, the model, a ``pyarrow.parquet.ParquetWriter``: what a user would write instead;
* (c) ``model only`` — the model on pre-decoded in-memory tensors: the ceiling.

Weights are random (made here): throughput does not depend on their values.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def make_cfg(*overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config", overrides=list(overrides)), resolve=True)


def build_catalog(root: Path, n: int, workload: str, source: str) -> str:
    """Write n image files + a manifest; returns the manifest path."""
    from catalog_vision.catalog import load_fashion_mnist

    x, y = load_fashion_mnist(source)["test"]
    classes = make_cfg()["data"]["classes"]
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = {"image_id": [], "uri": [], "label": [], "split": []}
    for i in range(n):
        arr = x[i % len(x)]
        if workload == "small":
            path = img_dir / f"{i:07d}.png"
            Image.fromarray(arr).save(path, format="PNG", compress_level=1)
        else:
            path = img_dir / f"{i:07d}.jpg"
            Image.fromarray(arr).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR).save(path, format="JPEG", quality=90)
        rows["image_id"].append(f"img-{i:07d}")
        rows["uri"].append(str(path))
        rows["label"].append(classes[int(y[i % len(y)])])
        rows["split"].append("bench")
    manifest = root / "manifest.parquet"
    pq.write_table(pa.table(rows), manifest)
    return str(manifest)


def make_checkpoint(root: Path, workload: str) -> tuple[str, dict]:
    from catalog_vision import checkpoint as ckpt
    from catalog_vision.models import build_model

    cfg = make_cfg(f"model={'small_cnn' if workload == 'small' else 'resnet18'}")
    pre = dict(cfg["data"]["preprocessing"])
    if workload == "resnet":
        pre.update(image_size=[224, 224], channels=3, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    torch.manual_seed(0)
    model = build_model(cfg["model"], 10, pre)
    meta = {"model": cfg["model"], "classes": cfg["data"]["classes"], "preprocessing": pre, "task": "multiclass", "embedding_dim": model.num_features, "epoch": 0, "metrics": {}}
    return ckpt.save(str(root / "model"), model, meta), pre


# (b) ------------------------------------------------------------------------------------------
class FileDataset(torch.utils.data.Dataset):
    def __init__(self, uris, size, channels):
        self.uris, self.size, self.mode = uris, size, "L" if channels == 1 else "RGB"

    def __len__(self):
        return len(self.uris)

    def __getitem__(self, i):
        try:
            with Image.open(self.uris[i]) as im:
                im = im.convert(self.mode)
                if im.size != (self.size[1], self.size[0]):
                    im = im.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            return torch.from_numpy(np.ascontiguousarray(arr)), i, ""
        except Exception as e:  # a plain script that keeps going on bad files, like ours
            return torch.zeros((1 if self.mode == "L" else 3, *self.size), dtype=torch.uint8), i, f"{type(e).__name__}: {e}"


def plain_pytorch(manifest: str, checkpoint: str, out: Path, batch_size: int, workers: int) -> int:
    from catalog_vision import checkpoint as ckpt
    from catalog_vision.infer import predictions_schema

    loaded = ckpt.load(checkpoint)
    model = loaded.model.to(memory_format=torch.channels_last)
    classes = np.asarray(loaded.classes, dtype=object)
    table = pq.read_table(manifest)
    ids, uris = table.column("image_id").to_pylist(), table.column("uri").to_pylist()
    pre = loaded.preprocessing
    loader = torch.utils.data.DataLoader(FileDataset(uris, pre["image_size"], pre["channels"]), batch_size=batch_size, num_workers=workers)
    schema = predictions_schema(model.num_features)
    n = 0
    with pq.ParquetWriter(out, schema, compression="zstd") as writer, torch.inference_mode():
        for x, idx, err in loader:
            feats = model.forward_features(x.contiguous(memory_format=torch.channels_last))
            probs = torch.softmax(model.forward_head(feats), 1)
            emb = torch.nn.functional.normalize(feats, dim=1).numpy()
            top_s, top_i = torch.topk(probs, 5, dim=1)
            k = len(idx)
            names = [classes[r].tolist() for r in top_i.numpy()]
            writer.write_table(pa.Table.from_arrays([
                pa.array([ids[i] for i in idx.tolist()]), pa.array([uris[i] for i in idx.tolist()]),
                pa.array([nm[0] for nm in names]), pa.array(top_s[:, 0].numpy(), pa.float32()),
                pa.array(names, pa.list_(pa.string())), pa.array(top_s.numpy().tolist(), pa.list_(pa.float32())),
                pa.array([[nm[0]] for nm in names], pa.list_(pa.string())),
                pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), model.num_features),
                pa.array((top_s[:, 0] < 0.5).numpy()), pa.array(["plain"] * k), pa.array(["plain"] * k),
                pa.array([e or None for e in err], pa.string()),
            ], schema=schema))
            n += k
    return n


# (c) ------------------------------------------------------------------------------------------
def model_only(checkpoint: str, manifest: str, batch_size: int) -> tuple[int, float]:
    from catalog_vision import checkpoint as ckpt
    from catalog_vision.images import Preprocessing, decode

    loaded = ckpt.load(checkpoint)
    model = loaded.model.to(memory_format=torch.channels_last)
    spec = Preprocessing.from_dict(loaded.preprocessing)
    uris = pq.read_table(manifest).column("uri").to_pylist()
    x = torch.from_numpy(np.stack([decode(Path(u).read_bytes(), spec) for u in uris]))
    t = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(x), batch_size):
            feats = model.forward_features(x[s : s + batch_size].contiguous(memory_format=torch.channels_last))
            torch.softmax(model.forward_head(feats), 1)
    return len(x), time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="small,resnet")
    ap.add_argument("--small-images", type=int, default=10000)
    ap.add_argument("--resnet-images", type=int, default=1000)
    ap.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for (b)")
    ap.add_argument("--num-cpus", type=int, default=6, help="logical CPUs for the local Ray of (a)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for (a), e.g. predictor.max_actors=1")
    args = ap.parse_args()

    import ray

    from catalog_vision import backfill
    from catalog_vision.runtime import setup_logging

    setup_logging()

    ray.init(num_cpus=args.num_cpus, include_dashboard=True, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    results = []
    for workload in args.workloads.split(","):
        n = args.small_images if workload == "small" else args.resnet_images
        batch = 512 if workload == "small" else 64
        with tempfile.TemporaryDirectory(prefix=f"cvbench-{workload}-") as d:
            root = Path(d)
            manifest = build_catalog(root / "catalog", n, workload, args.source)
            checkpoint, pre = make_checkpoint(root, workload)
            cfg = make_cfg(
                f"paths.root={root}", f"data.manifest={manifest}", "data.split=null",
                f"data.preprocessing.image_size=[{pre['image_size'][0]},{pre['image_size'][1]}]",
                f"predictor.checkpoint={checkpoint}", f"predictor.batch_size={batch}",
                *args.overrides,
            )
            t = time.perf_counter()
            out = backfill(cfg)
            a = out["counts"]["predicted"] + out["counts"]["errors"], time.perf_counter() - t
            print(f"[{workload}] catalog-vision timings: {out['timings']}", flush=True)
            t = time.perf_counter()
            b = plain_pytorch(manifest, checkpoint, root / "plain.parquet", batch, args.workers), None
            b = b[0], time.perf_counter() - t
            c = model_only(checkpoint, manifest, batch)
        ra, rb, rc = (k / s for k, s in (a, b, c))
        results += [
            (workload, "(a) catalog-vision", n, ra, ra / rb, ra / rc),
            (workload, "(b) plain PyTorch", n, rb, 1.0, rb / rc),
            (workload, "(c) model only", n, rc, rc / rb, 1.0),
        ]
    ray.shutdown()
    print(f"\n{'workload':<9} {'method':<20} {'images':>8} {'images/s':>10} {'vs (b)':>8} {'of (c)':>8}")
    for w, m, n, r, vb, vc in results:
        print(f"{w:<9} {m:<20} {n:>8} {r:>10.1f} {vb:>7.2f}x {vc:>7.0%}")
    print(f"\nmachine: {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
