"""Training throughput: catalog-vision on 2 Ray Train workers vs a plain single-process PyTorch loop.

    python bench/train.py                          # 20,000 training images, 3 epochs each
    python bench/train.py --images 55000 --epochs 4 trainer.threads_per_worker=2   # + Hydra overrides for (a)

Same model, same global batch (2 workers x 128 = 256), same recipe (``trainer`` config: the
per-image ``transforms.v2`` augmentation, autocast precision, loss, optimizer and schedule):

* (a) ``catalog-vision`` — ``catalog_vision.train`` (Ray Data decodes the catalog once and streams
  it to the workers each epoch; Ray Train ``TorchTrainer``, DDP over gloo, 2 CPU workers, each
  augmenting its own batches);
* (b) ``plain PyTorch`` — one process, the decoded images as an in-memory uint8 tensor, torch using
  every core, the same augmentation on each batch in the same process.

images/s is the steady-state rate: epochs 2.. (epoch 1 includes start-up), training steps only
(validation excluded) in both. The end-to-end column divides all training images by the whole call.

(a) and (b) run one after the other ``--rounds`` times (default 3): the same code's speed drifts by
10-20% over minutes on a shared virtual machine, so one pair is no verdict. The table is the round
with the median ratio; every round's ratio is printed and kept in the notes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import results as results_file  # noqa: E402


def plain_loop(x: np.ndarray, y: np.ndarray, cfg: dict, epochs: int, global_batch: int) -> list[float]:
    """The loop a user would write: in-memory tensors, one process, the same model and recipe
    (``catalog_vision.train.recipe.Step``: per-image v2 augmentation, autocast dtype, loss; same optimizer
    and schedule)."""
    from catalog_vision.models import build_model
    from catalog_vision.train.recipe import Step, make_optimizer, make_scheduler, seed_everything, train_precision
    from catalog_vision.train.epoch import lap

    t = cfg["trainer"]
    classes = cfg["data"]["classes"]
    seed_everything(0)
    counts = np.bincount(y, minlength=len(classes)).tolist()
    model = build_model(cfg["model"], len(classes), cfg["data"]["preprocessing"]).to(memory_format=torch.channels_last)
    amp_dtype, _ = train_precision(t, model, cfg["model"], cfg["data"]["preprocessing"], torch.device("cpu"), rank=0)
    step = Step(t, "multiclass", len(classes), cfg["data"]["preprocessing"]["image_size"], counts, len(y), torch.device("cpu"), amp_dtype)
    opt = make_optimizer(model.parameters(), t)
    steps = len(x) // global_batch
    sched = make_scheduler(opt, t, steps)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    rates, clocks = [], []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        clock = dict.fromkeys(("data", "augment", "compute", "optimizer"), 0.0)
        start = tick = time.perf_counter()
        for s in range(steps):
            idx = order[s * global_batch : (s + 1) * global_batch]
            batch = {"pixels": xt[idx], "y": yt[idx]}
            tick = lap(clock, "data", tick)
            xb, target, _ = step.prepare(batch)
            tick = lap(clock, "augment", tick)
            with step.autocast():
                logits = model(xb)
            loss = step.loss(logits, target)
            loss.backward()
            tick = lap(clock, "compute", tick)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            loss.item()
            tick = lap(clock, "optimizer", tick)
        rates.append(steps * global_batch / (time.perf_counter() - start))
        clocks.append(clock)
    return rates, clocks


def decoded_training_set(cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """The training split's pixels and class indices, decoded as the catalog's preprocessing says."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from catalog_vision.ingest.images import Preprocessing, decode

    manifest = pq.read_table(cfg["data"]["manifest"])
    manifest = manifest.filter(pc.equal(manifest.column("split"), "train"))
    spec = Preprocessing.from_dict(cfg["data"]["preprocessing"])
    base = Path(cfg["data"]["manifest"]).parent
    x = np.stack([decode((base / u).read_bytes() if not u.startswith("/") else Path(u).read_bytes(), spec) for u in manifest.column("uri").to_pylist()])
    index = {c: i for i, c in enumerate(cfg["data"]["classes"])}
    return x, np.array([index[c] for c in manifest.column("label").to_pylist()], dtype=np.int64)


