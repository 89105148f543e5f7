"""Staged shifts for calibrating the drift report (``bench/drift_calibration.py``) and for tests:
changes made to images (brighter pixels, classes the model never saw, other class priors), then
embedded by running the model, never noise added to vectors. Plus a quick in-process training of
a checkpoint on chosen classes (plain PyTorch on the driver; the Ray Train recipe is ``jobs/train.py``)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


def brighten(pixels: np.ndarray, factor: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """``uint8`` pixels scaled by ``factor`` plus ``offset``, clipped to 0..255."""
    return np.clip(pixels.astype(np.float32) * factor + offset, 0, 255).astype(np.uint8)


def resample_priors(labels: np.ndarray, weights: Mapping[Any, float], n: int, rng: np.random.Generator, pool: np.ndarray | None = None) -> np.ndarray:
    """``n`` row indices drawn without replacement from ``pool`` (default: all rows) so that class
    ``c`` is drawn with relative weight ``weights.get(c, 1)`` per image."""
    pool = np.arange(len(labels)) if pool is None else pool
    w = np.array([float(weights.get(v, 1.0)) for v in labels[pool]])
    return np.sort(rng.choice(pool, n, replace=False, p=w / w.sum()))


def quick_checkpoint(path: str, pixels: np.ndarray, y: np.ndarray, classes: Sequence[str], cfg: Mapping[str, Any], *, epochs: int = 2, seed: int = 0) -> str:
    """Train ``cfg['model']`` on ``pixels (N, C, H, W) uint8`` and class indices ``y`` for a few
    epochs, and save it in the checkpoint format every job reads."""
    import torch

    from .. import checkpoint as ckpt
    from ..models import build_model

    torch.manual_seed(seed)
    pre = cfg["data"]["preprocessing"]
    model = build_model(cfg["model"], len(classes), pre)
    x, t = torch.from_numpy(np.array(pixels, copy=True)), torch.from_numpy(np.asarray(y, dtype=np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), t[idx]).backward()
            opt.step()
    model.eval()
    meta = {"model": cfg["model"], "classes": list(classes), "preprocessing": pre, "task": "multiclass",
            "embedding_dim": model.num_features, "epoch": epochs, "metrics": {}}
    return ckpt.save(path, model, meta)


def embed(predictor, pixels: np.ndarray, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Run :meth:`~catalog_vision.infer.predictor.Predictor.predict_pixels` in batches: (probabilities, embeddings)."""
    probs, embs = [], []
    for s in range(0, len(pixels), batch):
        p, e = predictor.predict_pixels(pixels[s : s + batch])
        probs.append(p)
        embs.append(e)
    return np.concatenate(probs), np.concatenate(embs)


def write_run(predictor, out_dir: str, ids: Sequence[str], uris: Sequence[str], outputs: tuple[np.ndarray, np.ndarray],
              storage: Mapping[str, Any] | None = None) -> str:
    """Predictions rows for ``outputs`` in the backfill schema, as one committed file of a run folder."""
    from ..backfill.sink import commit_batch

    table = predictor.table_from_outputs(list(ids), list(uris), outputs, [None] * len(ids))
    receipt = commit_batch(table, out_dir, storage)
    return receipt.column("file")[0].as_py()
