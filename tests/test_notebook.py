"""The analyst notebook runs top to bottom against a real backfill (its asserts check the data), and
the numbers it shows are those of the run, recomputed here from the Parquet and the manifest."""

import json

import nbclient
import nbformat
import pyarrow.parquet as pq

from catalog_vision.backfill.run import backfill
from catalog_vision.backfill.query import read_predictions
from conftest import REPO, make_cfg

NOTEBOOK = REPO / "notebooks" / "01-query-predictions.ipynb"

# Run in the notebook's kernel after its last cell: the values its tables show.
PROBE = """import json
print("PROBE " + json.dumps({
    "overview": {k: (v.item() if hasattr(v, "item") else v) for k, v in overview.iloc[0].to_dict().items()},
    "accuracy": {k: float(v) for k, v in accuracy.iloc[0].to_dict().items()},
    "labels": {r.label: int(r.n) for r in labels.itertuples()},
    "embed_dim": int(EMBED_DIM),
    "nearest": neighbours.image_id.tolist(),
}))"""


def test_query_notebook_executes(local_catalog, random_checkpoint, tmp_path, monkeypatch):
    cfg = make_cfg("experiment=smoke", f"paths.root={local_catalog['root']}", f"paths.output={tmp_path}", f"predictor.checkpoint={random_checkpoint}")
    out = backfill(cfg)
    monkeypatch.setenv("CV_PREDICTIONS", out["output"])
    monkeypatch.setenv("CV_MANIFEST", cfg["data"]["manifest"])
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    (line,) = [ln for o in nb.cells[-1].outputs for ln in o.get("text", "").splitlines() if ln.startswith("PROBE ")]
    seen = json.loads(line.removeprefix("PROBE "))

    # The same numbers from the run's Parquet and the manifest, in plain Python.
    rows = read_predictions(out["output"]).to_pylist()
    truth = {r["image_id"]: r["label"] for r in pq.read_table(cfg["data"]["manifest"]).to_pylist()}
    good = [r for r in rows if r["error"] is None]
    assert len(rows) == out["counts"]["inputs"] == 128
    o = seen["overview"]
    assert (o["rows"], o["predicted"], o["errors"], o["distinct_image_ids"]) == (128, len(good), 128 - len(good), 128)
    assert (o["model_id"], o["run_id"], o["low_confidence"]) == (out["model_id"], out["run_id"], sum(r["low_confidence"] for r in good))
    assert seen["accuracy"]["labeled_rows"] == 128
    assert seen["accuracy"]["top1_accuracy"] == sum(r["label"] == truth[r["image_id"]] for r in good) / len(good)
    assert seen["accuracy"]["topk_accuracy"] == sum(truth[r["image_id"]] in r["topk_labels"] for r in good) / len(good)
    counts = {}
    for r in good:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    assert seen["labels"] == counts
    assert seen["embed_dim"] == len(good[0]["embedding"]) == 128
    assert seen["nearest"][0] == min(r["image_id"] for r in good)  # the query image (CV_QUERY_IMAGE unset) comes first