def breakdown(clock: dict, images: int) -> str:
    """Microseconds per training image spent on each part of the step."""
    return ", ".join(f"{k} {clock[k] / images * 1e6:.0f}" for k in ("data", "augment", "compute", "optimizer"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20000, help="training images (val: 1,000)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--num-cpus", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3, help="(a) then (b), this many times; the table shows the round with the median ratio")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for (a)")
    args = ap.parse_args()
    if args.epochs < 2:
        raise SystemExit("--epochs must be at least 2 (epoch 1 includes start-up)")

    import ray

    from backfill import make_cfg  # bench/backfill.py
    from catalog_vision import make_catalog
    from catalog_vision.train.trainer import train
    from catalog_vision.runtime import setup_logging, workers_at_driver_priority

    setup_logging()
    workers_at_driver_priority()  # as a Ray that catalog-vision starts: Train workers at (b)'s priority
    with tempfile.TemporaryDirectory(prefix="cvbench-train-") as d:
        cfg = make_cfg(
            f"paths.root={d}", f"data.limit.train={args.images}", "data.limit.val=1000", "data.limit.test=1",
            f"trainer.epochs={args.epochs}", *args.overrides,
        )
        t = cfg["trainer"]
        global_batch = int(t["batch_size"]) * int(t["num_workers"])
        rounds = []  # (a) then (b), again and again: a host whose speed drifts over minutes shows in the spread
        for r in range(args.rounds):
            ray.init(num_cpus=args.num_cpus, include_dashboard=True, log_to_driver=True)
            ray.data.DataContext.get_current().enable_progress_bars = False
            if r == 0:
                make_catalog(cfg)
                x, y = decoded_training_set(cfg)  # for (b): decoded once into memory (not timed)
            start = time.perf_counter()
            summary = train(cfg)
            a_total = time.perf_counter() - start
            a_rates = [e["train/images_per_s"] for e in sorted(summary["history"], key=lambda e: e["epoch"])]
            ray.shutdown()
            start = time.perf_counter()
            b_rates, b_clocks = plain_loop(x, y, cfg, args.epochs, global_batch)
            b_total = time.perf_counter() - start
            rounds.append((a_rates, a_total, b_rates, b_total, summary, b_clocks))
            a, b = float(np.mean(a_rates[1:])), float(np.mean(b_rates[1:]))
            print(f"round {r + 1}/{args.rounds}: (a) {a:,.0f} images/s, (b) {b:,.0f} images/s, (a)/(b) {a / b:.2f}x; load {os.getloadavg()[0]:.2f}", flush=True)

    # The table shows the round with the median ratio (all rounds' ratios are in the notes).
    ratios = [float(np.mean(ra[1:]) / np.mean(rb[1:])) for ra, _, rb, _, _, _ in rounds]
    a_rates, a_total, b_rates, b_total, summary, b_clocks = rounds[sorted(range(len(ratios)), key=ratios.__getitem__)[len(ratios) // 2]]
    a, b = float(np.mean(a_rates[1:])), float(np.mean(b_rates[1:]))
    columns = ["method", "images", "epochs", "images/s", "vs (b)", "end-to-end"]
    layout = f"{t['num_workers']} Train worker{'s' if int(t['num_workers']) > 1 else ''} x {t.get('threads_per_worker') or 'all'} thread(s)"
    table = [[f"(a) catalog-vision, {layout}", f"{len(x):,}", str(args.epochs), f"{a:,.0f}", f"{a / b:.2f}x", f"{len(x) * args.epochs / a_total:,.0f}/s"],
             ["(b) plain PyTorch, 1 process", f"{len(x):,}", str(args.epochs), f"{b:,.0f}", "1.00x", f"{len(x) * args.epochs / b_total:,.0f}/s"]]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    print()
    for line in [columns, *table]:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))))
    print(f"\nper epoch (a): {[round(r) for r in a_rates]}  (b): {[round(r) for r in b_rates]}")
    # Where the time goes, steady-state epochs, in microseconds of wall time per training image
    # (for (a): per worker, each worker handling half of the images).
    hist = sorted(summary["history"], key=lambda e: e["epoch"])[1:]
    a_clock = {k: sum(e[f"time/{k}"] for e in hist) for k in ("data", "augment", "compute", "optimizer")}
    b_clock = {k: sum(c[k] for c in b_clocks[1:]) for k in a_clock}
    n_a = len(x) * len(hist) / int(t["num_workers"])
    n_b = (len(x) // global_batch) * global_batch * (args.epochs - 1)
    print("us per image per process:")
    print(f"  (a) one worker: {breakdown(a_clock, n_a)}   (compute includes DDP's all-reduce)")
    print(f"  (b) the process: {breakdown(b_clock, n_b)}")
    setup = (f"{cfg['model']['name']}: (b) {torch.get_num_threads()} torch threads; (a) {t['num_workers']} workers x {t.get('threads_per_worker')} threads, "
             f"batch {t['batch_size']}/worker, Ray {ray.__version__}")
    spread = f"(a)/(b) in each of {len(ratios)} rounds: " + ", ".join(f"{q:.2f}x" for q in ratios) + "; the table shows the median round"
    print(spread)
    notes = [setup, spread, f"per epoch (a): {[round(r) for r in a_rates]}; (b): {[round(r) for r in b_rates]} images/s",
             f"microseconds per image, (a) one worker: {breakdown(a_clock, n_a)} (compute includes DDP's all-reduce); (b): {breakdown(b_clock, n_b)}"]
    print(setup)
    name = f"train-{cfg['model']['name']}-{t['num_workers']}x{t.get('threads_per_worker') or 'all'}"
    results_file.save(name, "python bench/train.py " + " ".join(sys.argv[1:]), columns, table, notes, align="lrrrrr")


if __name__ == "__main__":
    main()
