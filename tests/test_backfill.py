"""Backfills on a real local Ray, from a local folder and from a real S3 endpoint over HTTP."""

import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog_vision import make_catalog
from catalog_vision.backfill.run import backfill
from catalog_vision import storage as st
from catalog_vision.ingest.catalog import list_images
from catalog_vision.ingest.images import Preprocessing, decode
from catalog_vision.infer.predictor import Predictor
from catalog_vision.backfill.query import read_predictions, summarize
from conftest import BAD_INPUTS, BUCKET, make_cfg, write_hostile_manifest

EXPECTED_ERRORS = {cls: 1 for _, _, cls in BAD_INPUTS.values()}


def check_run(manifest: dict, n_good: int, storage: dict) -> pa.Table:
    counts = manifest["counts"]
    assert counts["inputs"] == n_good + len(BAD_INPUTS) and counts["skipped"] == 0
    assert counts["predicted"] == n_good and counts["errors"] == len(BAD_INPUTS)
    assert counts["inputs"] == counts["predicted"] + counts["errors"] == counts["model_rows"] == counts["model_distinct_image_ids"]
    assert counts["errors_by_class"] == EXPECTED_ERRORS
    table = read_predictions(manifest["output"], storage)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 128)
    rows = table.to_pylist()
    by_id = {r["image_id"]: r for r in rows}
    assert len(by_id) == len(rows) == counts["inputs"]
    for image_id, (_, _, cls) in BAD_INPUTS.items():
        r = by_id[image_id]
        assert r["error"].startswith(cls + ": ") and r["label"] is None and r["embedding"] is None
    good = [r for r in rows if r["error"] is None]
    for r in good:
        assert r["label"] == r["topk_labels"][0] and r["labels"] == [r["label"]]
        assert len(r["topk_labels"]) == 5 and r["topk_scores"] == sorted(r["topk_scores"], reverse=True)
        assert abs(r["score"] - r["topk_scores"][0]) < 1e-6
        assert r["low_confidence"] == (r["score"] < 0.5)
        assert abs(np.linalg.norm(r["embedding"]) - 1) < 1e-4
        assert r["model_id"] == manifest["model_id"] and r["run_id"] == manifest["run_id"]
    return table


