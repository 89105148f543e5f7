"""Augmentation presets on ``torchvision.transforms.v2``, applied per image to ``uint8 (N,C,H,W)``.

v2 transforms draw one set of random parameters per call, so a batched tensor would get the same
crop for every image; :func:`apply` calls the pipeline once per image instead. ``trivial_augment``
costs about as much per image as a training step of the small CNNs on CPU: use it on GPUs.

Presets (``trainer.augment.preset``):

* ``none`` — no augmentation (evaluation always uses this);
* ``pad_crop_flip`` — zero-pad by ``pad`` and crop back (translation), horizontal flip;
* ``random_resized_crop`` — ``RandomResizedCrop(scale=(min_scale, 1))`` + flip: photos, larger inputs;
* ``trivial_augment`` / ``rand_augment`` — ``pad_crop_flip`` plus TrivialAugmentWide / RandAugment.

Every preset except ``none`` adds ``RandomErasing(p=erasing)`` when ``erasing > 0``; ``hflip`` turns
the flip off for data where left/right matters. Mixup/CutMix act on whole batches and live in
:func:`batch_mix`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

PRESETS = ("none", "pad_crop_flip", "random_resized_crop", "trivial_augment", "rand_augment")


def build(aug: Mapping[str, Any] | None, image_size: Sequence[int]):
    """A v2 pipeline for one ``uint8 (C,H,W)`` image, or None for ``preset: none``."""
    from ..models.tv import load as load_torchvision

    load_torchvision()
    from torchvision.transforms import v2

    aug = dict(aug or {})
    preset = aug.get("preset", "pad_crop_flip")
    if preset not in PRESETS:
        raise ValueError(f"trainer.augment.preset={preset!r}; choose one of {list(PRESETS)}")
    if preset == "none":
        return None
    size = [int(s) for s in image_size]
    steps: list[Any] = []
    if preset == "random_resized_crop":
        steps.append(v2.RandomResizedCrop(size, scale=(float(aug.get("min_scale", 0.35)), 1.0), antialias=True))
    elif int(aug.get("pad", 0)):
        steps.append(v2.RandomCrop(size, padding=int(aug["pad"])))
    if aug.get("hflip", True):
        steps.append(v2.RandomHorizontalFlip())
    if preset == "trivial_augment":
        steps.append(v2.TrivialAugmentWide())
    elif preset == "rand_augment":
        steps.append(v2.RandAugment())
    if float(aug.get("erasing", 0.0)) > 0:
        steps.append(v2.RandomErasing(p=float(aug["erasing"]), value=0))
    return v2.Compose(steps) if steps else None


def apply(pipeline, x: torch.Tensor) -> torch.Tensor:
    """Run ``pipeline`` on each image of ``uint8 (N,C,H,W)`` (fresh random parameters per image)."""
    if pipeline is None:
        return x
    return torch.stack([pipeline(img) for img in x])


def batch_mix(aug: Mapping[str, Any] | None, num_classes: int):
    """Mixup and/or CutMix on float batches (one of them per batch when both are on), or None.

    The returned callable takes ``(images float (N,C,H,W), labels int64 (N,))`` and returns images
    and soft labels ``(N, K)``, which ``F.cross_entropy`` accepts as probabilities.
    """
    from ..models.tv import load as load_torchvision

    load_torchvision()
    from torchvision.transforms import v2

    aug = dict(aug or {})
    mixes = []
    if float(aug.get("mixup_alpha", 0.0)) > 0:
        mixes.append(v2.MixUp(alpha=float(aug["mixup_alpha"]), num_classes=num_classes))
    if float(aug.get("cutmix_alpha", 0.0)) > 0:
        mixes.append(v2.CutMix(alpha=float(aug["cutmix_alpha"]), num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
