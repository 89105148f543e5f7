"""Similarity search on a real local Ray: an index built from the Parquet of real backfills of a
small checkpoint (with corrupt inputs), checked against exact search computed by DuckDB from the
same Parquet; incremental builds after a second backfill; an index on the S3 endpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from catalog_vision import storage as st
from catalog_vision.backfill.run import backfill
from catalog_vision.search import SimilarityIndex, UnknownImage, build_index, index_folder, similar
from catalog_vision.search.jobs import target
from catalog_vision.backfill.sink import commit_batch
from conftest import BAD_INPUTS, BUCKET, REPO, make_cfg, write_hostile_manifest

K = 10
SLOW = pytest.mark.slow  # the tests below the unit tests share a module fixture of two real backfills
# The README's exact query: one row per image (the latest run's), error rows out, cosine similarity.
EXACT_SQL = """
WITH rows AS (
  SELECT image_id, uri, label, embedding::FLOAT[{dim}] AS e FROM read_parquet('{table}/*/*.parquet')
  WHERE error IS NULL
  QUALIFY row_number() OVER (PARTITION BY image_id ORDER BY regexp_replace(run_id, '^serve-', '') DESC) = 1
), q AS (SELECT e FROM rows WHERE image_id = $query)
SELECT r.image_id, r.uri, r.label, array_cosine_similarity(r.e, q.e) AS score
FROM rows r, q WHERE CAST($label AS VARCHAR) IS NULL OR r.label = $label
ORDER BY score DESC, r.image_id LIMIT {k}
"""


def exact(table: str, query: str, k: int = K, label: str | None = None, dim: int = 128) -> list[tuple]:
    return duckdb.connect().execute(EXACT_SQL.format(table=table, k=k, dim=dim), {"query": query, "label": label}).fetchall()


def assert_same_topk(got: list[dict], want: list[tuple], tol: float = 2e-3) -> None:
    """Same scores rank by rank (float16 codes: within ``tol``), and the same images except where
    two exact scores are within ``tol`` of each other (a tie float16 may order either way)."""
    assert len(got) == len(want)
    np.testing.assert_allclose([r["score"] for r in got], [w[3] for w in want], atol=tol)
    cut = want[-1][3]
    sure = {w[0] for w in want if w[3] > cut + tol}
    assert sure <= {r["image_id"] for r in got}


def unit_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_ann_index_with_every_cell_probed_equals_numpy_and_filters_exactly():
    from catalog_vision.search import ann

    x, q = unit_vectors(3000, 32), unit_vectors(20, 32, seed=1)
    index = ann.build(x, ann.IndexParams(nlist=16, train_per_list=32))
    want = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :K]
    scores, ids = ann.search(index, q, K, nprobe=16)
    assert (ids == want).mean() > 0.99  # float16 codes: a near-tie may swap
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, want, axis=1), atol=2e-3)
    # A filter: through the cells (a large allowed set) and exactly (a small one), both = numpy on the subset.
    allowed = np.flatnonzero(np.arange(len(x)) % 3 == 0)
    sub = np.argsort(-(q @ x[allowed].T), axis=1, kind="stable")[:, :K]
    for exact_below in (0, len(allowed)):
        _, got = ann.search(index, q, K, nprobe=16, allowed=allowed, exact_below=exact_below)
        assert set(got.ravel()) <= set(allowed) and (got == allowed[sub]).mean() > 0.99
    # Fewer allowed rows than k: the rest are -1.
    _, got = ann.search(index, q[:1], K, nprobe=16, allowed=allowed[:3], exact_below=10)
    assert sorted(got[0][:3]) == sorted(allowed[:3]) and list(got[0][3:]) == [-1] * (K - 3)


def test_ann_settings_are_checked_and_cells_scale_with_rows():
    from catalog_vision.search import ann

    p = ann.IndexParams()
    assert (p.cells(100), p.cells(19_999), p.cells(100_000), p.cells(1_000_000)) == (1, 1, 1024, 4096)
    for bad, words in [({"encoding": "PQ8"}, "index.encoding='PQ8'"), ({"nprobe": 0}, "index.nprobe=0"), ({"nlist": -2}, "index.nlist=-2")]:
        with pytest.raises(ValueError, match=words):
            ann.IndexParams.from_config(bad)
    assert ann.IndexParams.from_config({"nlist": "auto"}).nlist is None


@pytest.fixture(scope="module")
def searched(ray_local, local_catalog, random_checkpoint, tmp_path_factory):
    """Two real backfills of one catalog that grows in place (100 good + 2 bad images, then all
    128 good + 4 bad), with an index built after each."""
    tmp = tmp_path_factory.mktemp("search")
    root = Path(local_catalog["root"])
    full_uri, n_good = write_hostile_manifest(str(root / "catalog" / "manifest.parquet"), str(tmp / "src"), lambda u, b: st.write_bytes(u, b))
    full = pq.read_table(full_uri)
    manifest = tmp / "manifest.parquet"
    first = pa.concat_tables([full.slice(0, 100), full.filter(pc.is_in(full["image_id"], pa.array(["bad-empty", "bad-text"])))])
    pq.write_table(first, manifest)
    cfg = make_cfg("experiment=smoke", f"paths.root={tmp}", f"data.manifest={manifest}", f"predictor.checkpoint={random_checkpoint}",
                   f"predictor.dtype_cache_dir={tmp / 'precision-cache'}")
    run_a = backfill(cfg)
    built_a = build_index(cfg)
    pq.write_table(full, manifest)
    run_b = backfill(cfg)
    built_b = build_index(cfg)
    model_id, catalog, table = target(cfg)
    return {"cfg": cfg, "runs": (run_a, run_b), "builds": (built_a, built_b), "table": table, "n_good": n_good, "tmp": tmp,
            "index": SimilarityIndex.load(index_folder(cfg))}


def good_rows(table: str) -> pa.Table:
    sql = f"SELECT image_id, uri, label, embedding FROM read_parquet('{table}/*/*.parquet') WHERE error IS NULL ORDER BY image_id"
    return duckdb.connect().sql(sql).to_arrow_table()


@SLOW
def test_index_answers_equal_exact_duckdb_search(searched):
    index, table = searched["index"], searched["table"]
    ids = good_rows(table).column("image_id").to_pylist()
    assert index.size == len(ids) == searched["n_good"]
    got = index.similar_to(ids, K).to_pylist()
    for q in ids:
        assert_same_topk([r for r in got if r["query"] == q], exact(table, q))
    # The ids come back in a table with the predictions' uri and label.
    by_id = {r["image_id"]: r for r in good_rows(table).select(["image_id", "uri", "label"]).to_pylist()}
    assert all(by_id[r["image_id"]]["uri"] == r["uri"] and by_id[r["image_id"]]["label"] == r["label"] for r in got)


@SLOW
def test_index_with_cells_probing_every_cell_is_exact_and_with_fewer_cells_recall_stays_high(searched, tmp_path):
    cfg = {**searched["cfg"], "index": {**searched["cfg"]["index"], "root": str(tmp_path), "nlist": 8, "nprobe": 8, "train_per_list": 16}}
    m = build_index(cfg)
    assert m["params"]["factory"] == "IVF8,SQfp16" and m["build"]["mode"] == "full"
    index, table = SimilarityIndex.load(index_folder(cfg)), searched["table"]
    ids = good_rows(table).column("image_id").to_pylist()[:40]
    got = index.similar_to(ids, K).to_pylist()
    for q in ids:
        assert_same_topk([r for r in got if r["query"] == q], exact(table, q))
    # Two of eight cells: an approximation. Recall against exact, stated bound for this small table.
    index.nprobe = 2
    got = index.similar_to(ids, K).to_pylist()
    hits = sum(len({r["image_id"] for r in got if r["query"] == q} & {w[0] for w in exact(table, q)}) for q in ids)
    assert hits / (K * len(ids)) >= 0.6


@SLOW
def test_own_image_comes_first_with_score_one(searched):
    index = searched["index"]
    ids = good_rows(searched["table"]).column("image_id").to_pylist()
    got = index.similar_to(ids, 3).to_pylist()
    firsts = [r for r in got if r["rank"] == 1]
    assert [r["image_id"] for r in firsts] == ids
    assert all(abs(r["score"] - 1) < 2e-3 for r in firsts)
    # exclude_self: the same answer without it.
    rest = index.similar_to(ids[:5], 2, exclude_self=True).to_pylist()
    assert all(r["image_id"] != r["query"] for r in rest)
    assert [r["image_id"] for r in rest] == [r["image_id"] for r in got if r["query"] in ids[:5] and r["rank"] in (2, 3)]


@SLOW
def test_label_filter_returns_only_that_label_and_the_exact_answer(searched):
    index, table = searched["index"], searched["table"]
    rows = good_rows(table).to_pylist()
    label = max(index.labels(), key=lambda lab: sum(r["label"] == lab for r in rows))
    other = next(r["image_id"] for r in rows if r["label"] != label)
    got = index.similar_to([other], 5, label=label).to_pylist()
    assert {r["label"] for r in got} == {label} and other not in {r["image_id"] for r in got}
    assert_same_topk(got, exact(table, other, 5, label))
    with pytest.raises(ValueError, match="no images in this index"):
        index.similar_to([other], 5, label="No such label")


@SLOW
def test_new_image_file_query_equals_the_query_by_its_backfill_embedding(searched, tmp_path):
    index, table = searched["index"], searched["table"]
    row = good_rows(table).to_pylist()[7]
    new = tmp_path / "upload.png"
    new.write_bytes(Path(row["uri"]).read_bytes())  # the same bytes under a new name: not in the index by name
    cfg = {**searched["cfg"], "similar": {**searched["cfg"]["similar"], "image": str(new), "k": K, "output": str(tmp_path / "out.json")}}
    by_file = similar(cfg, index).to_pylist()
    by_vector = index.search(np.asarray(row["embedding"], dtype=np.float32)[None], [str(new)], K).to_pylist()
    assert [r["image_id"] for r in by_file] == [r["image_id"] for r in by_vector]
    np.testing.assert_allclose([r["score"] for r in by_file], [r["score"] for r in by_vector], atol=1e-4)
    assert by_file[0]["image_id"] == row["image_id"] and by_file[0]["score"] > 0.999
    assert json.loads((tmp_path / "out.json").read_text()) == by_file


@SLOW
def test_error_rows_are_not_indexed_and_unknown_ids_get_a_clear_error(searched):
    index = searched["index"]
    b = searched["builds"][1]["build"]
    assert searched["builds"][0]["build"]["error_rows_skipped"] == 2 and b["error_rows_skipped"] == 2  # the new run's two
    indexed = set(index.rows.column("image_id").to_pylist())
    assert not indexed & set(BAD_INPUTS)
    for bad in ["bad-empty", "no-such-image"]:
        with pytest.raises(UnknownImage, match=f"image_id '{bad}' is not in the index .* only error rows"):
            index.similar_to([bad], 3)


@SLOW
def test_incremental_build_reads_only_the_new_files(searched, tmp_path):
    (_, run_b), (built_a, built_b) = searched["runs"], searched["builds"]
    assert built_a["build"]["mode"] == "full" and built_a["rows"] == 100
    b = built_b["build"]
    assert b["mode"] == "incremental" and b["reason"] is None
    new_files = set(built_b["files"]) - set(built_a["files"])
    assert new_files and all(f.startswith(run_b["output"]) for f in new_files) and b["new_files"] == len(new_files)
    assert b["added_rows"] == run_b["counts"]["predicted"] == searched["n_good"] - 100
    assert built_b["rows"] == built_b["vectors"] == searched["n_good"]
    # Nothing new: nothing read, the same files.
    again = build_index(searched["cfg"])
    assert again["build"]["mode"] == "unchanged" and again["index_file"] == built_b["index_file"]
    # The grown index answers as a full build of the same table does.
    cfg = {**searched["cfg"], "index": {**searched["cfg"]["index"], "root": str(tmp_path), "incremental": False}}
    full = build_index(cfg)
    assert full["build"]["mode"] == "full" and full["build"]["reason"] == "index.incremental=false"
    ids = good_rows(searched["table"]).column("image_id").to_pylist()
    grown = searched["index"].similar_to(ids, K).to_pylist()
    rebuilt = SimilarityIndex.load(index_folder(cfg)).similar_to(ids, K).to_pylist()
    assert [r["score"] for r in grown] == [r["score"] for r in rebuilt]  # the same codes: the same scores
    # ...and the same images but where two have the same score (row order differs between builds)
    assert sorted((r["query"], r["score"], r["image_id"]) for r in grown) == sorted((r["query"], r["score"], r["image_id"]) for r in rebuilt)


@SLOW
def test_a_later_runs_row_replaces_the_indexed_one(searched, tmp_path):
    """A served row (``serve-<run id>``) for an image already indexed: the index answers with it."""
    import shutil

    table = tmp_path / "table"
    shutil.copytree(searched["table"], table)
    cfg = {**searched["cfg"], "index": {**searched["cfg"]["index"], "root": str(tmp_path / "index"), "predictions": str(table)}}
    build_index(cfg)
    rows = pq.read_table(sorted(table.glob("*/*.parquet"))[0])
    rows = rows.filter(pc.is_valid(rows["embedding"])).slice(0, 2).combine_chunks()
    a, b = rows.column("image_id").to_pylist()
    # A later run's row for a, with b's embedding: after the next build a is found where b is.
    later = rows.slice(0, 1)
    later = later.set_column(later.schema.get_field_index("embedding"), "embedding", rows.column("embedding").slice(1, 1))
    later = later.set_column(later.schema.get_field_index("run_id"), "run_id", pa.array(["serve-99991231T000000-aaaaaa"]))
    commit_batch(later, str(table / "serve-99991231T000000-aaaaaa"))
    m = build_index(cfg)
    assert m["build"]["mode"] == "incremental" and m["build"]["superseded_rows"] == 1
    assert (m["rows"], m["vectors"], m["superseded"]) == (searched["n_good"], searched["n_good"] + 1, 1)
    got = SimilarityIndex.load(index_folder(cfg)).similar_to([b], 3).to_pylist()
    assert {r["image_id"] for r in got[:2]} == {a, b} and got[1]["score"] > 0.999
    assert_same_topk(got, exact(str(table), b, 3))


@SLOW
def test_index_on_the_s3_endpoint(searched, s3_endpoint):
    """The table copied to the S3 endpoint; the index built from it and stored there; read back."""
    storage = {"endpoint_url": s3_endpoint}
    table = f"s3://{BUCKET}/search/predictions/{Path(searched['table']).parent.name}/{Path(searched['table']).name}"
    for f in Path(searched["table"]).glob("*/*.parquet"):
        st.write_bytes(f"{table}/{f.parent.name}/{f.name}", f.read_bytes(), storage)
    cfg = make_cfg("experiment=smoke", "storage=s3", f"paths.root=s3://{BUCKET}/search", f"index.predictions={table}")
    m = build_index(cfg)
    assert m["build"]["mode"] == "full" and m["rows"] == searched["n_good"] and all(f.startswith("s3://") for f in m["files"])
    folder = index_folder(cfg)
    assert folder == f"s3://{BUCKET}/search/output/index/{Path(searched['table']).parent.name}/{Path(searched['table']).name}"
    assert st.exists(f"{folder}/{m['index_file']}", cfg["storage"])
    index = SimilarityIndex.load(folder, cfg["storage"])
    ids = good_rows(searched["table"]).column("image_id").to_pylist()[:20]
    on_s3, local = index.similar_to(ids, K).to_pylist(), searched["index"].similar_to(ids, K).to_pylist()
    assert sorted(tuple(r.values()) for r in on_s3) == sorted(tuple(r.values()) for r in local)


@SLOW
def test_similar_job_from_the_command_line(searched, tmp_path):
    cfg = searched["cfg"]
    ids = good_rows(searched["table"]).column("image_id").to_pylist()[:2]
    base = [sys.executable, str(REPO / "jobs" / "similar.py"), "experiment=smoke", f"paths.root={cfg['paths']['root']}",
            f"data.manifest={cfg['data']['manifest']}", f"predictor.checkpoint={cfg['predictor']['checkpoint']}", "similar.k=4"]
    out = tmp_path / "similar.parquet"
    ok = subprocess.run([*base, f"similar.image_id=[{ids[0]},{ids[1]}]", f"similar.output={out}"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    written = pq.read_table(out)
    assert written.column_names == ["query", "rank", "image_id", "uri", "label", "score"]
    assert written.to_pylist() == searched["index"].similar_to(ids, 4).to_pylist()
    assert f"similar to {ids[0]}:" in ok.stdout
    bad = subprocess.run([*base, "similar.image_id=bad-text"], capture_output=True, text=True, timeout=300)
    said = bad.stdout + bad.stderr
    assert bad.returncode == 2 and "image_id 'bad-text' is not in the index" in said and "Traceback" not in said


@SLOW
def test_serve_answers_get_similar_from_the_same_index(searched):
    """The Serve app over the indexed checkpoint answers ``GET /similar`` over real HTTP as the index does."""
    import requests
    from ray import serve

    from catalog_vision.serve import build_app
    from conftest import free_port

    port = free_port()
    cfg = searched["cfg"]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({**cfg, "serve": {**cfg["serve"], "port": port, "predictions": {"write": False}}}), name="search-test", route_prefix="/")
        url = f"http://127.0.0.1:{port}/similar"
        ids = good_rows(searched["table"]).column("image_id").to_pylist()
        for q in ids[:5]:
            r = requests.get(url, params={"image_id": q, "k": 5}, timeout=60)
            assert r.status_code == 200, r.text
            body = r.json()
            want = searched["index"].similar_to([q], 5).drop_columns(["query"]).to_pylist()
            assert body["model_id"] == searched["index"].manifest["model_id"] and body["results"] == want
        label = searched["index"].labels()[0]
        got = requests.get(url, params={"image_id": ids[0], "k": 3, "label": label}, timeout=60).json()["results"]
        assert got and {r["label"] for r in got} == {label}
        for params, status, words in [({"image_id": "bad-text"}, 404, "not in the index"), ({"image_id": ids[0], "k": 0}, 422, "k=0"),
                                      ({"image_id": ids[0], "label": "nope"}, 422, "no images"), ({}, 422, "invalid request")]:
            r = requests.get(url, params=params, timeout=60)
            assert r.status_code == status and words in r.json()["error"], r.text
    finally:
        serve.shutdown()
