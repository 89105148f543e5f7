"""The README's "Bring your own catalog" road, end to end on the photo-like catalog in the S3
endpoint: import class folders → train an RGB model (classes from the data) → backfill every image
→ DuckDB query summary → evaluation report. Shrunk for CPU: 32-pixel crops, one epoch."""

from __future__ import annotations

import pytest

from catalog_vision import checkpoint as ckpt
from catalog_vision.backfill.run import backfill
from catalog_vision.catalogs import make_catalog, read_table_file
from catalog_vision.evaluate import evaluate
from catalog_vision.backfill.query import query
from catalog_vision.train.trainer import train
from conftest import BUCKET, make_cfg


@pytest.mark.slow
def test_photos_in_class_folders_to_labeled_parquet(photo_catalog, ray_local, capsys):
    root = f"s3://{BUCKET}/own-catalog"
    cfg = make_cfg(
        "storage=s3",
        "experiment=photos",
        f"paths.root={root}",
        "source=folders",
        f"source.prefix={photo_catalog['prefix']}",
        "source.group_pattern='^(.+)-[0-9]+$'",
        "data.preprocessing.image_size=[32,32]",
        "data.splits={train: 0.6, val: 0.2, test: 0.2}",
        "trainer.epochs=1",
        "trainer.batch_size=16",
        "trainer.shuffle_buffer=64",
        "predictor.min_actors=1",
        "predictor.max_actors=1",
        "output.rows_per_file=1000",
    )
    storage = cfg["storage"]
    photos = photo_catalog["summary"]

    # [1] Import: every photo once, products never across splits, the export's other files counted.
    summary = make_catalog(cfg)
    manifest = read_table_file(cfg["data"]["manifest"], storage)
    assert summary["images"] == manifest.num_rows == photos["photos"]
    assert summary["groups"]["groups"] == photos["products"] and summary["groups"]["spanning_splits"] == 0
    assert summary["read"]["skipped_by_extension"].get(".heic") == 1 and summary["read"]["skipped_by_extension"].get(".csv") == 2
    leaf = sorted({c.rsplit("/", 1)[-1] for c in photos["products_per_class"]})
    assert len(leaf) == photos["classes"]
    assert sorted(summary["per_class"]) == leaf

    # [2] Train: classes come from the manifest, RGB photos centre-cropped, stored in the checkpoint.
    trained = train(cfg)
    meta = ckpt.read_meta(trained["checkpoint"], storage)
    assert meta["classes"] == leaf
    assert meta["preprocessing"]["channels"] == 3 and meta["preprocessing"]["fit"] == "center_crop"
    # Every manifest row of its split except the truncated JPEGs, which cannot be decoded.
    decodable = {s: sum(1 for sp, u in zip(manifest.column("split").to_pylist(), manifest.column("uri").to_pylist()) if sp == s and u not in photos["corrupt"]) for s in ("train", "val")}
    assert (trained["train_rows"], trained["val_rows"]) == (decodable["train"], decodable["val"])

    # [3] Backfill every image (data.split=null): the truncated JPEGs are error rows, nothing is lost.
    bf_cfg = {**cfg, "data": {**cfg["data"], "split": None}, "predictor": {**cfg["predictor"], "checkpoint": trained["checkpoint"], "dtype": "float32"}}
    run = backfill(bf_cfg)
    counts = run["counts"]
    assert counts["inputs"] == photos["photos"] == counts["predicted"] + counts["errors"]
    assert counts["errors_by_class"] == {"TruncatedImage": len(photos["corrupt"])}
    assert counts["model_rows"] == counts["model_distinct_image_ids"] == photos["photos"]

    # [4] The query summary: accuracy against the manifest's labels, per split.
    q = query(bf_cfg)
    assert q["rows"] == photos["photos"] and q["errors"] == len(photos["corrupt"])
    assert set(q["accuracy_by_split"]) == {"train", "val", "test"}
    assert sum(v["labeled_rows"] for v in q["accuracy_by_split"].values()) == photos["photos"] - len(photos["corrupt"])
    assert "by split:" in capsys.readouterr().out

    # [5] The evaluation report on the test split, from the checkpoint.
    ev_cfg = {**cfg, "evaluate": {**cfg["evaluate"], "checkpoint": trained["checkpoint"], "dtype": "float32"}}
    m = evaluate(ev_cfg, command="python jobs/evaluate.py experiment=photos")
    test_rows = sum(1 for s in manifest.column("split").to_pylist() if s == "test")
    assert m["counts"]["labeled"] == test_rows and m["counts"]["evaluated"] + m["counts"]["errors"] == test_rows
    assert m["classes"] == leaf
    # The report's top-1 is computed from its own inference pass; the backfill's Parquet, read back by
    # DuckDB, must agree on the test split (same checkpoint, float32; one image of batch-dependent rounding).
    test = q["accuracy_by_split"]["test"]
    assert test["labeled_rows"] == m["counts"]["evaluated"]
    assert abs(m["metrics"]["top1"] - test["accuracy"]) <= 1 / test_rows + 1e-9
