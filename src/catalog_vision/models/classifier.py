"""The one model shape every architecture is wrapped in, and backbone freezing for transfer learning."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class ImageClassifier(nn.Module):
    """``uint8 (N, C, H, W)`` in, logits out; normalisation lives inside the model."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, mean: Sequence[float], std: Sequence[float], dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.head = nn.Linear(num_features, num_classes)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0, persistent=True)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0, persistent=True)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def set_backbone_frozen(model: ImageClassifier, frozen: bool) -> None:
    """Freeze (or unfreeze) the backbone for linear probing / transfer learning.

    Frozen: no gradients for the backbone and its BatchNorm layers in eval mode (running statistics
    stay those of the starting weights); only the head trains. Call after ``model.train()``.
    """
    for p in model.backbone.parameters():
        p.requires_grad_(not frozen)
    if frozen:
        for m in model.backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