def test_local_backfill_with_corrupt_inputs(local_catalog, random_checkpoint, tmp_path):
    root = Path(local_catalog["root"])
    manifest_uri, n_good = write_hostile_manifest(str(root / "catalog" / "manifest.parquet"), str(tmp_path), lambda u, b: st.write_bytes(u, b))
    cfg = make_cfg(
        "experiment=smoke",
        f"paths.root={tmp_path}",
        f"data.manifest={manifest_uri}",
        f"predictor.checkpoint={random_checkpoint}",
        f"predictor.dtype_cache_dir={tmp_path / 'precision-cache'}",
        "+storage.aws_secret_access_key=sneaky-value",
    )
    out = backfill(cfg)
    table = check_run(out, n_good, cfg["storage"])

    # DuckDB reads the Parquet straight from disk.
    files = f"{out['output']}/*.parquet"
    n, distinct, dim = duckdb.connect().execute(f"SELECT count(*), count(DISTINCT image_id), max(len(embedding)) FROM read_parquet('{files}')").fetchone()
    assert (n, distinct, dim) == (n_good + 4, n_good + 4, 128)

    # The dead-letter table: one row per failure, with its class.
    dead = pq.read_table(out["dead_letter"]).to_pylist()
    assert {r["image_id"]: r["error_class"] for r in dead} == {k: v[2] for k, v in BAD_INPUTS.items()}
    assert not list(Path(out["output"]).glob("*dead*"))  # kept apart from the predictions table

    # The run manifest beside the Parquet, with the secret redacted.
    run = json.loads((Path(out["output"]) / "_run.json").read_text())
    assert run["counts"] == out["counts"] and "sneaky-value" not in json.dumps(run)
    assert run["config"]["storage"]["aws_secret_access_key"] == "***"
    # dtype=auto: the actors timed the model here and the manifest says what they chose and why.
    pred = run["predictor"]
    assert pred["dtype"] == "auto" and pred["resolved_dtype"] == pred["dtype_choice"]["dtype"]
    assert set(pred["dtype_choice"]["seconds_per_image"]) == {"float32", "bfloat16"}
    assert [h["device"] for h in pred["hosts"]] == ["cpu"]
    assert not (Path(out["output"]) / "_precision").exists()  # the per-host reports are folded in
    # The actors' start-up: every actor reported (smoke: 1 or 2, more only after a restart), the first
    # was ready within the pipeline, and its process started before its __init__ did.
    t, actors = run["timings"], pred["actors"]
    assert cfg["predictor"]["min_actors"] <= actors["started"] and 0 < t["first_actor_ready_s"] < t["pipeline_s"]
    assert 0 < actors["init_s"] < actors["startup_s"] < t["total_s"]

    # Offline == direct: the same checkpoint on the same bytes gives the same label and score.
    # The dtype the backfill ran: dtype=auto is a per-host timing, and the machine-wide cache may hold another choice.
    predictor = Predictor(random_checkpoint, topk=5, dtype=pred["resolved_dtype"])
    spec = Preprocessing.from_dict(predictor.loaded.preprocessing)
    sample = [r for r in table.to_pylist() if r["error"] is None][:16]
    pixels = np.stack([decode(Path(r["uri"]).read_bytes(), spec) for r in sample])
    probs, emb = predictor.predict_pixels(pixels)
    for r, p, e in zip(sample, probs, emb):
        assert r["label"] == predictor.classes[int(p.argmax())]
        assert abs(r["score"] - float(p.max())) < 1e-5
        np.testing.assert_allclose(r["embedding"], e, atol=1e-5)

    # The same model again: everything is already labeled, nothing is redone or duplicated.
    again = backfill(cfg)
    assert again["run_id"] != out["run_id"]
    assert again["counts"]["skipped"] == n_good + 4 and again["counts"]["predicted"] == again["counts"]["errors"] == 0
    assert again["counts"]["model_rows"] == again["counts"]["model_distinct_image_ids"] == n_good + 4


def test_backfill_from_a_listed_prefix(local_catalog, random_checkpoint, tmp_path):
    """Folder-per-class layout: labels come from folder names; no manifest needed."""
    src = Path(local_catalog["root"]) / "catalog" / "images"
    prefix = tmp_path / "by_class"
    for i, f in enumerate(sorted(src.glob("test-*.png"))[:20]):
        cls = ["Bag", "Sandal"][i % 2]
        (prefix / cls).mkdir(parents=True, exist_ok=True)
        (prefix / cls / f.name).write_bytes(f.read_bytes())
    (prefix / "Bag" / "broken.png").write_bytes(b"GIF89a-not-really")
    listed = list_images(str(prefix))
    assert listed.num_rows == 21 and set(listed.column("label").to_pylist()) == {"Bag", "Sandal"}
    cfg = make_cfg("experiment=smoke", f"paths.root={tmp_path}", f"data.images_prefix={prefix}", "data.split=null", f"predictor.checkpoint={random_checkpoint}")
    out = backfill(cfg)
    assert out["counts"]["inputs"] == 21 and out["counts"]["errors_by_class"] == {"NotAnImage": 1}


