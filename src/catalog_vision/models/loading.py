"""Starting weights into a backbone: safe deserialisation and adaptation to our stems and input sizes."""

from __future__ import annotations

import io
from typing import Any, Mapping

import torch

from .classifier import ImageClassifier


def read_state_dict(data: bytes, name: str = "") -> dict[str, torch.Tensor]:
    """A torchvision state_dict (``.pt``/``.pth``) or ``.safetensors`` file's bytes → tensors.

    Never unpickles code (``weights_only=True``).
    """
    if name.endswith(".safetensors"):
        from safetensors.torch import load as load_st

        return load_st(data)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def load_backbone_state(model: ImageClassifier, state: Mapping[str, torch.Tensor], source: str = "the starting weights") -> list[str]:
    """Load tensors into the backbone; return the names not used, sorted.

    An RGB stem loaded into a grayscale model is summed over its input channels (the usual
    adaptation, as timm does). ViT position embeddings are interpolated to the model's input size.
    Other tensors whose shapes do not fit (the replaced classifier) are skipped; weights that fit
    fewer than ``MIN_LOADED`` of the backbone's tensors raise :class:`WeightsMismatch`.
    """
    state = dict(state)
    backbone = model.backbone
    target = backbone.state_dict()
    for k, v in list(state.items()):
        t = target.get(k)
        if t is not None and v.ndim == 4 and t.ndim == 4 and v.shape[1] == 3 and t.shape[1] == 1 and v.shape[0] == t.shape[0] and v.shape[2:] == t.shape[2:]:
            state[k] = v.sum(dim=1, keepdim=True)
    pos = "encoder.pos_embedding"
    if pos in state and pos in target and state[pos].shape != target[pos].shape and hasattr(backbone, "patch_size"):
        from .tv import load as load_torchvision

        load_torchvision()
        from torchvision.models.vision_transformer import interpolate_embeddings

        state = dict(interpolate_embeddings(int(backbone.image_size), int(backbone.patch_size), state))
    fit = {k: v for k, v in state.items() if k in target and target[k].shape == v.shape}
    learned = [k for k in target if not k.endswith("num_batches_tracked")]
    missing = [k for k in learned if k not in fit]
    if len(missing) > (1 - MIN_LOADED) * len(learned):
        raise WeightsMismatch(
            f"{source} fits {len(learned) - len(missing)} of the {len(learned)} backbone tensors of model.name={model_name(model)} "
            f"(e.g. missing or of another shape: {missing[:5]}): weights for another architecture? Starting from them would "
            "silently be starting from random weights."
        )
    backbone.load_state_dict(fit, strict=False)
    return sorted(set(state) - set(fit))


# Below this share of the backbone's tensors loaded, starting weights are refused as not fitting.
MIN_LOADED = 0.9


class WeightsMismatch(ValueError):
    """Starting weights that do not fit the configured backbone."""


def model_name(model: ImageClassifier) -> str:
    return type(model.backbone).__name__


def load_backbone_weights(model: ImageClassifier, uri: str, storage: Mapping[str, Any] | None = None) -> list[str]:
    """Load a torchvision state_dict (``.pt``/``.pth``) or ``.safetensors`` file at a path or URI
    into the backbone (see :func:`load_backbone_state`); return the tensor names not used."""
    from .. import storage as st

    return load_backbone_state(model, read_state_dict(st.read_bytes(uri, storage), uri), uri)
