"""The drift report on real predictions tables: Fashion-MNIST test images embedded by a trained small
CNN (the backfill's Predictor and commit path), written as run folders of Parquet. Statistics are
checked against independent computations (DuckDB counts, the formulas in numpy); verdicts on two
halves of one distribution and on a planted strong shift (brightened images)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest

from catalog_vision.analytics import run_drift
from catalog_vision.analytics.shifts import brighten, embed, quick_checkpoint, write_run
from catalog_vision.infer.predictor import Predictor
from conftest import make_cfg

pytestmark = pytest.mark.slow  # the fixture trains a small model (and uses the session's other one)

HALF = 1500
SETTINGS = ["drift.classifier.rows=3000", "drift.mmd.rows=400", "drift.mmd.permutations=200"]


@pytest.fixture(scope="module")
def tables(tmp_path_factory, fmnist_arrays, small_cnn):
    """Run folders: ``a`` and ``b`` two halves of 3,000 test images, ``bright`` the ``b`` images
    brightened (+70 levels), all three under the session's small CNN (conftest.small_cnn), and
    ``wide`` the ``a`` images under a model with 64-d embeddings."""
    arrays = fmnist_arrays
    root = tmp_path_factory.mktemp("drift")
    cfg = make_cfg("experiment=smoke")
    x, y = arrays["train"]
    classes = cfg["data"]["classes"]
    ckpt = small_cnn
    wide_cfg = {**cfg, "model": {**cfg["model"], "embed_dim": 64}}
    wide = quick_checkpoint(str(root / "model64"), x[:1000, None], y[:1000], classes, wide_cfg, epochs=1)
    tx = arrays["test"][0][: 2 * HALF, None].copy()
    ids = [f"t{k:05d}" for k in range(2 * HALF)]
    out = {}
    for name, model, rows, pixels in [
        ("a", ckpt, slice(0, HALF), tx[:HALF]),
        ("b", ckpt, slice(HALF, 2 * HALF), tx[HALF:]),
        ("bright", ckpt, slice(HALF, 2 * HALF), brighten(tx[HALF:], offset=70)),
        ("wide", wide, slice(0, HALF), tx[:HALF]),
    ]:
        p = Predictor(model, dtype="float32", run_id=f"run-{name}")
        folder = root / "predictions" / p.model_id / "fmnist" / f"run-{name}"
        write_run(p, str(folder), ids[rows], [f"mem://{i}" for i in ids[rows]], embed(p, pixels))
        out[name] = str(folder)
    return {"root": root, **out}


def drift(tables, ref: str, cur: str, *extra: str) -> dict:
    out = tables["root"] / "reports" / f"{ref}-{cur}"
    cfg = make_cfg(f"paths.root={tables['root']}", f"drift.reference={tables[ref]}", f"drift.current={tables[cur]}", f"drift.output={out}", *SETTINGS, *extra)
    return run_drift(cfg)


def independent(folder_a: str, folder_b: str) -> dict:
    con = duckdb.connect()
    counts = {}
    for side, f in (("a", folder_a), ("b", folder_b)):
        counts[side] = dict(con.execute(f"SELECT label, count(*) FROM read_parquet('{f}/*.parquet') WHERE error IS NULL GROUP BY 1").fetchall())
    labels = sorted(set(counts["a"]) | set(counts["b"]))
    a = np.array([counts["a"].get(c, 0) for c in labels], float)
    b = np.array([counts["b"].get(c, 0) for c in labels], float)
    expected = np.outer([a.sum(), b.sum()], a + b) / (a.sum() + b.sum())
    keep = (a + b) > 0
    chi2 = float((((np.stack([a, b]) - expected) ** 2)[:, keep] / expected[:, keep]).sum())
    p, q = np.maximum(a / a.sum(), 1e-4), np.maximum(b / b.sum(), 1e-4)
    sa = np.sort(np.array(con.execute(f"SELECT score FROM read_parquet('{folder_a}/*.parquet')").fetchnumpy()["score"], float))
    sb = np.sort(np.array(con.execute(f"SELECT score FROM read_parquet('{folder_b}/*.parquet')").fetchnumpy()["score"], float))
    grid = np.concatenate([sa, sb])
    d = np.max(np.abs(np.searchsorted(sa, grid, "right") / len(sa) - np.searchsorted(sb, grid, "right") / len(sb)))
    return {"counts": (a, b), "labels": labels, "chi2": chi2, "psi": float(((q - p) * np.log(q / p)).sum()), "ks": float(d)}


def check_report(r: dict, tables, ref: str, cur: str) -> None:
    saved = json.loads((Path(r["output"]) / "drift.json").read_text())
    assert saved["verdict"] == r["verdict"] and set(saved["tests"]) == {"label_chi2", "label_psi", "score_ks", "embedding_classifier", "embedding_mmd"}
    for name, t in saved["tests"].items():
        assert isinstance(t["statistic"], float) and isinstance(t["threshold"], float) and t["verdict"] in ("ok", "drift"), name
        assert t["verdict"] == ("drift" if t["statistic"] > t["threshold"] else "ok")
    assert set(saved["alarms"]) == {n for n, t in saved["tests"].items() if t["verdict"] == "drift"}
    ind = independent(tables[ref], tables[cur])
    assert [c["label"] for c in saved["per_class"]] == ind["labels"]
    assert [c["reference_count"] for c in saved["per_class"]] == ind["counts"][0].tolist()
    assert saved["tests"]["label_chi2"]["statistic"] == pytest.approx(ind["chi2"], rel=1e-9)
    assert saved["tests"]["label_psi"]["statistic"] == pytest.approx(ind["psi"], rel=1e-9)
    assert saved["tests"]["score_ks"]["statistic"] == pytest.approx(ind["ks"], abs=1e-12)
    for png in saved["figures"].values():
        assert Path(png).stat().st_size > 1000


def test_same_distribution_halves_do_not_alarm(tables):
    # alpha=0.001 per test: with five tests a correct report alarms here with probability < 0.5%.
    r = drift(tables, "a", "b", "drift.alpha=0.001")
    check_report(r, tables, "a", "b")
    assert r["verdict"] == "ok", r["alarms"]
    assert 0.4 < r["tests"]["embedding_classifier"]["statistic"] < 0.56


def test_planted_strong_shift_alarms(tables):
    r = drift(tables, "a", "bright", "drift.alpha=0.001")
    check_report(r, tables, "a", "bright")
    assert r["verdict"] == "drift"
    assert {"embedding_classifier", "embedding_mmd"} <= set(r["alarms"])
    assert r["tests"]["embedding_classifier"]["statistic"] > 0.9


def test_bad_inputs_give_clear_errors(tables):
    with pytest.raises(FileNotFoundError, match="drift.current=.*no predictions Parquet files"):
        run_drift(make_cfg(f"drift.reference={tables['a']}", f"drift.current={tables['root'] / 'missing'}"))
    with pytest.raises(ValueError, match="set drift.reference"):
        run_drift(make_cfg(f"drift.current={tables['a']}"))
    with pytest.raises(ValueError, match="embedding dimensions differ: drift.reference has 128, drift.current has 64"):
        drift(tables, "a", "wide")
    # Labels and confidence only: two models can still be compared.
    r = drift(tables, "a", "wide", "drift.embedding=false")
    assert set(r["tests"]) == {"label_chi2", "label_psi", "score_ks"} and r["notes"]
