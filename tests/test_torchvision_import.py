"""Processes that build torchvision models (predictor actors, serving replicas, training workers)
import torchvision without importing ``torch._dynamo`` on the way (``catalog_vision.models.tv``),
and everything that needs the real Dynamo afterwards still gets it."""

import subprocess
import sys

CHECK = r"""
import sys, torch
from catalog_vision.models import build_model
model = build_model({"name": "resnet18"}, 3, {"channels": 3, "image_size": [64, 64], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
assert "torchvision" in sys.modules, "torchvision was not imported"
assert "torch._dynamo" not in sys.modules, "torch._dynamo was imported with torchvision"
with torch.inference_mode():
    out = model(torch.rand(2, 3, 64, 64))
assert out.shape == (2, 3), out.shape
# The stand-in is gone: the real Dynamo imports, and roi_align's deterministic path (the one that
# asks Dynamo whether it can compile) runs and gives torchvision's answer.
import torch._dynamo, torch._dynamo.config  # noqa: E401
from torchvision.ops import roi_align
x = torch.arange(64.0).reshape(1, 1, 8, 8)
boxes = torch.tensor([[0.0, 0.0, 0.0, 3.0, 3.0]])
plain = roi_align(x, boxes, (2, 2), sampling_ratio=1, aligned=True)
torch.use_deterministic_algorithms(True)
assert torch.equal(roi_align(x, boxes, (2, 2), sampling_ratio=1, aligned=True), plain)
print("ok")
"""


def test_building_a_torchvision_model_does_not_import_dynamo():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_a_process_that_already_has_dynamo_imports_torchvision_as_usual():
    code = "import torch._dynamo, sys; from catalog_vision.models import tv; tv_mod = tv.load(); import torchvision; assert tv_mod is torchvision; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
