"""The analyst notebook runs top to bottom against a real backfill (its asserts check the data)."""

import nbclient
import nbformat

from catalog_vision.backfill import backfill
from conftest import REPO, make_cfg

NOTEBOOK = REPO / "notebooks" / "01-query-predictions.ipynb"


def test_query_notebook_executes(local_catalog, random_checkpoint, tmp_path, monkeypatch):
    cfg = make_cfg("experiment=smoke", f"paths.root={local_catalog['root']}", f"paths.output={tmp_path}", f"predictor.checkpoint={random_checkpoint}")
    out = backfill(cfg)
    monkeypatch.setenv("CV_PREDICTIONS", out["output"])
    monkeypatch.setenv("CV_MANIFEST", cfg["data"]["manifest"])
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "128" in text  # the run's row count shows up in the overview
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
