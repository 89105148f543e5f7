"""Catalog import: a team's images → ``manifest.parquet`` (``image_id, uri, label[s], split``).

Sources (``source`` config group): ``fashion_mnist`` (the demo catalog, built from IDX files).
"""

from __future__ import annotations

from .fashion_mnist import load_fashion_mnist, make_catalog, make_tiles, read_idx

__all__ = ["load_fashion_mnist", "make_catalog", "make_tiles", "read_idx"]
