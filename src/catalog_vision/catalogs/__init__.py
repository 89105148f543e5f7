"""Catalog import: a team's images → ``manifest.parquet`` (``image_id, uri, label[s], group, split``).

Sources (``source`` config group): ``folders`` (class folders nested at any depth, local or
``s3://``), ``table`` (a CSV/Parquet export with a column mapping), ``fashion_mnist`` (the demo
catalog, built from IDX files). Splits are assigned by group hash (:mod:`.splits`), and a
``catalog_summary.json`` is written beside the manifest (:mod:`.summary`). :func:`make_demo_photos`
writes a photo-like catalog (:mod:`.photos`) for ``folders`` and ``table`` to import.
"""

from __future__ import annotations

from .build import SOURCES, make_catalog
from .fashion_mnist import load_fashion_mnist, make_tiles, read_idx
from .folders import read_folders
from .photos import make_demo_photos
from .splits import assign_splits
from .table import read_product_table, read_table_file

__all__ = ["SOURCES", "assign_splits", "load_fashion_mnist", "make_catalog", "make_demo_photos", "make_tiles", "read_folders", "read_idx", "read_product_table", "read_table_file"]
