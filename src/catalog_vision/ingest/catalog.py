"""The catalog as a table on the driver: a manifest (Parquet/CSV) or a listed prefix → ``image_id, uri, label``.

Metadata only (no image bytes); the manifest's URI policy is applied here, and refused rows flow on
with the reason, to become error rows without being fetched.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from .. import storage as st
from ..catalogs.table import iter_table_file
from ..storage import http_options

log = logging.getLogger("catalog_vision")

LAYOUTS = ("auto", "flat", "class_folders")


def _resolve_uri(uri: str, base: str) -> str:
    """Manifest URIs may be absolute (``s3://…``, ``https://…``, ``/…``) or relative to the manifest's folder."""
    if "://" in uri or uri.startswith("/"):
        return uri
    return st.join(base, uri)


def list_images(prefix: str, storage: Mapping[str, Any] | None = None, layout: str = "auto", label_level: Any = "leaf",
                splits: Mapping[str, float] | None = None, split_seed: Any = 0) -> pa.Table:
    """List a prefix (the same reader as ``make_catalog source=folders``): ``image_id`` is the key
    under the prefix; class folders (nested at any depth) give ``label``. With ``splits`` every row
    gets a ``split`` by the hash of its id, exactly as an imported catalog would."""
    from ..catalogs.folders import read_folders
    from ..catalogs.splits import assign_splits

    if layout not in LAYOUTS:
        raise ValueError(f"data.layout={layout!r}; choose one of {list(LAYOUTS)}")
    table, report = read_folders(prefix, storage, label_level=label_level, labeled=True)
    if report.get("skipped_by_extension"):
        log.warning("listed %s: %d images; skipped %d files that are not images, by extension: %s", prefix, table.num_rows,
                    sum(report["skipped_by_extension"].values()), dict(report["skipped_by_extension"]))
    depth = set(pc.utf8_length(pc.replace_substring_regex(table.column("image_id"), "[^/]", "")).to_pylist())
    if layout == "auto":
        # Only an unambiguous tree (every file exactly one folder deep) is read as class folders.
        layout = "class_folders" if depth == {1} else "flat"
    if layout == "class_folders" and 0 in depth:
        raise ValueError(f"layout=class_folders expects <prefix>/<class folders...>/<file>; some files under {prefix!r} are at the top level")
    table = table.select(["image_id", "uri", "label"])
    if layout == "flat":
        table = table.set_column(2, "label", pa.nulls(table.num_rows, pa.string()))
    if splits:
        table, _ = assign_splits(table, splits, split_seed)
    return table


# What planning reads of a manifest (a product export may have many more columns).
MANIFEST_COLUMNS = ("image_id", "uri", "label", "labels", "split")
NORMALISE_ROWS = 262144


def catalog_table(data: Mapping[str, Any], storage: Mapping[str, Any] | None = None, split: str | None = None) -> pa.Table:
    """The selected catalog as ``image_id, uri, label`` (label may be null), read on the driver.

    It is metadata only (about 100 bytes a row: 100 MB for a million images); reading it here lets
    the driver plan a run, skip what is done and count inputs without a Ray Data pass.
    Duplicate ids are a manifest error: they would break one-row-per-image.
    """
    if data.get("images_prefix"):
        from ..catalogs.splits import check_fractions

        # A listed prefix has no split column: give it the same hash splits an import would, so
        # training never validates on its own training images.
        fractions = check_fractions(data["splits"], [data.get("train_split"), data.get("val_split")]) if split and data.get("splits") else None
        table = list_images(st.absolute(data["images_prefix"]), storage, data.get("layout", "auto"), data.get("label_level", "leaf"), fractions,
                            data.get("split_seed", 0))
        if split:
            if "split" not in table.column_names:
                raise ValueError(f"data.split={split!r} for a listed prefix needs data.splits (fractions per split), or data.split=null")
            table = table.filter(pc.equal(table.column("split"), split))
        table = table.select(["image_id", "uri", "label"])
    else:
        if not data.get("manifest"):
            raise ValueError("set data.manifest (Parquet/CSV: image_id, uri, label, split) or data.images_prefix")
        manifest = st.absolute(data["manifest"])
        if not st.exists(manifest, storage):
            raise FileNotFoundError(f"manifest {manifest!r} not found; build one with jobs/make_catalog.py or set data.manifest")
        # In parts: Parquet decoding and the URI rules' intermediate columns exist for one part at a time.
        parts = []
        for part in iter_table_file(manifest, storage, columns=MANIFEST_COLUMNS, batch_rows=NORMALISE_ROWS):
            missing = {"image_id", "uri"} - set(part.column_names)
            if missing:
                raise ValueError(f"manifest {manifest!r} lacks columns {sorted(missing)}; it has {part.column_names}")
            if split:
                if "split" not in part.column_names:
                    raise ValueError(f"data.split={split!r} but manifest {manifest!r} has no 'split' column")
                part = part.filter(pc.equal(part.column("split"), split))
            parts += [_normalise_manifest(part.slice(i, NORMALISE_ROWS), manifest, data.get("uri_schemes"), data.get("uri_prefixes"))
                      for i in range(0, max(1, part.num_rows), NORMALISE_ROWS)]
        table = pa.concat_tables(parts, promote_options="default")
        del parts
    http_options.options(storage)  # a bad storage.http value fails here, not as an error row per image
    ids = table.column("image_id")
    if pc.count_distinct(ids).as_py() != len(ids):
        dup = [v["values"] for v in pc.value_counts(ids).to_pylist() if v["counts"] > 1][:5]
        raise ValueError(f"the catalog has duplicate image_id values, e.g. {dup}; each image needs a unique id")
    return table


def _normalise_manifest(batch: pa.Table, manifest: str, schemes: Sequence[str] | None = None, prefixes: Sequence[str] | None = None) -> pa.Table:
    """``image_id, uri, label`` (+ ``labels``, list<string>, for multi-label catalogs; + ``refused``,
    why a row's URI may not be fetched, when the manifest's URI policy refuses any: see
    :mod:`catalog_vision.storage.policy`)."""
    from ..storage.policy import refusals_column, resolve_column

    n = batch.num_rows
    label = batch.column("label").cast(pa.string()) if "label" in batch.column_names else pa.nulls(n, pa.string())
    raw = pc.fill_null(batch.column("uri").cast(pa.string()), "").combine_chunks()
    uris = resolve_column(raw, manifest.rsplit("/", 1)[0])
    cols = {"image_id": batch.column("image_id").cast(pa.string()), "uri": uris, "label": label}
    if "labels" in batch.column_names:
        cols["labels"] = batch.column("labels").cast(pa.list_(pa.string()))
    refused = refusals_column(raw, uris, manifest, schemes, prefixes)
    if refused is not None:
        cols["refused"] = refused
    return pa.table(cols)
