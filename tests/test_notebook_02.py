"""Notebook 02 (similar images, near-duplicates, leakage, drift) runs top to bottom against real
backfills (real local Ray, a small CNN trained in the fixture) and a real index; its own asserts
compare every answer with DuckDB / numpy, and this test fails on any error output."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nbclient
import nbformat
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog_vision.analytics.shifts import brighten
from catalog_vision.backfill.run import backfill
from catalog_vision.search import build_index, index_folder
from conftest import REPO, make_cfg
from test_duplicates import png

NOTEBOOK = REPO / "notebooks" / "02-search-and-drift.ipynb"
N, N_TRAIN, N_COPIES = 200, 140, 8
THRESHOLD = 0.99  # the session's small CNN (conftest.small_cnn), as in test_duplicates.py


def write_catalog(root: Path, rows: list[tuple[str, bytes, str, str]]) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    table = []
    for image_id, data, label, split in rows:
        (images / f"{image_id}.png").write_bytes(data)
        table.append({"image_id": image_id, "uri": str(images / f"{image_id}.png"), "label": label, "split": split})
    pq.write_table(pa.Table.from_pylist(table), root / "manifest.parquet")
    return root / "manifest.parquet"


@pytest.fixture(scope="module")
def backfills(tmp_path_factory, fmnist_arrays, small_cnn, ray_local):
    """Two backfills by one trained checkpoint (the session's small CNN, conftest.small_cnn): a
    catalog of 200 Fashion-MNIST test images (140 train, 60 test) plus 8 exact copies of train
    images filed as test and a corrupt file, indexed; and the same 200 images brightened (+70
    levels) as a second catalog."""
    tmp = tmp_path_factory.mktemp("nb02")
    classes = make_cfg("experiment=smoke")["data"]["classes"]
    checkpoint = small_cnn
    tx, ty = fmnist_arrays["test"]
    plain = [(f"orig-{k:03d}", png(tx[k]), classes[ty[k]], "train" if k < N_TRAIN else "test") for k in range(N)]
    plain += [(f"copy-{k:03d}", png(tx[k]), classes[ty[k]], "test") for k in range(N_COPIES)]
    plain.append(("bad-000", b"not an image", "Bag", "test"))
    bright = [(f"orig-{k:03d}", png(brighten(tx[k], offset=70)), classes[ty[k]], "train" if k < N_TRAIN else "test") for k in range(N)]
    root = tmp / "root"
    out = {}
    for name, rows in [("plain", plain), ("bright", bright)]:
        manifest = write_catalog(tmp / name, rows)
        cfg = make_cfg("experiment=smoke", f"paths.root={root}", f"data.manifest={manifest}", "data.split=null", f"data.catalog_id=nb02-{name}",
                       f"predictor.checkpoint={checkpoint}", "predictor.dtype=float32")
        out[name] = {"cfg": cfg, "run": backfill(cfg), "manifest": str(manifest)}
    out["index"] = build_index(out["plain"]["cfg"])
    out["index_folder"] = index_folder(out["plain"]["cfg"])
    return out


def outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


@pytest.mark.slow
def test_search_and_drift_notebook_executes(backfills, tmp_path, monkeypatch):
    plain, bright = backfills["plain"], backfills["bright"]
    assert plain["run"]["counts"]["errors"] == 1 and backfills["index"]["rows"] == N + N_COPIES
    table = Path(plain["run"]["output"]).parent
    assert Path(backfills["index_folder"]) == table.parents[2] / "index" / table.parent.name / table.name  # the notebook's default CV_INDEX
    monkeypatch.setenv("CV_TABLE", str(table))
    monkeypatch.setenv("CV_MANIFEST", plain["manifest"])
    monkeypatch.setenv("CV_QUERY_IMAGES", "copy-000,orig-150")
    monkeypatch.setenv("CV_THRESHOLD", str(THRESHOLD))
    monkeypatch.setenv("CV_REFERENCE", plain["run"]["output"])
    monkeypatch.setenv("CV_CURRENT", bright["run"]["output"])
    monkeypatch.setenv("CV_OUTPUT", str(tmp_path / "out"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not outputs(nb), "the notebook is stored without outputs"
    t0 = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    print(f"notebook executed in {time.perf_counter() - t0:.1f} s (load average {os.getloadavg()[0]:.1f})")

    outs = outputs(nb)
    errors = [o for o in outs if o.get("output_type") == "error"]
    assert not errors, "\n".join(e.get("ename", "") + ": " + e.get("evalue", "") for e in errors)
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outs)
    pngs = [o for o in outs if "image/png" in o.get("data", {})]
    # Thumbnails of similar images, the contact sheet, leaked pairs, three drift figures.
    assert len(pngs) >= 6, f"{len(pngs)} PNG outputs"
    assert "(exact)" in text and "recall@10 1.0000" in text  # one cell at this size: the index is exact
    # Each planted copy is a test image whose original is in train: at least 8 leaked.
    summary = json.loads((tmp_path / "out" / "duplicates" / "summary.json").read_text())
    leaked = summary["leakage"]["target_with_duplicate_in_source"]
    assert leaked >= N_COPIES and f"leakage: {leaked} of {N - N_TRAIN + N_COPIES} test images" in text  # the corrupt file has no row
    pairs = {tuple(sorted(p)) for p in pq.read_table(tmp_path / "out" / "duplicates" / "pairs.parquet").select(["image_id_a", "image_id_b"]).to_pylist()
             for p in [tuple(p.values())]}
    assert {(f"copy-{k:03d}", f"orig-{k:03d}") for k in range(N_COPIES)} <= pairs
    # The brightened backfill drifted, and the report the notebook read back says so.
    report = json.loads((tmp_path / "out" / "drift" / "drift.json").read_text())
    assert report["verdict"] == "drift" and "embedding_classifier" in report["alarms"] and "drift verdict: drift" in text
    assert report["reference"]["rows"] == N + N_COPIES and report["current"]["rows"] == N
