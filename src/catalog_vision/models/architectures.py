"""The architectures by name (:data:`MODELS`): our small CNNs for small images and torchvision's
classification models, each built as a backbone (classifier removed) plus its embedding width.

The stem convolution takes the catalog's channel count; :mod:`.factory` wraps a backbone in the
:class:`~.classifier.ImageClassifier` head.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import nn


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def small_cnn(in_chans: int, embed_dim: int = 128, width: int = 32, **_: Any) -> tuple[nn.Module, int]:
    """Two conv+pool stages and a dense layer: the classic small-image CNN, sized for 28×28.

    Works for any input size: an adaptive pool fixes the dense layer's input at 7×7.
    """
    backbone = nn.Sequential(
        *_conv_bn(in_chans, width),
        nn.MaxPool2d(2),
        *_conv_bn(width, 2 * width),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(7),
        nn.Flatten(),
        nn.Dropout(0.25),
        nn.Linear(2 * width * 49, embed_dim),
        nn.ReLU(inplace=True),
    )
    return backbone, embed_dim


def small_vgg(in_chans: int, width: int = 32, dropout2d: float = 0.1, stages: int = 3, convs: int = 2, **_: Any) -> tuple[nn.Module, int]:
    """VGG stages of ``convs`` 3x3 conv+BN+ReLU each (widths w, 2w, 4w, 4w, ...), a 2x2 max-pool
    between stages, global average pooling. Embedding = the last stage's width.

    The defaults (3 stages of 2 convs) are the accuracy recipe for 28x28 catalogs: ~0.29M
    parameters at width 32, 3x the compute of ``small_cnn``. Photos at 64x64 want more stages (a
    receptive field that covers the item) and fewer convs each (cost): ``stages=5 convs=1``.
    """
    if stages < 1 or convs < 1:
        raise ValueError(f"small_vgg needs stages >= 1 and convs >= 1, got stages={stages} convs={convs}")
    layers: list[nn.Module] = []
    cin = in_chans
    for i in range(stages):
        cout = width * 2 ** min(i, 2)
        for _ in range(convs):
            layers += _conv_bn(cin, cout)
            cin = cout
        if i < stages - 1:
            layers += [nn.MaxPool2d(2), nn.Dropout(dropout2d)]
    backbone = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return backbone, cin


def _torchvision(name: str) -> Callable[..., tuple[nn.Module, int]]:
    def build(in_chans: int, image_size: Sequence[int] = (224, 224), **_: Any) -> tuple[nn.Module, int]:
        from .tv import load as load_torchvision

        torchvision = load_torchvision()

        kwargs: dict[str, Any] = {}
        if name.startswith("vit_"):  # position embeddings are sized for the input: square, a multiple of the patch
            if image_size[0] != image_size[1]:
                raise ValueError(f"{name} needs square inputs; data.preprocessing.image_size={list(image_size)}")
            kwargs["image_size"] = int(image_size[0])
        model = torchvision.models.get_model(name, weights=None, **kwargs)
        _adapt_first_conv(model, in_chans)
        num_features = _strip_last_linear(model)
        return model, num_features

    build.__name__ = name
    return build


def _adapt_first_conv(model: nn.Module, in_chans: int) -> None:
    """Replace the stem convolution so it takes ``in_chans`` channels."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != in_chans:
                    setattr(
                        parent,
                        child_name,
                        nn.Conv2d(in_chans, child.out_channels, child.kernel_size, child.stride, child.padding, child.dilation, child.groups,
                                  child.bias is not None),
                    )
                return


def _strip_last_linear(model: nn.Module) -> int:
    """Replace the classifier's final Linear with Identity; return its input width (the embedding size)."""
    last = None
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                last = (parent, child_name, child)
    if last is None:
        raise ValueError("backbone has no Linear classifier to replace")
    parent, child_name, child = last
    setattr(parent, child_name, nn.Identity())
    return child.in_features


MODELS: dict[str, Callable[..., tuple[nn.Module, int]]] = {
    "small_cnn": small_cnn,
    "small_vgg": small_vgg,
    **{n: _torchvision(n) for n in ("resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "vit_b_16")},
}
