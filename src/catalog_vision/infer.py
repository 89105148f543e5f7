"""The model-facing predictor shared by backfill (``map_batches`` actors) and serving.

Input: decoded ``uint8 (N, C, H, W)`` pixels plus ``error`` per row. Output: one row per input in
the predictions schema; error rows pass through with prediction columns null.
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import torch

from . import checkpoint as ckpt
from .data import is_error

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")


def predictions_schema(embedding_dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("uri", pa.string()),
            ("label", pa.string()),
            ("score", pa.float32()),
            ("topk_labels", pa.list_(pa.string())),
            ("topk_scores", pa.list_(pa.float32())),
            ("labels", pa.list_(pa.string())),
            ("embedding", pa.list_(pa.float32(), embedding_dim)),
            ("low_confidence", pa.bool_()),
            ("model_id", pa.string()),
            ("run_id", pa.string()),
            ("error", pa.string()),
        ]
    )


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise ValueError(f"predictor.device={device!r}; choose one of {list(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("predictor.device=cuda but no CUDA device is visible to this actor; set predictor=cpu or predictor.device=auto")
    return torch.device(device)


class Predictor:
    """Callable class for ``map_batches``: loads the checkpoint once, predicts per batch."""

    def __init__(
        self,
        checkpoint: str,
        storage: Mapping[str, Any] | None = None,
        *,
        device: str = "auto",
        dtype: str = "float32",
        topk: int = 5,
        low_confidence_threshold: float = 0.5,
        run_id: str | None = None,
        channels_last: bool = True,
        num_threads: int | None = None,
    ):
        if dtype not in DTYPES:
            raise ValueError(f"predictor.dtype={dtype!r}; choose one of {sorted(DTYPES)}")
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.device = resolve_device(device)
        self.loaded = ckpt.load(checkpoint, storage, device=self.device)
        self.model = self.loaded.model
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.dtype = DTYPES[dtype]
        self.classes = np.asarray(self.loaded.classes, dtype=object)
        self.topk = max(1, min(int(topk), len(self.classes)))
        self.threshold = float(low_confidence_threshold)
        self.model_id = self.loaded.model_id
        self.run_id = run_id
        self.embedding_dim = self.model.num_features
        self.schema = predictions_schema(self.embedding_dim)

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def predict_pixels(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``uint8 (N,C,H,W)`` → (probabilities ``(N, K)``, L2-normalised embeddings ``(N, D)``)."""
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            feats = self.model.forward_features(x)
            logits = self.model.forward_head(feats)
        probs = torch.softmax(logits.float(), dim=1)
        emb = torch.nn.functional.normalize(feats.float(), dim=1)
        return probs.cpu().numpy(), emb.cpu().numpy()

    def predict_table(self, image_id, uri, pixels: np.ndarray, errors) -> pa.Table:
        n = len(image_id)
        errors = [str(e) if is_error(e) else None for e in errors]
        ok = np.array([e is None for e in errors], dtype=bool)
        d = self.embedding_dim
        label = [None] * n
        score = np.zeros(n, dtype=np.float32)
        topk_labels: list = [None] * n
        topk_scores: list = [None] * n
        labels: list = [None] * n
        low: list = [None] * n
        emb = np.zeros((n, d), dtype=np.float32)
        if ok.any():
            probs, feats = self.predict_pixels(pixels[ok])
            top_scores, top_idx = torch.topk(torch.from_numpy(probs), self.topk, dim=1)
            top_scores, top_idx = top_scores.numpy().astype(np.float32), top_idx.numpy()
            for j, i in enumerate(np.flatnonzero(ok)):
                names = self.classes[top_idx[j]].tolist()
                label[i] = names[0]
                score[i] = top_scores[j, 0]
                topk_labels[i] = names
                topk_scores[i] = top_scores[j].tolist()
                labels[i] = [names[0]]
                low[i] = bool(top_scores[j, 0] < self.threshold)
            emb[ok] = feats
        emb_arr = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), d, mask=pa.array(~ok))
        return pa.Table.from_arrays(
            [
                pa.array(list(image_id), pa.string()),
                pa.array(list(uri), pa.string()),
                pa.array(label, pa.string()),
                pa.array(score, pa.float32(), mask=~ok),
                pa.array(topk_labels, pa.list_(pa.string())),
                pa.array(topk_scores, pa.list_(pa.float32())),
                pa.array(labels, pa.list_(pa.string())),
                emb_arr,
                pa.array(low, pa.bool_()),
                pa.array([self.model_id] * n, pa.string()),
                pa.array([self.run_id] * n, pa.string()),
                pa.array(errors, pa.string()),
            ],
            schema=self.schema,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return self.predict_table(batch["image_id"], batch["uri"], batch["pixels"], batch["error"])
