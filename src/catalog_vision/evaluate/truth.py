"""Ground truth: the labeled rows of a split, and class names to indices."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import storage as st


def _manifest_uri(data: Mapping[str, Any]) -> str:
    if not data.get("manifest"):
        raise ValueError(
            "evaluate needs ground-truth labels: set data.manifest (Parquet/CSV with image_id, label[s], split) or data.images_prefix with class folders"
        )
    return st.absolute(data["manifest"])


def ground_truth(cfg: Mapping[str, Any], split: str | None, task: str) -> tuple[pa.Table, str]:
    """``image_id`` plus ``label`` (multiclass) or ``labels`` (multilabel) for the labeled rows of ``split``.

    Read from the manifest as written (``data.manifest``), or from class folder names when the
    catalog is a listed prefix (``data.images_prefix``). Raises ValueError naming the splits that do
    have labeled rows when ``split`` has none.
    """
    from ..backfill.query import read_manifest

    data, storage = cfg["data"], cfg["storage"]
    table, where, splits = _split_rows(cfg, split)
    cols = table.column_names
    gt = _label_columns(table, task, where)
    if gt.num_rows == 0:
        labeled = []
        if splits and "split" in cols:
            key = "labels" if task == "multilabel" and "labels" in cols else "label"
            full = read_manifest(where, storage) if not data.get("images_prefix") else table
            if key in full.column_names:
                labeled = sorted(set(full.filter(pc.is_valid(full.column(key))).column("split").drop_null().to_pylist()))
        raise ValueError(f"evaluate.split={split!r} has no labeled rows in {where}; splits with labeled rows: {labeled}")
    ids = gt.column("image_id")
    if len(pc.unique(ids)) != len(ids):
        raise ValueError(f"{where}: duplicate image_id values among the labeled rows of split {split!r}")
    return gt.combine_chunks(), where


def drop_unknown_classes(gt: pa.Table, classes: Sequence[str], task: str) -> tuple[pa.Table, dict[str, int]]:
    """Ground truth without the rows whose label (any of whose labels, multi-label) the model does
    not know, and ``{unknown label: images}``: a catalog that grew new classes since training is
    evaluated on the classes the model has, and the rest is counted, not an error."""
    known = pa.array(list(classes), pa.string())
    if task == "multilabel":
        lists = gt.column("labels").to_pylist()
        known_set = set(classes)
        bad = [any(c not in known_set for c in v) for v in lists]
        names = [c for v, b in zip(lists, bad) if b for c in v if c not in known_set]
        keep = pa.array([not b for b in bad])
    else:
        keep = pc.is_in(gt.column("label"), value_set=known)
        names = pc.filter(gt.column("label"), pc.invert(keep)).to_pylist()
    unknown: dict[str, int] = {}
    for c in names:
        unknown[c] = unknown.get(c, 0) + 1
    return gt.filter(keep), dict(sorted(unknown.items(), key=lambda kv: (-kv[1], kv[0])))


def class_index(names: pa.Array | pa.ChunkedArray, classes: Sequence[str], what: str) -> np.ndarray:
    idx = pc.index_in(names, value_set=pa.array(list(classes), pa.string()))
    if idx.null_count:
        unknown = sorted(set(pc.filter(names, pc.is_null(idx)).drop_null().to_pylist()))[:10]
        raise ValueError(f"{what} {unknown} are not among the model's classes {list(classes)}")
    return idx.to_numpy(zero_copy_only=False).astype(np.int64)


def binarize(label_lists: Sequence[Sequence[str]], classes: Sequence[str], what: str) -> np.ndarray:
    from sklearn.preprocessing import MultiLabelBinarizer

    known = set(classes)
    unknown = sorted({lab for labs in label_lists for lab in labs} - known)
    if unknown:
        raise ValueError(f"{what} {unknown[:10]} are not among the model's classes {list(classes)}")
    return MultiLabelBinarizer(classes=list(classes)).fit_transform(label_lists).astype(int)


def _split_rows(cfg: Mapping[str, Any], split: str | None) -> tuple[pa.Table, str, list[str] | None]:
    """The catalog's rows of ``split`` (all rows for None), where they were read, and the manifest's splits."""
    from ..backfill.query import read_manifest

    data, storage = cfg["data"], cfg["storage"]
    if data.get("images_prefix"):
        from ..ingest.catalog import catalog_table

        table = catalog_table(data, storage, split=split).select(["image_id", "label"])
        where = f"class folders under {data['images_prefix']!r}"
        splits = None
    else:
        where = _manifest_uri(data)
        if not st.exists(where, storage):
            raise FileNotFoundError(f"manifest {where!r} not found; build one with jobs/make_catalog.py or set data.manifest")
        table = read_manifest(where, storage)
        if "image_id" not in table.column_names:
            raise ValueError(f"manifest {where!r} has no image_id column; it has {table.column_names}")
        table = table.set_column(table.column_names.index("image_id"), "image_id", table.column("image_id").cast(pa.string()))
        splits = sorted(set(table.column("split").drop_null().to_pylist())) if "split" in table.column_names else None
        if split is not None:
            if splits is None:
                raise ValueError(f"evaluate.split={split!r} but manifest {where!r} has no 'split' column; set evaluate.split=null to use every labeled row")
            if split not in splits:
                raise ValueError(f"evaluate.split={split!r} is not in manifest {where!r}; its splits are {splits} (or null for all)")
            table = table.filter(pc.equal(table.column("split"), split))
    return table, where, splits


def _label_columns(table: pa.Table, task: str, where: str) -> pa.Table:
    """``image_id`` plus ``label`` (multiclass) or ``labels`` (multilabel), unlabeled rows dropped."""
    cols = table.column_names
    if task == "multilabel":
        if "labels" in cols:
            gt = table.select(["image_id", "labels"])
            if "label" in cols:  # rows with only a single label fill in from `label`
                single = [None if v is None else [v] for v in table.column("label").to_pylist()]
                merged = [many if many is not None else one for many, one in zip(gt.column("labels").to_pylist(), single)]
                gt = pa.table({"image_id": gt.column("image_id"), "labels": pa.array(merged, pa.list_(pa.string()))})
        elif "label" in cols:
            gt = pa.table(
                {
                    "image_id": table.column("image_id"),
                    "labels": pa.array([None if v is None else [v] for v in table.column("label").to_pylist()], pa.list_(pa.string())),
                }
            )
        else:
            raise ValueError(f"{where}: a multilabel model needs a 'labels' (list<string>) or 'label' column; found {cols}")
        gt = gt.filter(pc.is_valid(gt.column("labels")))
    else:
        if "label" not in cols:
            raise ValueError(f"{where}: a multiclass model needs a 'label' column; found {cols}")
        gt = table.select(["image_id", "label"])
        gt = gt.set_column(1, "label", gt.column("label").cast(pa.string()))
        gt = gt.filter(pc.is_valid(gt.column("label")))
    return gt
