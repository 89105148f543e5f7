"""The model factory: names, channel adaptation, the features/head seam, safe weight loading."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from catalog_vision.models import MODELS, build_model, load_backbone_weights

GRAY = {"channels": 1, "mean": [0.5], "std": [0.5], "image_size": [28, 28]}


@pytest.mark.parametrize("name,embed", [("small_cnn", 128), ("small_vgg", 128), ("resnet18", 512), ("mobilenet_v3_small", 1024), ("efficientnet_b0", 1280)])
def test_build_gray_models(name, embed):
    model = build_model({"name": name}, 10, GRAY).eval()
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    feats = model.forward_features(x)
    assert feats.shape == (2, embed)
    logits = model.forward_head(feats)
    assert logits.shape == (2, 10)
    torch.testing.assert_close(model(x), logits)


def test_small_vgg_stages_for_photos():
    """More stages (stages=5 convs=1, experiment=photos) pool a 64x64 photo down to 4x4 before the
    global pool; the default layout's parameter names stay those of older checkpoints."""
    rgb = {"channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3, "image_size": [64, 64]}
    model = build_model({"name": "small_vgg", "stages": 5, "convs": 1}, 10, rgb).eval()
    pooled = model.backbone[:-2](torch.zeros(1, 3, 64, 64))
    assert pooled.shape == (1, 128, 4, 4)
    assert model.forward_features(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)).shape == (2, 128)
    default = build_model({"name": "small_vgg"}, 10, GRAY).backbone.state_dict()
    assert [k for k in default if k.endswith("weight")][:4] == ["0.weight", "1.weight", "3.weight", "4.weight"]
    assert default["11.weight"].shape == (64, 64, 3, 3) and len(default) == 36
    with pytest.raises(ValueError, match="stages >= 1"):
        build_model({"name": "small_vgg", "stages": 0}, 10, GRAY)


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
    # The RGB stem is summed into the grayscale one (timm's adaptation); the 1000-way fc is skipped.
    assert skipped == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(model.backbone.conv1.weight, tv.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)


def test_vit_takes_the_configured_input_size():
    model = build_model({"name": "vit_b_16"}, 3, {"channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3, "image_size": [32, 32]}).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8))
    assert feats.shape == (1, 768)
    with pytest.raises(ValueError, match="square"):
        build_model({"name": "vit_b_16"}, 3, {"channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3, "image_size": [32, 48]})


def test_freeze_backbone_trains_only_the_head():
    from catalog_vision.models import set_backbone_frozen

    torch.manual_seed(0)
    model = build_model({"name": "small_vgg", "width": 8}, 4, GRAY).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    set_backbone_frozen(model, True)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)).logsumexp(1).mean()
    loss.backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {"head.weight", "head.bias"}  # BN running stats too stay put
    set_backbone_frozen(model, False)
    model.train()
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name,channels,side", [("small_vgg", 3, 32), ("small_cnn", 1, 28), ("resnet18", 3, 64)])
def test_folding_batchnorm_keeps_the_outputs(name, channels, side):
    """Inference folds conv → BatchNorm pairs; with non-trivial running statistics the folded
    backbone must give the same features, and the Predictor the same rows."""
    from catalog_vision.models.fusion import batchnorms, fold_batchnorm

    torch.manual_seed(0)
    pre = {"channels": channels, "mean": [0.5] * channels, "std": [0.25] * channels, "image_size": [side, side]}
    model = build_model({"name": name}, 10, pre)
    for m in model.modules():  # trained-looking statistics, not the identity of a fresh BatchNorm
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(model.backbone)
    model.eval()
    n_bn = batchnorms(model.backbone)
    fused, folded = fold_batchnorm(model.backbone)
    assert n_bn > 0 and folded == n_bn and batchnorms(fused) == 0
    x = model.normalize(torch.randint(0, 256, (4, channels, side, side), dtype=torch.uint8))
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model.backbone(x), rtol=1e-4, atol=1e-4)


def test_predictor_rows_match_with_and_without_folding(tmp_path):
    from catalog_vision import checkpoint as ckpt
    from catalog_vision.infer.predictor import Predictor

    torch.manual_seed(1)
    pre = {"channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": [32, 32]}
    model = build_model({"name": "small_vgg", "width": 8}, 4, pre)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    meta = {"model": {"name": "small_vgg", "width": 8}, "classes": list("abcd"), "preprocessing": pre, "task": "multiclass", "embedding_dim": model.num_features, "epoch": 0, "metrics": {}}
    path = ckpt.save(str(tmp_path / "m"), model, meta)
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8).numpy()
    folded, plain = Predictor(path, device="cpu", dtype="float32"), Predictor(path, device="cpu", dtype="float32", fold_bn=False)
    assert folded.folded_bn == 6 and plain.folded_bn == 0
    for a, b in zip(folded.predict_pixels(x), plain.predict_pixels(x)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
