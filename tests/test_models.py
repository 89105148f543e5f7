"""The model factory: names, channel adaptation, the features/head seam, safe weight loading."""

import pytest
import torch
from safetensors.torch import save_file

from catalog_vision.models import MODELS, build_model, load_backbone_weights

GRAY = {"channels": 1, "mean": [0.5], "std": [0.5], "image_size": [28, 28]}


@pytest.mark.parametrize("name,embed", [("small_cnn", 128), ("resnet18", 512), ("mobilenet_v3_small", 1024)])
def test_build_gray_models(name, embed):
    model = build_model({"name": name}, 10, GRAY).eval()
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    feats = model.forward_features(x)
    assert feats.shape == (2, embed)
    logits = model.forward_head(feats)
    assert logits.shape == (2, 10)
    torch.testing.assert_close(model(x), logits)


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError) as e:
        build_model({"name": "resnet1000"}, 10, GRAY)
    for name in MODELS:
        assert name in str(e.value)


def test_pretrained_weights_from_a_path(tmp_path):
    torch.manual_seed(1)
    donor = build_model({"name": "resnet18"}, 10, GRAY)
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in donor.backbone.state_dict().items()}, str(path))
    model = build_model({"name": "resnet18", "pretrained": str(path)}, 10, GRAY)
    torch.testing.assert_close(model.backbone.layer1[0].conv1.weight, donor.backbone.layer1[0].conv1.weight)
    # A torchvision-style .pth with a 3-channel stem and 1000-way fc: mismatched tensors are skipped.
    import torchvision

    tv = torchvision.models.resnet18(weights=None)
    pth = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), pth)
    skipped = load_backbone_weights(model, str(pth))
    assert "conv1.weight" in skipped and "fc.weight" in skipped
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)
