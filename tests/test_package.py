"""The package itself: every module imports, the public names resolve the same way whatever a
process imported before, and the modules that run in Ray Data's CPU tasks (decode, commit) and in
the readers of predictions do not import torch (a second or more per fresh worker process)."""

import json
import subprocess
import sys

import pytest

IMPORT_ALL = r"""
import importlib, json, pkgutil, sys
import catalog_vision
names = sorted(m.name for m in pkgutil.walk_packages(catalog_vision.__path__, "catalog_vision."))
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "exports": {n: type(getattr(catalog_vision, n)).__name__ for n in catalog_vision.__all__}}))
"""

EXPORTS_ONLY = r"""
import json, catalog_vision
print(json.dumps({n: type(getattr(catalog_vision, n)).__name__ for n in catalog_vision.__all__}))
"""


def run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_module_imports_and_public_names_do_not_depend_on_import_order():
    everything = run(IMPORT_ALL)
    assert len(everything["modules"]) > 50  # walk_packages found the subpackages' modules
    alone = run(EXPORTS_ONLY)
    # The same kind of object (function, class, dict) with or without every submodule imported first
    assert everything["exports"] == alone, (everything["exports"], alone)
    subpackages = {m.split(".")[1] for m in everything["modules"]}
    import catalog_vision

    assert not subpackages & set(catalog_vision.__all__), "a public name equal to a subpackage's is the package once that is imported"


NO_TORCH = [
    "catalog_vision.ingest.dataset",   # Ray Data decode tasks
    "catalog_vision.ingest.catalog",
    "catalog_vision.backfill.sink",    # commit tasks
    "catalog_vision.backfill.lease",
    "catalog_vision.backfill.query",   # readers of predictions
    "catalog_vision.storage",
]


@pytest.mark.parametrize("module", NO_TORCH)
def test_task_side_modules_do_not_import_torch(module):
    code = f"import sys, json, {module}; print(json.dumps({{'torch': 'torch' in sys.modules}}))"
    assert run(code) == {"torch": False}
