"""Analyst queries over backfill outputs with DuckDB.

Files are opened through the project's filesystem layer (local or any S3 endpoint) and handed to
DuckDB as Arrow, so no DuckDB extension has to be downloaded at run time.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.dataset as pads

from .. import storage as st
from .sink import committed_files
from .tables import catalog_id, table_dir


def read_predictions(uri: str, storage: Mapping[str, Any] | None = None, columns: list[str] | None = None) -> pa.Table:
    """All Parquet files under ``uri`` (a run folder, a model folder or the predictions root)."""
    files = committed_files(uri, storage)
    if not files:
        raise FileNotFoundError(f"no Parquet files under {uri!r}")
    fs, _ = st.resolve(uri, storage)
    return pads.dataset([st.resolve(f, storage)[1] for f in files], filesystem=fs, format="parquet").to_table(columns=columns)


def read_manifest(uri: str, storage: Mapping[str, Any] | None = None) -> pa.Table:
    """The manifest as written (every column), through the one CSV/Parquet reader."""
    from ..catalogs.table import read_table_file

    return read_table_file(uri, storage)


def summarize(predictions: str, manifest: str | None = None, storage: Mapping[str, Any] | None = None, top: int = 10) -> dict:
    """Label counts, low-confidence queue size, errors by class, and accuracy against the manifest."""
    import duckdb

    con = duckdb.connect()
    preds = read_predictions(predictions, storage, columns=["image_id", "label", "score", "low_confidence", "error"])
    con.register("preds", preds)
    out: dict[str, Any] = {}
    out["rows"], out["errors"], out["low_confidence"], out["mean_score"] = con.execute(
        "SELECT count(*), count(error), count(*) FILTER (WHERE low_confidence), avg(score) FROM preds"
    ).fetchone()
    out["label_counts"] = dict(con.execute("SELECT label, count(*) n FROM preds WHERE error IS NULL GROUP BY label ORDER BY n DESC, label").fetchall())
    out["errors_by_class"] = dict(
        con.execute("SELECT split_part(error, ':', 1) AS cls, count(*) FROM preds WHERE error IS NOT NULL GROUP BY cls ORDER BY cls").fetchall()
    )
    if manifest:
        manifest_table = read_manifest(manifest, storage)
        con.register("manifest", manifest_table)
        row = con.execute(
            """SELECT count(*) AS n, avg(CASE WHEN p.label = m.label THEN 1.0 ELSE 0.0 END) AS top1
               FROM preds p JOIN manifest m USING (image_id)
               WHERE p.error IS NULL AND m.label IS NOT NULL"""
        ).fetchone()
        out["labeled_rows"], out["accuracy"] = row[0], row[1]
        if "split" in manifest_table.column_names:
            # A backfill of the whole catalog also labels the training images: say which split is which.
            out["accuracy_by_split"] = {
                split: {"accuracy": acc, "labeled_rows": n}
                for split, n, acc in con.execute(
                    """SELECT m.split, count(*), avg(CASE WHEN p.label = m.label THEN 1.0 ELSE 0.0 END)
                       FROM preds p JOIN manifest m USING (image_id)
                       WHERE p.error IS NULL AND m.label IS NOT NULL GROUP BY m.split ORDER BY m.split"""
                ).fetchall()
            }
    return out


def query(cfg: Mapping[str, Any]) -> dict:
    """``jobs/query.py``: the summary of one model's predictions table (``query.predictions``, or the
    folder of the checkpoint at ``predictor.checkpoint``) against the manifest's labels."""
    from .. import checkpoint as ckpt

    q = dict(cfg.get("query") or {})
    storage = cfg["storage"]
    predictions = q.get("predictions")
    if not predictions:
        model_id = ckpt.model_id_of(ckpt.read_meta(st.absolute(cfg["predictor"]["checkpoint"]), storage))
        predictions = table_dir(cfg["paths"]["predictions"], model_id, catalog_id(cfg["data"]))
    manifest = cfg["data"].get("manifest") if q.get("with_manifest", True) else None
    out = summarize(st.absolute(predictions), st.absolute(manifest) if manifest else None, storage)
    print_summary(out)
    return out


def print_summary(s: Mapping[str, Any]) -> None:
    print("query summary:")
    print(f"  rows {s['rows']}  errors {s['errors']}  low_confidence {s['low_confidence']}  mean score {s['mean_score'] or 0:.4f}")
    if "accuracy" in s and s["accuracy"] is not None:
        print(f"  accuracy vs manifest labels: {s['accuracy']:.4f} on {s['labeled_rows']} labeled images")
        if len(s.get("accuracy_by_split") or {}) > 1:
            print("  by split: " + "  ".join(f"{k} {v['accuracy']:.4f} ({v['labeled_rows']})" for k, v in s["accuracy_by_split"].items()))
    print("  label counts: " + json.dumps(s["label_counts"]))
    if s["errors_by_class"]:
        print("  errors by class: " + json.dumps(s["errors_by_class"]))