def test_actor_tasks_of_several_batches_label_like_tasks_of_one(local_catalog, random_checkpoint, tmp_path):
    """predictor.batches_per_task: auto hands each actor several batches per task on a small-image
    catalog (plan.batches_per_task); the table is the one tasks of a single batch write."""
    manifest = Path(local_catalog["root"]) / "catalog" / "manifest.parquet"
    n = pq.read_metadata(manifest).num_rows
    outs = {}
    for k in ("auto", 1):
        cfg = make_cfg("experiment=smoke", f"paths.root={tmp_path / str(k)}", f"data.manifest={manifest}", "data.split=null",
                       f"predictor.checkpoint={random_checkpoint}", "predictor.batch_size=16", f"predictor.batches_per_task={k}",
                       "predictor.dtype=float32", "predictor.model_batch=null")
        outs[k] = backfill(cfg)
        assert outs[k]["counts"]["predicted"] == outs[k]["counts"]["model_distinct_image_ids"] == n
    k = outs["auto"]["predictor"]["batches_per_task"]
    assert outs[1]["predictor"]["batches_per_task"] == 1
    assert k > 1 and n // (16 * k) >= 4  # several batches per task, still at least 4 tasks for the one actor
    con = duckdb.connect()
    a, b = (f"read_parquet('{outs[x]['output']}/*.parquet')" for x in ("auto", 1))
    diff = con.execute(f"""select count(*), max(abs(a.score - b.score)), sum((a.label <> b.label)::int),
                           max(list_cosine_similarity(a.embedding, b.embedding)), min(list_cosine_similarity(a.embedding, b.embedding))
                           from {a} a join {b} b using (image_id)""").fetchone()
    assert diff[0] == n and diff[1] < 1e-6 and diff[2] == 0 and diff[4] > 1 - 1e-6


@pytest.mark.slow
def test_s3_catalog_and_backfill(ray_local, s3_endpoint, fmnist, random_checkpoint):
    """The same code over a real S3 endpoint: catalog written to S3, read from S3, Parquet to S3."""
    root = f"s3://{BUCKET}/s3run"
    cfg = make_cfg("experiment=smoke", "storage=s3", f"paths.root={root}", f"data.source={fmnist}", "data.limit.train=64", "data.limit.val=32", "data.limit.test=96")
    assert cfg["storage"]["endpoint_url"] == s3_endpoint
    summary = make_catalog(cfg)
    assert summary["images"] == 64 + 32 + 96
    storage = cfg["storage"]
    manifest_uri, n_good = write_hostile_manifest(summary["manifest"], root, lambda u, b: st.write_bytes(u, b, storage))
    # The checkpoint lives in the bucket too.
    from catalog_vision import checkpoint as ckpt

    s3_ckpt = ckpt.copy(random_checkpoint, f"{root}/models/random", storage)
    cfg = make_cfg("experiment=smoke", "storage=s3", f"paths.root={root}", f"data.manifest={manifest_uri}", f"predictor.checkpoint={s3_ckpt}")
    out = backfill(cfg)
    assert out["output"].startswith(f"s3://{BUCKET}/s3run/output/predictions/")
    table = check_run(out, n_good, storage)
    s = summarize(out["output"], summary["manifest"], storage)
    assert s["rows"] == n_good + 4 and s["errors"] == 4 and s["labeled_rows"] == n_good
    # The accuracy: the rows read back from the bucket joined here with the catalog's manifest.
    import io

    con = duckdb.connect()
    con.register("p", table)
    con.register("m", pq.read_table(io.BytesIO(st.read_bytes(summary["manifest"], storage))))
    n, hits = con.execute("SELECT count(*), sum(CAST(p.label = m.label AS INT)) FROM p JOIN m ON p.image_id = m.image_id WHERE p.error IS NULL").fetchone()
    assert n == n_good and s["accuracy"] == hits / n, (s["accuracy"], hits, n)
    # The run manifest is in the bucket beside the Parquet.
    run = st.read_json(f"{out['output']}/_run.json", storage)
    assert run["counts"]["inputs"] == n_good + 4
    import boto3

    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=out["output"].split(BUCKET + "/", 1)[1])["Contents"]]
    assert any(k.endswith(".parquet") for k in keys) and any(k.endswith("_run.json") for k in keys)
