"""Inference-only graph rewrites: fold each BatchNorm into the convolution before it.

In eval mode a BatchNorm is a per-channel affine map, so ``conv → bn`` is one convolution with
rescaled weights and a bias. PyTorch's FX pass (:func:`torch.fx.experimental.optimization.fuse`)
does the folding (README "Benchmarks" has what it saves). Outputs agree to float rounding.
Training never sees the fused module: the checkpoint keeps the original layers.
"""

from __future__ import annotations

import logging

from torch import nn

log = logging.getLogger("catalog_vision")


def batchnorms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def fold_batchnorm(backbone: nn.Module) -> tuple[nn.Module, int]:
    """``(module, folded)``: the backbone with every ``conv → bn`` pair folded, and how many were.

    Backbones FX cannot trace (data-dependent control flow) or without foldable pairs come back
    unchanged, with 0. The input must be in eval mode; the returned module is a copy.
    """
    if backbone.training:
        raise ValueError("fold_batchnorm needs an eval-mode module (BatchNorm statistics are frozen only then)")
    before = batchnorms(backbone)
    if not before:
        return backbone, 0
    from torch.fx.experimental.optimization import fuse

    try:
        fused = fuse(backbone)
    except Exception as e:  # noqa: BLE001 - an untraceable model is served unfused, not refused
        log.info("batchnorm folding skipped (%s: %s)", type(e).__name__, str(e)[:200])
        return backbone, 0
    folded = before - batchnorms(fused)
    return (fused, folded) if folded else (backbone, 0)
