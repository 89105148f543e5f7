"""Where analytics read from and write to."""

from __future__ import annotations

from typing import Any, Mapping

from .. import storage as st
from ..backfill.tables import catalog_id, table_dir


def predictions_table(cfg: Mapping[str, Any], given: str | None) -> str:
    """``given`` (a run folder or a model's table), else the table of the checkpoint at
    ``predictor.checkpoint`` for ``data``'s catalog, as ``jobs/query.py`` does."""
    if given:
        return st.absolute(str(given)).rstrip("/")
    from .. import checkpoint as ckpt

    model_id = ckpt.model_id_of(ckpt.read_meta(st.absolute(cfg["predictor"]["checkpoint"]), cfg["storage"]))
    return table_dir(cfg["paths"]["predictions"], model_id, catalog_id(cfg["data"]))


def analytics_output(cfg: Mapping[str, Any], kind: str, model_id: str, table: str) -> str:
    """``<paths.output>/<kind>/<model_id>/<catalog_id>[/<run_id>]``: the table's path under the
    predictions root, or ``<model_id>/<folder name>`` for a table elsewhere."""
    root = st.absolute(cfg["paths"]["predictions"]).rstrip("/") + "/"
    rel = table[len(root):] if table.startswith(root) else f"{model_id}/{table.rstrip('/').rsplit('/', 1)[-1]}"
    return st.join(st.absolute(cfg["paths"]["output"]), kind, rel)
