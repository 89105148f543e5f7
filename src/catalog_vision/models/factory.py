"""Model factory: one name → one :class:`ImageClassifier` with an explicit features/head seam.

The embedding written by backfills is the L2-normalised output of ``forward_features``.
Starting weights (``model.pretrained``) are a file the user names or torchvision's published
ImageNet weights (:mod:`.pretrained`).
"""

from __future__ import annotations

from typing import Any, Mapping

from .architectures import MODELS
from .classifier import ImageClassifier
from .pretrained import resolve

# Keys of the model config group that are not architecture arguments.
_NOT_ARCHITECTURE = ("name", "dropout", "pretrained", "weights_cache")


def build_model(model_cfg: Mapping[str, Any], num_classes: int, preprocessing: Mapping[str, Any], storage: Mapping[str, Any] | None = None) -> ImageClassifier:
    """Build from the ``model`` config group and the checkpoint's preprocessing dict.

    ``model_cfg["pretrained"]``, when set, is resolved here (:func:`.pretrained.resolve`) and
    loaded into the backbone. The normalisation buffers are ``preprocessing``'s: with published
    weights, pass what :func:`.pretrained.adapt_preprocessing` returns so they match the weights.
    """
    name = model_cfg["name"]
    if name not in MODELS:
        raise ValueError(f"unknown model.name={name!r}; choose one of {sorted(MODELS)}")
    kwargs = {k: v for k, v in model_cfg.items() if k not in _NOT_ARCHITECTURE}
    backbone, num_features = MODELS[name](in_chans=int(preprocessing["channels"]), image_size=tuple(preprocessing.get("image_size") or (224, 224)), **kwargs)
    model = ImageClassifier(backbone, num_features, num_classes, preprocessing["mean"], preprocessing["std"], float(model_cfg.get("dropout", 0.0) or 0.0))
    if model_cfg.get("pretrained"):
        resolve(model_cfg, storage).load_into(model)
    return model
