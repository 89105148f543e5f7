"""The search jobs from a resolved config: ``jobs/index.py`` (build or update a model's index) and
``jobs/similar.py`` (top-k similar images for image ids or new image files)."""

from __future__ import annotations

import io
import json
import logging
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from .. import storage as st
from ..backfill.tables import catalog_id, table_dir
from . import ann
from .store import SimilarityIndex, index_dir

log = logging.getLogger("catalog_vision")


def target(cfg: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(model_id, catalog_id, predictions table)`` the ``index`` config names: by default the
    model at ``predictor.checkpoint`` and the catalog ``data`` names (as backfills derive them)."""
    ic = cfg["index"]
    table = ic.get("predictions")
    if table:
        table = st.absolute(str(table))
        parts = table.rstrip("/").split("/")
        return ic.get("model_id") or parts[-2], ic.get("catalog_id") or parts[-1], table
    model_id = ic.get("model_id")
    if not model_id:
        from .. import checkpoint as ckpt

        model_id = ckpt.model_id_of(ckpt.read_meta(st.absolute(str(cfg["predictor"]["checkpoint"])), cfg["storage"]))
    catalog = ic.get("catalog_id") or catalog_id(cfg["data"])
    return model_id, catalog, table_dir(cfg["paths"]["predictions"], model_id, catalog)


def index_folder(cfg: Mapping[str, Any]) -> str:
    model_id, catalog, _ = target(cfg)
    return index_dir(cfg["index"]["root"], model_id, catalog)


def build_index(cfg: Mapping[str, Any]) -> dict:
    """``jobs/index.py``: build the index, or add the table's new files to it; returns its manifest."""
    from ..runtime import init_ray
    from .build import build

    ic = cfg["index"]
    params = ann.IndexParams.from_config(ic)
    model_id, catalog, table = target(cfg)
    out = index_dir(ic["root"], model_id, catalog)
    ann.set_threads(ic.get("threads"))
    init_ray(cfg["ray"])
    m = build(table, out, params, cfg["storage"], model_id=model_id, catalog=catalog, incremental=bool(ic.get("incremental", True)),
              max_growth=float(ic.get("max_growth", 1.0)), max_superseded=float(ic.get("max_superseded", 0.2)))
    b = m["build"]
    why = f" ({b['reason']})" if b.get("reason") else ""
    added = "nothing new"
    if b["mode"] != "unchanged":
        added = f"{b['added_rows']} rows added from {b['new_files']} new file(s), {b['error_rows_skipped']} error rows skipped"
    print(f"index summary: {b['mode']} build{why}: {added}; {m['rows']} images ({m['superseded']} superseded vectors) in {m['params']['factory']} "
          f"({m['bytes_per_vector']} B/vector, {m['library']['name']} {m['library']['version']}) at {out}; {m['build_s']} s", flush=True)
    return m


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def embed_images(uris: Sequence[str], p: Mapping[str, Any], storage: Mapping[str, Any] | None, dtype: str, model_id: str) -> np.ndarray:
    """Embeddings of image files (local or ``s3://``) with the backfill's decoder and a
    :class:`~catalog_vision.infer.predictor.Predictor` set up as the backfill's (``p``: the predictor config;
    ``tta`` and ``fold_bn`` change embeddings); the checkpoint must be the index's model."""
    from ..ingest.errors import ImageError, error_string
    from ..ingest.images import decode
    from ..infer.predictor import Predictor

    predictor = Predictor(st.absolute(str(p["checkpoint"])), storage, device=p.get("device", "auto"), dtype=dtype, batch_size=max(1, len(uris)),
                          tta=p.get("tta") or "none", fold_bn=bool(p.get("fold_bn", True)), channels_last=bool(p.get("channels_last", True)))
    if predictor.model_id != model_id:
        raise ValueError(f"predictor.checkpoint is {predictor.model_id}, the index is {model_id}: a new image must be embedded by the index's model")
    pixels = []
    for uri in uris:
        try:
            pixels.append(decode(st.read_bytes(uri, storage), predictor.spec))
        except FileNotFoundError:
            raise FileNotFoundError(f"similar.image: no file at {uri!r}") from None
        except ImageError as e:
            raise ValueError(f"similar.image {uri!r} cannot be used: {error_string(e)}") from None
    return predictor.predict_pixels(np.stack(pixels))[1]


def query_dtype(cfg: Mapping[str, Any], manifest: Mapping[str, Any]) -> str:
    """``predictor.dtype``, except ``auto``: the dtype the indexed backfills ran (one found), so a
    new image is embedded exactly as its catalog's images were."""
    dtype = cfg["predictor"].get("dtype", "auto")
    found = manifest.get("embedding_dtypes") or []
    return found[0] if dtype == "auto" and len(found) == 1 else dtype


def similar(cfg: Mapping[str, Any], index: SimilarityIndex | None = None) -> pa.Table:
    """``jobs/similar.py``: ``similar.k`` most similar images for ``similar.image_id`` (one or a
    list) and ``similar.image`` (image files, one or a list), optionally only ``similar.label``;
    written to ``similar.output`` (``.parquet`` or ``.json``) when set."""
    s = cfg["similar"]
    ids, images = as_list(s.get("image_id")), as_list(s.get("image"))
    if not ids and not images:
        raise ValueError("set similar.image_id (an id or a list [a, b]) or similar.image (an image file, local or s3://)")
    k = int(s.get("k") or 10)
    if index is None:
        index = SimilarityIndex.load(index_folder(cfg), cfg["storage"])
        index.nprobe = int(cfg["index"].get("nprobe") or index.nprobe)  # a search setting: the config's, not the build's
    ann.set_threads(cfg["index"].get("threads"))
    parts = []
    if ids:
        parts.append(index.similar_to(ids, k, s.get("label"), exclude_self=bool(s.get("exclude_self"))))
    if images:
        images = [st.absolute(u) for u in images]
        vectors = embed_images(images, cfg["predictor"], cfg["storage"], query_dtype(cfg, index.manifest), index.manifest["model_id"])
        parts.append(index.search(vectors, images, k, s.get("label")))
    result = pa.concat_tables(parts)
    if s.get("output"):
        write_table(result, st.absolute(str(s["output"])), cfg["storage"])
    print_result(result)
    return result


def write_table(table: pa.Table, uri: str, storage: Mapping[str, Any] | None = None) -> str:
    if uri.endswith(".parquet"):
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(table, buf)
        st.write_bytes(uri, buf.getvalue(), storage)
    elif uri.endswith(".json"):
        st.write_bytes(uri, json.dumps(table.to_pylist(), indent=1).encode(), storage)
    else:
        raise ValueError(f"similar.output={uri!r}: name a .parquet or .json file")
    return uri


def print_result(table: pa.Table) -> None:
    last = None
    for r in table.to_pylist():
        if r["query"] != last:
            print(f"similar to {r['query']}:")
            last = r["query"]
        print(f"  {r['rank']:>3}  {r['score']:.4f}  {r['image_id']}  {r['label']}  {r['uri']}")
