"""Shared by the serving tests: small checkpoints trained here, and a Serve application deployed
the way a cluster deploys it (`serve deploy` with the generated config, through the dashboard)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests
import yaml

from conftest import make_cfg

from catalog_vision import checkpoint as ckpt

SERVE_CLI = str(Path(sys.executable).with_name("serve"))


def train_checkpoint(path: Path, fmnist_arrays, seed: int, images: int = 2000, epochs: int = 1) -> str:
    """small_cnn trained on the first ``images`` Fashion-MNIST training images, saved in the
    project's format; another seed gives other weights, hence another model_id."""
    import torch

    from catalog_vision.models import build_model

    cfg = make_cfg("experiment=smoke")
    x, y = fmnist_arrays["train"]
    x, y = torch.from_numpy(x[:images, None].copy()), torch.from_numpy(y[:images].astype(np.int64))
    torch.manual_seed(seed)
    model = build_model(cfg["model"], len(cfg["data"]["classes"]), cfg["data"]["preprocessing"])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        for i in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
    model.eval()
    meta = {
        "model": cfg["model"],
        "classes": cfg["data"]["classes"],
        "preprocessing": cfg["data"]["preprocessing"],
        "task": "multiclass",
        "embedding_dim": model.num_features,
        "epoch": epochs,
        "metrics": {},
    }
    return ckpt.save(str(path), model, meta)


def dashboard_url() -> str:
    import ray

    url = ray._private.worker.get_dashboard_url()
    return url if url.startswith("http") else f"http://{url}"


def serve_deploy(config: dict, folder: Path, name: str) -> str:
    """Write ``config`` to a file and send it with the real ``serve deploy`` CLI to this test's
    cluster; returns the CLI's output."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    # `serve deploy` is idempotent, so a failed attempt is sent again: on a loaded 2-core machine the
    # first one can fail while Serve starts (its controller kills a proxy whose start is too slow).
    for attempt in range(3):
        out = subprocess.run([SERVE_CLI, "deploy", str(path), "-a", dashboard_url()], capture_output=True, text=True, timeout=600)
        if out.returncode == 0:
            return out.stdout + out.stderr
        print(f"serve deploy attempt {attempt + 1} failed:\n{out.stderr[-2000:]}")
    raise AssertionError(out.stdout + out.stderr)


def wait_for_model(url: str, model: str, model_id: str, timeout: float = 180) -> None:
    """Until the application answers ready with ``model_id`` as its version."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{url}/v2/models/{model}", timeout=5)
            last = r.status_code, r.text[:200]
            if r.status_code == 200 and r.json()["versions"] == [model_id]:
                return
        except requests.RequestException as e:
            last = repr(e)
        time.sleep(0.5)
    raise AssertionError(f"{model_id} not served at {url} within {timeout} s; last answer {last}")
