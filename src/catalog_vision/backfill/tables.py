"""Where a model's predictions for one catalog live, and how a catalog is identified.

A model's predictions form one table per catalog: ``<predictions>/<model_id>/<catalog_id>/``,
with one folder per run under it. Done-ness (which images a rerun skips) is read from that table
only, so two catalogs whose image ids collide (two prefixes that both hold ``cat/001.jpg``) never
skip each other's images.

``catalog_id`` is ``data.catalog_id`` when set, else derived from where the catalog is: the
absolute manifest URI (``data.manifest``) or the listed prefix (``data.images_prefix``), as
``<readable name>-<first 10 hex of its SHA-256>``. The storage endpoint is not part of it (the
same bucket through a proxy is the same catalog) and neither is ``data.split`` (a split is a
subset of one catalog). A catalog that grows is the same catalog as long as its manifest keeps
its URI; a manifest copied elsewhere is a new catalog unless ``data.catalog_id`` names the old one.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Mapping

from .. import storage as st

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def catalog_id(data: Mapping[str, Any]) -> str:
    """The id of the catalog ``data`` selects (see the module docstring)."""
    given = data.get("catalog_id")
    if given:
        if not _ID.match(str(given)):
            raise ValueError(f"data.catalog_id={given!r}: use letters, digits, '_', '.', '-' (a folder name, at most 100 characters)")
        return str(given)
    where = data.get("images_prefix") or data.get("manifest")
    if not where:
        raise ValueError("set data.manifest (Parquet/CSV: image_id, uri, label, split) or data.images_prefix")
    where = st.absolute(str(where)).rstrip("/")
    kind = "prefix" if data.get("images_prefix") else "manifest"
    digest = hashlib.sha256(f"{kind}:{where}".encode()).hexdigest()[:10]
    parts = [p for p in where.split("://", 1)[-1].split("/") if p]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts[-2:]))[-60:].strip("._-") or kind
    return f"{name}-{digest}"


def table_dir(predictions_root: str, model_id: str, catalog: str) -> str:
    """``<predictions>/<model_id>/<catalog_id>``: the model's table for one catalog."""
    return st.join(st.absolute(predictions_root), model_id, catalog)
