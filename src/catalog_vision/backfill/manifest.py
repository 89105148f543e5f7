"""What a run writes beside its Parquet files: the run manifest ``_run.json``, the predictor hosts'
precision reports it folds in, and the dead-letter table of the run's error rows."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any, Mapping

import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from .. import storage as st
from .plan import error_classes

RUN_MANIFEST = "_run.json"
# Each predictor host reports the dtype it runs (and, for dtype=auto, its measurements) here; the
# run manifest's predictor section collects them and the folder is removed.
PRECISION_REPORTS = "_precision"


def collect_reports(folder: str, storage: Mapping[str, Any] | None = None) -> list[dict]:
    """The predictor hosts' precision reports (see ``Predictor(report_to=...)``), then the folder goes."""
    fs, path = st.resolve(folder, storage)
    try:
        files = sorted(f for f in fs.find(path) if f.endswith(".json"))
    except FileNotFoundError:
        return []
    reports = [json.loads(fs.cat_file(f)) for f in files]
    for f in files:
        fs.rm_file(f)
    with contextlib.suppress(OSError):  # object stores have no empty folders to remove
        fs.rmdir(path)
    return reports


def write_dead_letter(files: list[str], uri: str, storage: Mapping[str, Any] | None = None) -> str:
    """The run's failures as their own small table: ``image_id, uri, error_class, error, model_id, run_id``."""
    fs, _ = st.resolve(files[0], storage)
    paths = [st.resolve(f, storage)[1] for f in files]
    table = pads.dataset(paths, filesystem=fs, format="parquet").to_table(columns=["image_id", "uri", "error", "model_id", "run_id"],
                                                                           filter=pc.field("error").is_valid())
    error_class = error_classes(table.column("error").combine_chunks())
    table = table.add_column(2, "error_class", error_class)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    st.write_bytes(uri, buf.getvalue(), storage)
    return uri
