"""The one checkpoint format training writes and backfill and serving read.

A checkpoint is a directory (local or in object storage) holding:

* ``model.safetensors`` — weights; loading never executes pickled code;
* ``model.json`` — ``format``, ``model`` (the model config), ``classes``, ``preprocessing``,
  ``task``, and training facts (epoch, metrics).

``model_id`` = ``<model name>-<first 12 hex of sha256(model.safetensors)>``: the same weights give
the same id wherever they are copied.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import storage as st
from .models import ImageClassifier, build_model

FORMAT = "catalog-vision/checkpoint/v1"
WEIGHTS = "model.safetensors"
META = "model.json"


@dataclass
class LoadedModel:
    model: ImageClassifier
    meta: dict
    model_id: str

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def preprocessing(self) -> dict:
        return dict(self.meta["preprocessing"])


def _unwrap(model: torch.nn.Module) -> ImageClassifier:
    return model.module if hasattr(model, "module") else model


def serialize(model: torch.nn.Module, meta: Mapping[str, Any]) -> dict[str, bytes]:
    """Checkpoint files as bytes: ``{filename: content}``."""
    state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    weights = st_save(state)
    meta = {"format": FORMAT, **meta, "weights_sha256": hashlib.sha256(weights).hexdigest()}
    return {WEIGHTS: weights, META: json.dumps(meta, indent=2, sort_keys=True).encode()}


def save_local(directory: str, model: torch.nn.Module, meta: Mapping[str, Any]) -> str:
    os.makedirs(directory, exist_ok=True)
    for name, data in serialize(model, meta).items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    return directory


def save(uri: str, model: torch.nn.Module, meta: Mapping[str, Any], storage: Mapping[str, Any] | None = None) -> str:
    # Weights first, metadata last: a reader that sees model.json sees complete weights.
    files = serialize(model, meta)
    st.write_bytes(st.join(uri, WEIGHTS), files[WEIGHTS], storage)
    st.write_bytes(st.join(uri, META), files[META], storage)
    return uri


def copy(src: str, dst: str, storage: Mapping[str, Any] | None = None) -> str:
    return export(src, read_meta(src, storage), dst, storage)


def export(src: str, meta: Mapping[str, Any], dst: str, storage: Mapping[str, Any] | None = None) -> str:
    """``src``'s weights with ``meta`` at ``dst``: two writes, each atomic (``storage.write_bytes``),
    weights first and the metadata last, once. A reader between the two sees the new weights with
    the old metadata, whose ``weights_sha256`` then does not match: :func:`load` stops with a clear
    error (and the next read sees both new) rather than pairing one model's weights with another's
    classes."""
    weights = st.read_bytes(st.join(src, WEIGHTS), storage)
    if hashlib.sha256(weights).hexdigest() != meta["weights_sha256"]:
        raise ValueError(f"{src}: {WEIGHTS} does not match the weights_sha256 of the metadata to export")
    st.write_bytes(st.join(dst, WEIGHTS), weights, storage)
    st.write_bytes(st.join(dst, META), json.dumps(dict(meta), indent=2, sort_keys=True).encode(), storage)
    return dst


def read_meta(uri: str, storage: Mapping[str, Any] | None = None) -> dict:
    try:
        meta = st.read_json(st.join(uri, META), storage)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {uri!r} (missing {META}); train one with jobs/train.py or set predictor.checkpoint") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{uri}: unsupported checkpoint format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def model_id_of(meta: Mapping[str, Any]) -> str:
    return f"{meta['model']['name']}-{meta['weights_sha256'][:12]}"


def load(uri: str, storage: Mapping[str, Any] | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    meta = read_meta(uri, storage)
    weights = st.read_bytes(st.join(uri, WEIGHTS), storage)
    if hashlib.sha256(weights).hexdigest() != meta["weights_sha256"]:
        raise ValueError(f"{uri}: {WEIGHTS} does not match the hash in {META} (partial copy?)")
    model_cfg = dict(meta["model"])
    model_cfg.pop("pretrained", None)  # the checkpoint already holds the trained weights
    model = build_model(model_cfg, len(meta["classes"]), meta["preprocessing"])
    model.load_state_dict(st_load(weights), strict=True)
    model.eval().to(device)
    return LoadedModel(model=model, meta=meta, model_id=model_id_of(meta))
