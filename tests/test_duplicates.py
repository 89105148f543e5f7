"""Near-duplicate groups on a real backfill (real local Ray, real Parquet, read back with DuckDB) of
a small catalog with planted duplicates: exact copies and lightly brightened copies of Fashion-MNIST
images, embedded by a trained small CNN. Every result is checked against an independent numpy
brute force, union-find and a set count of leakage."""

from __future__ import annotations

import io
import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from catalog_vision.analytics import connected_groups, run_duplicates
from catalog_vision.analytics.shifts import brighten
from catalog_vision.backfill.run import backfill
from conftest import make_cfg

N, N_TRAIN, N_COPIES, N_ALTERED = 240, 160, 12, 12
THRESHOLD = 0.99


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def trained(small_cnn, fmnist_arrays):
    """The session's small CNN (conftest.small_cnn: quick_checkpoint on 4,000 training images)."""
    return {"checkpoint": small_cnn, "arrays": fmnist_arrays, "classes": make_cfg("experiment=smoke")["data"]["classes"]}


@pytest.fixture(scope="module")
def planted(tmp_path_factory, trained, ray_local):
    """240 test images (160 as train, 80 as test), 12 exact copies of train images filed as test,
    12 brightened (+3 levels) copies of test images filed as train, and one corrupt file."""
    root = tmp_path_factory.mktemp("planted")
    images = root / "images"
    images.mkdir()
    x, y = trained["arrays"]["test"]
    classes = trained["classes"]
    rows = []

    def add(image_id, data, label, split):
        (images / f"{image_id}.png").write_bytes(data)
        rows.append({"image_id": image_id, "uri": str(images / f"{image_id}.png"), "label": label, "split": split})

    for k in range(N):
        add(f"orig-{k:03d}", png(x[k]), classes[y[k]], "train" if k < N_TRAIN else "test")
    for k in range(N_COPIES):
        add(f"copy-{k:03d}", png(x[k]), classes[y[k]], "test")
    for k in range(N_TRAIN, N_TRAIN + N_ALTERED):
        add(f"alt-{k:03d}", png(brighten(x[k], offset=3)), classes[y[k]], "train")
    add("bad-000", b"not an image", "Bag", "test")
    manifest = root / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    cfg = make_cfg(
        "experiment=smoke", f"paths.root={root}", f"data.manifest={manifest}", "data.split=null", "data.catalog_id=planted",
        f"predictor.checkpoint={trained['checkpoint']}", "predictor.dtype=float32", f"duplicates.threshold={THRESHOLD}",
        "duplicates.contact_sheet.groups=6", "duplicates.contact_sheet.per_group=4", "duplicates.contact_sheet.thumb=32",
    )
    run = backfill(cfg)
    assert run["counts"]["errors"] == 1
    return {"cfg": cfg, "run": run, "manifest": str(manifest), "table": str(Path(run["output"]).parent)}


def brute_force(table: str, manifest: str, threshold: float):
    """Independent: DuckDB reads the Parquet, numpy compares every pair in float64, union-find groups."""
    con = duckdb.connect()
    rows = con.execute(f"SELECT image_id, embedding FROM read_parquet('{table}/*/*.parquet') WHERE error IS NULL ORDER BY image_id").fetchall()
    ids = [r[0] for r in rows]
    x = np.array([r[1] for r in rows], dtype=np.float64)
    sim = x @ x.T
    a, b = np.nonzero(np.triu(sim >= threshold, 1))
    pairs = {(ids[i], ids[j]) for i, j in zip(a, b)}
    parent = {i: i for i in ids}

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[find(i)] = find(j)
    comps: dict[str, set] = {}
    for i in {v for p in pairs for v in p}:
        comps.setdefault(find(i), set()).add(i)
    split = dict(con.execute(f"SELECT image_id, split FROM read_parquet('{manifest}')").fetchall())
    leaked = {t for p in pairs for s, t in (p, p[::-1]) if split[s] == "train" and split[t] == "test"}
    return pairs, {frozenset(c) for c in comps.values()}, leaked, ids


def test_connected_groups_are_transitive():
    # 0~1, 1~2 (0 and 2 not paired) -> one group of 3; 3~4 another; 5 in no pair.
    group, sizes = connected_groups(6, np.array([0, 1, 3]), np.array([1, 2, 4]))
    assert group.tolist() == [0, 0, 0, 1, 1, -1] and sizes.tolist() == [3, 2]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["exact", "ivf"])
def test_duplicates_equal_brute_force(planted, method, tmp_path):
    cfg = {**planted["cfg"], "duplicates": {**planted["cfg"]["duplicates"], "method": method, "output": str(tmp_path / method)}}
    s = run_duplicates(cfg)
    pairs, comps, leaked, ids = brute_force(planted["table"], planted["manifest"], THRESHOLD)
    assert "bad-000" not in ids and s["images"] == len(ids) == N + N_COPIES + N_ALTERED and s["error_rows_skipped"] == 1

    con = duckdb.connect()
    out = s["output"]
    got_pairs = {tuple(sorted(r)) for r in con.execute(f"SELECT image_id_a, image_id_b FROM read_parquet('{out}/pairs.parquet')").fetchall()}
    assert got_pairs == pairs and s["pairs"] == len(pairs)
    groups = con.execute(
        f"SELECT duplicate_group_id, list(image_id), count(*), min(group_size), max(group_size) FROM read_parquet('{out}/groups.parquet') GROUP BY 1"
    ).fetchall()
    assert {frozenset(g[1]) for g in groups} == comps
    assert all(g[2] == g[3] == g[4] for g in groups) and s["groups"] == len(comps)
    # The planted duplicates are found: every exact copy with its original, every brightened copy too.
    for k in range(N_COPIES):
        assert (f"copy-{k:03d}", f"orig-{k:03d}") in pairs
    for k in range(N_TRAIN, N_TRAIN + N_ALTERED):
        assert (f"alt-{k:03d}", f"orig-{k:03d}") in pairs
    # Leakage: test images with a near-duplicate in train, counted independently.
    assert s["leakage"]["target_with_duplicate_in_source"] == len(leaked) >= N_COPIES + N_ALTERED
    summary = json.loads((Path(out) / "summary.json").read_text())
    assert summary["leakage"]["target_with_duplicate_in_source"] == len(leaked) and summary["search"]["method"] == method
    sheet = Image.open(Path(out) / "contact_sheet.png")
    assert sheet.size == (150 + 4 * 40, min(6, len(comps)) * 40)


@pytest.mark.slow
def test_duplicates_bad_inputs(planted, tmp_path):
    cfg = {**planted["cfg"], "duplicates": {**planted["cfg"]["duplicates"], "predictions": str(tmp_path / "nothing-here")}}
    with pytest.raises(FileNotFoundError, match="no predictions Parquet files"):
        run_duplicates(cfg)
    cfg["duplicates"] = {**planted["cfg"]["duplicates"], "method": "hnsw"}
    with pytest.raises(ValueError, match="duplicates.method='hnsw'"):
        run_duplicates(cfg)
