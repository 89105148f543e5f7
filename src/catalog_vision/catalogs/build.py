"""``make_catalog``: any source → ``manifest.parquet`` + ``catalog_summary.json`` beside it.

[1] Read the source: class folders (:mod:`.folders`), a product table (:mod:`.table`) or the
    Fashion-MNIST demo (:mod:`.fashion_mnist`, which also writes the image files).
[2] Drop (or keep, and list) classes below ``data.min_images_per_class``.
[3] Assign splits by group hash (:mod:`.splits`); splits the source already has are kept.
[4] Write the manifest, then the summary, and print both in a few lines.
"""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import storage as st
from .fashion_mnist import build_fashion_mnist
from .folders import read_folders
from .splits import assign_splits, check_fractions
from .summary import catalog_summary, drop_small_classes
from .table import read_product_table, read_table_file

log = logging.getLogger("catalog_vision")

SOURCES = ("fashion_mnist", "folders", "table")
SMALL_CLASSES = ("keep", "drop")
SUMMARY = "catalog_summary.json"


def summary_uri(manifest: str) -> str:
    return st.join(manifest.rsplit("/", 1)[0], SUMMARY)


def make_catalog(cfg: Mapping[str, Any]) -> dict:
    """Build the catalog named by ``cfg["source"]["name"]``; returns the summary."""
    source = dict(cfg.get("source") or {"name": "fashion_mnist"})
    name = source.get("name")
    if name not in SOURCES:
        raise ValueError(f"source={name!r}; choose one of {list(SOURCES)}")
    if name == "fashion_mnist":
        summary = build_fashion_mnist(cfg)
        manifest = st.absolute(cfg["data"]["manifest"])
        if not summary.get("reused"):
            write_summary(manifest, read_table_file(manifest, cfg["storage"]), cfg["storage"])
        return summary
    return import_catalog(cfg, source)


def import_catalog(cfg: Mapping[str, Any], source: Mapping[str, Any]) -> dict:
    t0 = time.perf_counter()
    storage, data = cfg["storage"], cfg["data"]
    fractions = check_fractions(data.get("splits") or {}, [data.get("train_split"), data.get("val_split")])
    action = data.get("small_classes", "keep")
    if action not in SMALL_CLASSES:
        raise ValueError(f"data.small_classes={action!r}; choose one of {list(SMALL_CLASSES)}")
    min_images = int(data.get("min_images_per_class") or 1)
    manifest = st.absolute(data["manifest"])
    # [1] Read the source.
    if source["name"] == "folders":
        if not source.get("prefix"):
            raise ValueError("source=folders needs source.prefix: a local folder or s3:// prefix of class folders")
        table, report = read_folders(source["prefix"], storage, label_level=source.get("label_level", "leaf"), group_pattern=source.get("group_pattern"))
    else:
        if not source.get("path"):
            raise ValueError("source=table needs source.path: a CSV or Parquet export (local or s3://)")
        table, report = read_product_table(source["path"], storage, columns=source.get("columns") or {}, labels_separator=source.get("labels_separator") or "|", uri_base=source.get("uri_base"))
    ids = table.column("image_id")
    if len(pc.unique(ids)) != len(ids):
        dup = [v["values"] for v in pc.value_counts(ids).to_pylist() if v["counts"] > 1][:5]
        raise ValueError(f"the source has duplicate image ids, e.g. {dup}; each image needs a unique id")
    # [2] Small classes.
    small: dict[str, int] = {}
    if action == "drop":
        table, small = drop_small_classes(table, min_images)
    # [3] Splits by group hash.
    table, split_report = assign_splits(table, fractions, data.get("split_seed", 0))
    order = ["image_id", "uri", "label", *(["labels"] if "labels" in table.column_names else []), "group", "split"]
    table = table.select(order)
    # [4] The manifest, then its summary.
    buf = io.BytesIO()
    pq.write_table(table, buf)
    st.write_bytes(manifest, buf.getvalue(), storage)
    summary = write_summary(manifest, table, storage, min_images=min_images, small=small if action == "drop" else None, action=action, extra={"source": _source_info(source), "read": report, "splits_assigned": split_report})
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    print_summary(summary)
    return summary


def _source_info(source: Mapping[str, Any]) -> dict:
    return {k: v for k, v in source.items() if v is not None}


def write_summary(manifest: str, table: pa.Table, storage: Mapping[str, Any] | None, *, min_images: int = 1, small: dict | None = None, action: str = "keep", extra: dict | None = None) -> dict:
    summary = {"manifest": manifest, **(extra or {}), **catalog_summary(table, min_images_per_class=min_images, small_classes=small, small_action=action)}
    summary["summary"] = summary_uri(manifest)
    st.write_json(summary["summary"], st.redact(summary), storage)
    return summary


def print_summary(s: Mapping[str, Any]) -> None:
    """A few lines for the terminal; the whole summary is in the JSON file."""
    per_class = s["per_class"]
    counts = sorted(v["images"] for v in per_class.values())
    head = {
        "images": s["images"],
        "classes": s["classes"],
        "splits": s["splits"],
        "images_per_class": {"min": counts[0], "max": counts[-1]} if counts else None,
        "unlabeled": s["unlabeled"],
        "skipped_files": s.get("read", {}).get("skipped_by_extension"),
        "groups": {k: s["groups"][k] for k in ("groups", "per_split", "spanning_splits")} if s.get("groups") else None,
        "small_classes": s["small_classes"],
        "seconds": s.get("seconds"),
    }
    print("make_catalog summary: " + json.dumps(head), flush=True)
    if s.get("classes_missing_from_split"):
        print(f"make_catalog warning: classes with no images in a split: {json.dumps(s['classes_missing_from_split'])}", flush=True)
    print(f"make_catalog wrote {s['manifest']} and {s['summary']}", flush=True)
