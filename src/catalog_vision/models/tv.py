"""torchvision, imported without importing ``torch._dynamo`` on the way.

torchvision's ``ops/roi_align.py`` imports ``torch._dynamo.utils`` at module level for one helper,
``is_compile_supported``, that only its deterministic ROI-align path calls; ``import torchvision``
imports ``ops``, so every process that builds a torchvision model also imports Dynamo, which takes
longer than the rest of torchvision together (``python -X importtime -c "import torchvision"``).
Predictor actors, serving replicas and training workers start fresh processes, and a backfill of a
small catalog spends much of its time starting them. So the first import of torchvision here runs
with a stand-in ``torch._dynamo.utils`` whose ``is_compile_supported`` imports the real one when
first called; the stand-in is removed as soon as torchvision is imported, so any later
``import torch._dynamo`` (``torch.compile``, ``torch.export``) gets the real package.
"""

from __future__ import annotations

import sys
import types


def _is_compile_supported(device_type):
    from torch._dynamo.utils import is_compile_supported

    return is_compile_supported(device_type)


def load() -> types.ModuleType:
    """``import torchvision``; the first time in a process, without importing Dynamo."""
    if "torchvision" in sys.modules or "torch._dynamo" in sys.modules:
        import torchvision

        return torchvision
    import torch  # noqa: F401 - the real torch package first

    package = types.ModuleType("torch._dynamo")
    package.__path__ = []  # a package with nothing else in it: any other submodule fails loudly
    utils = types.ModuleType("torch._dynamo.utils")
    utils.is_compile_supported = _is_compile_supported
    package.utils = utils
    sys.modules["torch._dynamo"], sys.modules["torch._dynamo.utils"] = package, utils
    try:
        import torchvision
    finally:
        for name, stand_in in (("torch._dynamo.utils", utils), ("torch._dynamo", package)):
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
    return torchvision
