"""Tables: the one reader for CSV/Parquet manifests, and the import of a product database export.

:func:`read_table_file` is how every part of catalog-vision reads a manifest or an export: CSV
columns are read as strings (so ``00042`` stays ``00042``), Parquet id/label columns are cast to
strings. :func:`read_product_table` maps an export's own column names onto the manifest's
``image_id, uri, label | labels, group, split``.
"""

from __future__ import annotations

import contextlib
import gzip
import io
from typing import Any, Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .. import storage as st

# Manifest columns that are text whatever they look like: ids such as 00042 must not become 42.
STRING_COLUMNS = ("image_id", "uri", "label", "split", "group")
FORMATS = ("csv", "parquet")


def table_format(uri: str) -> str:
    lower = uri.lower()
    if lower.endswith((".csv", ".csv.gz", ".tsv")):
        return "csv"
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    raise ValueError(f"{uri!r}: a manifest or export must be a {' or '.join(FORMATS)} file (.csv, .tsv, .parquet)")


def read_table_file(uri: str, storage: Mapping[str, Any] | None = None, columns: Sequence[str] | None = None) -> pa.Table:
    """A CSV (every column a string) or Parquet file, local or in object storage; with ``columns``,
    only those of them the file has (a wide product export is not read whole to plan a run)."""
    parts = list(iter_table_file(uri, storage, columns))
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def iter_table_file(uri: str, storage: Mapping[str, Any] | None = None, columns: Sequence[str] | None = None, batch_rows: int | None = None) -> Iterator[pa.Table]:
    """:func:`read_table_file` in tables of at most ``batch_rows`` rows (Parquet; a CSV comes whole),
    so a caller that transforms each part never holds the whole file's decoding buffers at once."""
    fmt = table_format(uri)
    fs, path = st.resolve(st.absolute(uri), storage)
    if fmt == "csv":
        data = fs.cat_file(path)
        if uri.lower().endswith(".gz"):
            data = gzip.decompress(data)
        delimiter = "\t" if uri.lower().endswith(".tsv") else ","
        # The header first (one block), so every column can be declared a string.
        header = pacsv.open_csv(io.BytesIO(data), parse_options=pacsv.ParseOptions(delimiter=delimiter)).schema.names
        yield pacsv.read_csv(
            io.BytesIO(data),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in header}, strings_can_be_null=True,
                                                 include_columns=[c for c in header if c in columns] if columns else None),
        )
        return
    # Parquet reads only the column chunks it needs (ranged reads on object storage); local files
    # through Arrow's own reader, not a Python file object.
    with contextlib.nullcontext(path) if not st.is_remote(uri) else fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        names = [c for c in pf.schema_arrow.names if c in columns] if columns else None
        parts = (pa.Table.from_batches([b]) for b in pf.iter_batches(batch_size=batch_rows, columns=names)) if batch_rows else [pf.read(columns=names)]
        empty = True
        for table in parts:
            empty = False
            yield _strings(table)
        if empty:
            yield _strings(pf.schema_arrow.empty_table().select(names) if names else pf.schema_arrow.empty_table())


def _strings(table: pa.Table) -> pa.Table:
    for name in STRING_COLUMNS:
        if name in table.column_names and not pa.types.is_string(table.schema.field(name).type):
            table = table.set_column(table.column_names.index(name), name, table.column(name).cast(pa.string()))
    return table


def _column(table: pa.Table, name: str | None, key: str, required: bool = False) -> pa.ChunkedArray | None:
    if not name:
        if required:
            raise ValueError(f"source.columns.{key} must name a column; the table has {table.column_names}")
        return None
    if name not in table.column_names:
        raise ValueError(f"source.columns.{key}={name!r} is not a column of the table; it has {table.column_names}")
    return table.column(name)


def read_product_table(path: str, storage: Mapping[str, Any] | None = None, *, columns: Mapping[str, Any], labels_separator: str = "|", uri_base: str | None = None) -> tuple[pa.Table, dict]:
    """An export with its own column names → ``image_id, uri, label, labels?, group, split``.

    ``columns`` maps ``id, uri, label, labels, group, split`` to the export's names (``id`` may be
    null: the uri is the id; ``label`` or ``labels`` names the class column; ``labels`` is a list
    column, or a string split on ``labels_separator``). Relative uris resolve against ``uri_base``
    (default: the table's folder). Returns the table and a report.
    """
    path = st.absolute(path)
    raw = read_table_file(path, storage)
    cols = dict(columns or {})
    uri = _column(raw, cols.get("uri"), "uri", required=True).cast(pa.string())
    ident = _column(raw, cols.get("id"), "id")
    ident = uri if ident is None else ident.cast(pa.string())
    base = st.absolute(uri_base) if uri_base else path.rsplit("/", 1)[0]
    uris = [u if u is None or "://" in u or u.startswith("/") else st.join(base, u) for u in uri.to_pylist()]
    out = {"image_id": ident, "uri": pa.array(uris, pa.string())}
    label = _column(raw, cols.get("label"), "label")
    labels = _column(raw, cols.get("labels"), "labels")
    out["label"] = label.cast(pa.string()) if label is not None else pa.nulls(raw.num_rows, pa.string())
    if labels is not None:
        if pa.types.is_list(labels.type) or pa.types.is_large_list(labels.type):
            lists = labels.cast(pa.list_(pa.string()))
        else:
            lists = pa.array([None if v is None else [p.strip() for p in v.split(labels_separator) if p.strip()] for v in labels.cast(pa.string()).to_pylist()], pa.list_(pa.string()))
        out["labels"] = lists
    group = _column(raw, cols.get("group"), "group")
    out["group"] = group.cast(pa.string()) if group is not None else pa.nulls(raw.num_rows, pa.string())
    split = _column(raw, cols.get("split"), "split")
    if split is not None:
        out["split"] = split.cast(pa.string())
    table = pa.table(out)
    bad = pc.sum(pc.or_(pc.is_null(table.column("image_id")), pc.is_null(table.column("uri")))).as_py() or 0
    if bad:
        raise ValueError(f"{path}: {bad} rows have no id or no uri (columns {cols.get('id')!r}, {cols.get('uri')!r})")
    report = {"rows": raw.num_rows, "columns": raw.column_names}
    return table, report
