"""Calibrate the drift report: how often it alarms on two samples of one distribution, and how often
it detects staged shifts, at --rows rows per side; then its time on --scale-rows vs --scale-rows.

    python bench/drift_calibration.py                        # 20 trials per scenario, 10,000 rows per side, then 1M vs 1M
    python bench/drift_calibration.py --null-trials 200      # a tighter false-alarm estimate
    python bench/drift_calibration.py --trials 5 --scale-rows 0

The shifts are made to images, and the embeddings come from running the model on them (the
backfill's Predictor), never noise added to vectors:

- null:        two disjoint samples of the in-class Fashion-MNIST images (train + test, 56,000);
- priors:      the current side drawn with two classes (T-shirt/top, Trouser) 1.5x as likely per image;
- brightness:  the current side's images brightened (pixels x --bright, clipped);
- out_of_class: --ooc of the current side replaced by images of classes held out of training (Bag, Ankle boot).

The model is small_cnn trained here for 2 epochs on the in-class training images (plain PyTorch on
the driver, see catalog_vision.analytics.shifts.quick_checkpoint), or --checkpoint with --held-out.
The report's tests run exactly as jobs/drift.py runs them (catalog_vision.analytics.drift.compare).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as results_file  # noqa: E402

HELD_OUT = ["Bag", "Ankle boot"]
PRIOR_WEIGHTS = {"T-shirt/top": 1.5, "Trouser": 1.5}
TESTS = ("label_chi2", "label_psi", "score_ks", "embedding_classifier", "embedding_mmd")


def compose_cfg(*overrides: str) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config", overrides=list(overrides)), resolve=True)


def side(name: str, labels, scores, emb, model_id: str):
    from catalog_vision.analytics.load import Predictions

    n = len(labels)
    rows = pa.table({"image_id": [f"{name}{k}" for k in range(n)], "label": labels, "score": scores.astype(np.float32),
                     "model_id": [model_id] * n, "run_id": [name] * n})
    return Predictions(uri=name, rows=rows, embeddings=emb, error_rows=0, duplicate_rows=0)


def embed_pools(args, tmp: str) -> dict:
    from catalog_vision.analytics.shifts import brighten, embed, quick_checkpoint
    from catalog_vision.catalogs.fashion_mnist import load_fashion_mnist
    from catalog_vision.infer.predictor import Predictor
    cfg = compose_cfg("experiment=smoke")
    arrays = load_fashion_mnist(args.fmnist)
    x = np.concatenate([arrays["train"][0], arrays["test"][0]])[:, None]
    y = np.concatenate([arrays["train"][1], arrays["test"][1]])
    names = np.array(cfg["data"]["classes"])[y]
    held = np.isin(names, args.held_out)
    kept = [c for c in cfg["data"]["classes"] if c not in args.held_out]
    checkpoint = args.checkpoint
    t = time.perf_counter()
    if not checkpoint:
        train = np.flatnonzero(~held[:60000])
        index = {c: k for k, c in enumerate(kept)}
        checkpoint = quick_checkpoint(os.path.join(tmp, "model"), x[train], [index[c] for c in names[train]], kept, cfg, epochs=2)
        print(f"trained small_cnn on {len(train)} images of {len(kept)} classes (held out {args.held_out}) in {time.perf_counter() - t:.0f} s")
    p = Predictor(checkpoint, dtype="float32")
    t = time.perf_counter()
    pools = {}
    for key, idx, pixels in [("in", np.flatnonzero(~held), None), ("bright", np.flatnonzero(~held), "bright"), ("ooc", np.flatnonzero(held), None)]:
        px = x[idx] if pixels is None else brighten(x[idx], factor=args.bright)
        probs, emb = embed(p, px)
        pools[key] = {"labels": np.array(p.classes)[probs.argmax(1)], "scores": probs.max(1), "emb": emb, "true": names[idx]}
    print(f"embedded {sum(len(v['emb']) for v in pools.values())} images with {p.model_id} in {time.perf_counter() - t:.0f} s")
    pools["model_id"] = p.model_id
    return pools


def take(pool: dict, idx: np.ndarray) -> tuple:
    return pool["labels"][idx], pool["scores"][idx], pool["emb"][idx]


def trial(pools: dict, scenario: str, rows: int, seed: int, ooc: float) -> tuple:
    from catalog_vision.analytics.shifts import resample_priors

    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(pools["in"]["emb"]))
    ref_idx, rest = perm[:rows], perm[rows:]
    if scenario == "null" or scenario == "brightness":
        cur = take(pools["bright" if scenario == "brightness" else "in"], rest[:rows])
    elif scenario == "priors":
        cur = take(pools["in"], resample_priors(pools["in"]["true"], PRIOR_WEIGHTS, rows, rng, pool=rest))
    else:
        n_ooc = int(round(ooc * rows))
        a = take(pools["in"], rest[: rows - n_ooc])
        b = take(pools["ooc"], rng.choice(len(pools["ooc"]["emb"]), n_ooc, replace=False))
        cur = tuple(np.concatenate([u, v]) for u, v in zip(a, b))
    return side("ref", *take(pools["in"], ref_idx), pools["model_id"]), side("cur", *cur, pools["model_id"])


def calibrate(pools: dict, args, settings: dict) -> list[dict]:
    from catalog_vision.analytics.drift import compare

    out = []
    for scenario in ("null", "priors", "brightness", "out_of_class"):
        alarms, per_test, t = 0, {k: 0 for k in TESTS}, time.perf_counter()
        stats = {k: [] for k in TESTS}
        trials = args.null_trials if scenario == "null" else args.trials
        for k in range(trials):
            ref, cur = trial(pools, scenario, args.rows, seed=1000 * k + 7, ooc=args.ooc)
            r = compare(ref, cur, {**settings, "seed": k})
            alarms += r["verdict"] == "drift"
            for name in TESTS:
                per_test[name] += r["tests"][name]["verdict"] == "drift"
                stats[name].append(r["tests"][name]["statistic"])
        out.append({"scenario": scenario, "trials": trials, "rate": alarms / trials, "per_test": per_test,
                    "median": {k: float(np.median(v)) for k, v in stats.items()}, "seconds_per_trial": (time.perf_counter() - t) / trials})
        print(f"  {scenario}: {alarms}/{trials} alarms ({out[-1]['seconds_per_trial']:.1f} s per trial)", flush=True)
    return out


def print_table(results: list[dict], args, pools: dict) -> None:
    print(f"\nalarm rates, {args.rows} rows per side (alpha per test {args.alpha}; loadavg {os.getloadavg()[0]:.1f})")
    columns = ["scenario", "trials", "report alarms", *TESTS, "goal"]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    table = []
    for r in results:
        goal = "<= 5% (false alarms)" if r["scenario"] == "null" else ">= 95% (detection)"
        cells = [f"{r['per_test'][k] / r['trials']:.1%} (med {r['median'][k]:.3g})" for k in TESTS]
        table.append([r["scenario"], str(r["trials"]), f"**{r['rate']:.1%}**", *cells, goal])
        print("| " + " | ".join(table[-1]) + " |")
    notes = [f"{args.rows:,} rows per side, alpha {args.alpha} per test; model {pools['model_id']}; shifts: priors {PRIOR_WEIGHTS}, "
             f"brightness x{args.bright}, out-of-class {args.ooc:.0%} of {args.held_out}. Per-test cells: the test's alarm rate, "
             "and the median of its statistic over the trials."]
    results_file.save("drift_calibration", command(), columns, table, notes, align="lrrrrrrrl")


def command() -> str:
    return "python bench/drift_calibration.py " + " ".join(sys.argv[1:])


def scale(pools: dict, n: int, settings: dict, tmp: str) -> None:
    """n vs n rows: two run folders of real embeddings tiled to n rows, through run_drift (load + tests + figures + JSON)."""
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from catalog_vision.analytics.drift import run_drift

    folders = []
    for name, pool in (("ref", pools["in"]), ("cur", pools["bright"])):
        idx = np.resize(np.random.default_rng(len(name)).permutation(len(pool["emb"])), n)
        emb = pool["emb"][idx]
        table = pa.table({
            "image_id": [f"{name}-{k}" for k in range(n)], "uri": pa.nulls(n, pa.string()), "label": pool["labels"][idx],
            "score": pool["scores"][idx].astype(np.float32),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1]), "model_id": [pools["model_id"]] * n,
            "run_id": [name] * n, "error": pa.nulls(n, pa.string()),
        })
        folder = os.path.join(tmp, "predictions", pools["model_id"], f"scale-{name}", "run")
        os.makedirs(folder)
        pq.write_table(table, os.path.join(folder, "part-0.parquet"), compression="zstd", row_group_size=100_000)
        folders.append(folder)
    t = time.perf_counter()
    for f in folders:
        pads.dataset(f, format="parquet").to_table(columns=["image_id", "label", "score", "embedding", "run_id", "model_id", "error"])
    t_read = time.perf_counter() - t
    cfg = {"storage": {}, "paths": {"output": os.path.join(tmp, "out")}, "drift": {**settings, "reference": folders[0], "current": folders[1], "figures": True,
                                                                                  "output": os.path.join(tmp, "out", "scale")}}
    t = time.perf_counter()
    r = run_drift(cfg)
    total = time.perf_counter() - t
    print(f"\n{n:,} vs {n:,} rows (real embeddings tiled; current side brightened; loadavg {os.getloadavg()[0]:.1f})")
    columns = ["step", "seconds"]
    table = [["baseline: read both tables' columns with pyarrow, nothing else", f"{t_read:.1f}"],
             ["jobs/drift.py's run_drift: load, 5 tests, 3 figures, drift.json (goal <= 60)", f"{total:.1f} (load {r['seconds']['load']})"]]
    print("| step | seconds |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in table))
    verdict = (f"verdict {r['verdict']} {r['alarms']}; embedding tests on {settings['classifier']['rows']} (classifier) "
               f"and {settings['mmd']['rows']} (MMD) sampled rows per side")
    print(verdict)
    notes = [f"{n:,} vs {n:,} rows: real embeddings of the in-class pool tiled, the current side from the brightened pool. It printed: {verdict}."]
    results_file.save("drift_scale", command(), columns, table, notes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fmnist", default=os.environ.get("CV_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--checkpoint", default=None, help="a model trained without the --held-out classes; default: train one here")
    ap.add_argument("--held-out", nargs="+", default=HELD_OUT)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--null-trials", type=int, default=None, help="same-distribution splits (default: --trials)")
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--bright", type=float, default=1.25, help="pixel factor of the brightness shift")
    ap.add_argument("--ooc", type=float, default=0.05, help="fraction of out-of-class images in the current side")
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--scale-rows", type=int, default=1_000_000)
    args = ap.parse_args()
    args.null_trials = args.null_trials or args.trials
    settings = {"alpha": args.alpha, "psi_threshold": 0.1, "embedding": True, "classifier": {"rows": 10000, "test_fraction": 0.5},
                "mmd": {"rows": 1000, "permutations": 200}, "seed": 0}
    with tempfile.TemporaryDirectory(prefix="drift-cal-") as tmp:
        pools = embed_pools(args, tmp)
        print(f"shifts: priors {PRIOR_WEIGHTS}, brightness x{args.bright}, out-of-class {args.ooc:.0%} of {args.held_out}")
        print_table(calibrate(pools, args, settings), args, pools)
        if args.scale_rows:
            scale(pools, args.scale_rows, settings, tmp)


if __name__ == "__main__":
    main()
