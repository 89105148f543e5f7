"""One manifest reader: CSV and Parquet manifests give ids and labels as strings everywhere, so
zero-padded ids survive from the manifest to the predictions, the query summary and the
evaluation's ground truth (review 3.10)."""

import pyarrow.parquet as pq

from catalog_vision.backfill.run import backfill
from catalog_vision.ingest.catalog import catalog_table
from catalog_vision.evaluate import ground_truth
from catalog_vision.backfill.query import read_manifest, read_predictions, summarize
from conftest import make_cfg


def test_zero_padded_csv_ids_survive_everywhere(ray_local, local_catalog, random_checkpoint, tmp_path):
    source = pq.read_table(local_catalog["cfg"]["data"]["manifest"]).slice(0, 30)
    base = local_catalog["cfg"]["data"]["manifest"].rsplit("/", 1)[0]
    uris = [u if u.startswith("/") else f"{base}/{u}" for u in source.column("uri").to_pylist()]
    labels = source.column("label").to_pylist()
    # Ids a type-inferring reader would turn into the integers 7, 42 and 42: three distinct strings.
    ids = ["0007", "042", "42"] + [f"{i:06d}" for i in range(100, 127)]
    lines = ["image_id,uri,label,split"] + [f"{i},{u},{lab},test" for i, u, lab in zip(ids, uris, labels)]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    cfg = make_cfg(
        "experiment=smoke", f"data.manifest={manifest}", "data.split=test", f"predictor.checkpoint={random_checkpoint}", f"paths.output={tmp_path}/out"
    )

    assert catalog_table(cfg["data"], cfg["storage"]).column("image_id").to_pylist() == ids
    assert read_manifest(str(manifest)).column("image_id").to_pylist() == ids
    truth, _ = ground_truth(cfg, "test", "multiclass")
    assert dict(zip(truth.column("image_id").to_pylist(), truth.column("label").to_pylist())) == dict(zip(ids, labels))

    out = backfill(cfg)
    preds = read_predictions(out["output"]).to_pylist()
    assert sorted(r["image_id"] for r in preds) == sorted(ids)
    # The summary joins predictions to the manifest by the id strings: every row matches once.
    s = summarize(out["output"], str(manifest))
    ok = [r for r in preds if r["error"] is None]
    assert s["labeled_rows"] == len(ok) == 30
    truth_by_id = dict(zip(ids, labels))
    assert abs(s["accuracy"] - sum(r["label"] == truth_by_id[r["image_id"]] for r in ok) / len(ok)) < 1e-9
