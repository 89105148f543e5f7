"""Drift between two backfills (``jobs/drift.py``): two run folders, two models' tables for one
catalog, or one model's tables for two catalogs.

[1] Load both sides: one row per image, error rows skipped (:mod:`.load`).
[2] Label distribution: chi-squared on the 2 x K counts, PSI, and per class fractions and terms.
[3] Confidence: two-sample KS on the top-1 score.
[4] Embeddings (on a sample of each side): a domain classifier's held-out ROC-AUC and an
    MMD permutation test (:mod:`.drift_stats`).
[5] Write ``drift.json`` and PNG figures.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np

from .. import storage as st
from ..storage.secrets import redact
from . import drift_stats as ds
from .load import Predictions, load_predictions

TESTS = ("label_chi2", "label_psi", "score_ks", "embedding_classifier", "embedding_mmd")


def sample_rows(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= k else np.sort(rng.choice(n, k, replace=False))


def check_comparable(ref: Predictions, cur: Predictions, embedding: bool) -> list[str]:
    """Clear errors for inputs no report can be made from; notes for ones to read with care."""
    for side, p in (("reference", ref), ("current", cur)):
        if p.rows.num_rows < 2:
            raise ValueError(f"drift.{side}={p.uri!r}: {p.rows.num_rows} prediction rows without errors; a drift report needs at least 2 per side")
    notes = []
    if embedding and ref.dim != cur.dim:
        raise ValueError(
            f"embedding dimensions differ: drift.reference has {ref.dim}, drift.current has {cur.dim} (two models' embedding spaces); "
            "set drift.embedding=false to compare labels and confidence only"
        )
    if ref.model_ids != cur.model_ids:
        notes.append(f"two models ({ref.model_ids[0]} vs {cur.model_ids[0]}): label and confidence shifts mix model change and data change"
                     + ("; embeddings of two models are two spaces, so the embedding tests mostly measure the model change" if embedding else ""))
    return notes


def embedding_tests(ref: np.ndarray, cur: np.ndarray, d: Mapping[str, Any], alpha: float, rng: np.random.Generator) -> dict:
    clf_rows, mmd_rows = int(d["classifier"]["rows"]), int(d["mmd"]["rows"])
    a, b = ref[sample_rows(len(ref), clf_rows, rng)], cur[sample_rows(len(cur), clf_rows, rng)]
    clf = ds.domain_classifier(a, b, alpha, test_fraction=float(d["classifier"]["test_fraction"]), seed=int(d["seed"]))
    a, b = ref[sample_rows(len(ref), mmd_rows, rng)], cur[sample_rows(len(cur), mmd_rows, rng)]
    mmd = ds.mmd_permutation(a, b, alpha, permutations=int(d["mmd"]["permutations"]), seed=int(d["seed"]))
    return {"embedding_classifier": clf, "embedding_mmd": mmd}


def compare(ref: Predictions, cur: Predictions, d: Mapping[str, Any]) -> dict:
    """The report (a JSON-able dict) for two loaded sides; ``_figures`` holds arrays for the plots."""
    alpha = float(d["alpha"])
    embedding = bool(d.get("embedding", True))
    notes = check_comparable(ref, cur, embedding)
    rng = np.random.default_rng(int(d["seed"]))
    labels_a = ref.rows.column("label").to_numpy(zero_copy_only=False)
    labels_b = cur.rows.column("label").to_numpy(zero_copy_only=False)
    classes, a, b = ds.label_counts(labels_a, labels_b)
    terms = ds.psi_terms(a, b)
    scores_a = ref.rows.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
    scores_b = cur.rows.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
    tests = {"label_chi2": ds.chi_squared(a, b, alpha), "label_psi": ds.psi(a, b, float(d["psi_threshold"])), "score_ks": ds.ks(scores_a, scores_b, alpha)}
    if embedding:
        tests.update(embedding_tests(ref.embeddings, cur.embeddings, d, alpha, rng))
    figures = {"classes": classes, "counts": (a, b), "scores": (scores_a, scores_b)}
    if "embedding_classifier" in tests:
        figures["domain_scores"] = tests["embedding_classifier"].pop("scores")
        figures["domain_side"] = tests["embedding_classifier"].pop("score_side")
    alarms = [name for name in TESTS if name in tests and tests[name]["verdict"] == "drift"]
    per_class = [
        {"label": c, "reference_count": int(x), "current_count": int(y), "reference_fraction": x / max(a.sum(), 1),
         "current_fraction": y / max(b.sum(), 1), "psi_term": float(t)}
        for c, x, y, t in zip(classes, a, b, terms)
    ]
    return {
        "verdict": "drift" if alarms else "ok",
        "alarms": alarms,
        "tests": tests,
        "per_class": per_class,
        "reference": side_summary(ref),
        "current": side_summary(cur),
        "notes": notes,
        "_figures": figures,
    }


def side_summary(p: Predictions) -> dict:
    return {"uri": p.uri, "model_ids": p.model_ids, "rows": p.rows.num_rows, "error_rows_skipped": p.error_rows,
            "older_rows_skipped": p.duplicate_rows, "embedding_dim": p.dim}


def run_drift(cfg: Mapping[str, Any]) -> dict:
    """``jobs/drift.py``: load both sides, compare, write ``drift.json`` and figures; returns the report."""
    t0 = time.perf_counter()
    d, storage = dict(cfg["drift"]), cfg["storage"]
    for side in ("reference", "current"):
        if not d.get(side):
            raise ValueError(f"set drift.{side}: a run folder <predictions>/<model_id>/<catalog_id>/<run_id> or a model's table "
                             "<predictions>/<model_id>/<catalog_id>")
    embedding = bool(d.get("embedding", True))
    ref = load_predictions(st.absolute(d["reference"]), storage, embeddings=embedding, setting="drift.reference")
    cur = load_predictions(st.absolute(d["current"]), storage, embeddings=embedding, setting="drift.current")
    t_load = time.perf_counter() - t0
    report = compare(ref, cur, d)
    figures = report.pop("_figures")
    out = st.absolute(d.get("output") or st.join(cfg["paths"]["output"], "drift", time.strftime("%Y%m%dT%H%M%S", time.gmtime())))
    report["settings"] = {k: d[k] for k in ("alpha", "psi_threshold", "embedding", "classifier", "mmd", "seed")}
    if d.get("figures", True):
        from .drift_figures import write_figures

        report["figures"] = write_figures(out, report, figures, storage)
    report["seconds"] = {"load": round(t_load, 2), "total": round(time.perf_counter() - t0, 2)}
    report["output"] = out
    report = redact(report)  # URIs with credentials in them (user:password@, presigned queries) are masked
    st.write_json(st.join(out, "drift.json"), report, storage)
    return report
