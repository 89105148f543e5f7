"""The demo's result file: ``bash jobs/demo.sh`` calls this after the pipeline with the run's
``pipeline.json``; it writes ``bench/results/demo-<experiment>.json`` for the README's Results table.

    python bench/demo_results.py <output>/pipeline.json --experiment fashion_mnist --wall-seconds 612 [--args ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as results_file  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("summary", type=Path)
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--wall-seconds", type=float, help="the whole demo.sh, install included")
    ap.add_argument("--args", default="", help="the demo's own arguments, for the command column")
    args = ap.parse_args()
    s = json.loads(args.summary.read_text())
    command = f"bash jobs/demo.sh {args.args}".strip()
    t = s["seconds"]
    steady = s["train_images_per_s"][1:] or s["train_images_per_s"] or [0]
    rows = [
        [f"test accuracy ({s['labeled_rows']:,} {s['split']} images, backfill labels vs manifest)", f"**{s['accuracy']:.2%}**"],
        [f"best validation {s['best_val_metric'].split('/', 1)[1]} (epoch {s['best_epoch']} of {s['epochs']})", f"{s['best_val']:.2%}"],
        [f"whole chain after install (catalog {t['catalog']} s, train {t['train']} s, backfill {t['backfill']} s, query, report)", f"{t['all']:.0f} s"],
        [f"backfill of the {s['backfill_images']:,} {s['split']} images (actor start-up included)", f"{s['backfill_images_per_s']:,.0f} images/s"],
        [f"training throughput, epochs 2-{s['epochs']} ({s['model']})", f"{min(steady):,}-{max(steady):,} images/s"],
    ]
    if args.wall_seconds:
        rows.append(["the whole `demo.sh` run, one-time install included when it happened", f"{args.wall_seconds / 60:.0f} min {args.wall_seconds % 60:.0f} s"])
    notes = [f"model `{s['model_id']}`; per-epoch training images/s: {s['train_images_per_s']}"]
    results_file.save(f"demo-{args.experiment}", command, ["what", "figure"], rows, notes, align="lr")


if __name__ == "__main__":
    main()
