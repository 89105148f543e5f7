"""The model-facing predictor shared by backfill (``map_batches`` actors) and serving.

Input: decoded ``uint8 (N, C, H, W)`` pixels plus ``error`` per row (and, when JPEG decoding is
deferred to the predictor's device, the JPEG bytes in ``encoded``). Output: one row per input in
the predictions schema; error rows pass through with prediction columns null.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import torch

from .. import checkpoint as ckpt
from ..ingest.dataset import fetch_and_decode
from ..ingest.errors import is_error
from ..ingest.images import Preprocessing
from . import device_decode, precision, startup
from .device import check_dtype, resolve_device, resolve_dtype
from .predictions import predictions_schema, predictions_table

log = logging.getLogger("catalog_vision")

TTA = ("none", "hflip")


def ray_node_id() -> str | None:
    """The Ray node this process runs on (``None`` outside Ray): where a predictor actor ran."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - a report without a node id is still a report
        return None


class Predictor:
    """Callable class for ``map_batches``: loads the checkpoint once, predicts per batch.

    ``batch_size`` is the batch the caller will send: ``dtype="auto"`` on CPU times the model at that
    input shape; ``dtype_cache_dir`` holds such decisions per host (:mod:`.precision`). With
    ``report_to`` (a folder URI), each host writes there which dtype it runs and why: the backfill
    folds those reports into its run manifest."""

    def __init__(
        self,
        checkpoint: str,
        storage: Mapping[str, Any] | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        topk: int = 5,
        low_confidence_threshold: float = 0.5,
        run_id: str | None = None,
        channels_last: bool = True,
        num_threads: int | None = None,
        pin_memory: bool = False,
        fetch_decode: bool = False,
        defer_jpeg: bool = False,
        tta: str = "none",
        batch_size: int = 512,
        dtype_cache_dir: str | None = None,
        report_to: str | None = None,
        fold_bn: bool = True,
        model_batch: int | str | None = None,
    ):
        init_started = time.time()
        if tta not in TTA:
            raise ValueError(f"predictor.tta={tta!r}; choose one of {list(TTA)}")
        self.tta = tta
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.device = resolve_device(device)
        check_dtype(dtype)
        self.loaded = ckpt.load(checkpoint, storage, device=self.device)
        self.model = self.loaded.model
        # conv → BatchNorm pairs folded into one conv (inference only; see models.fusion).
        self.folded_bn = 0
        if fold_bn:
            from ..models.fusion import fold_batchnorm

            self.model.backbone, self.folded_bn = fold_batchnorm(self.model.backbone)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.spec = Preprocessing.from_dict(self.loaded.preprocessing)
        # How dtype=auto was decided on CPU (measured or cached figures); None when not measured.
        self.dtype_choice: dict | None = None
        self.dtype = resolve_dtype(dtype, self.device, measure=lambda: self._measure_dtype(batch_size, dtype_cache_dir))
        # Images per model call within a batch (None: the whole batch); "auto" measures it on CPU.
        self.model_batch_choice: dict | None = None
        self.model_batch = self._model_batch(model_batch, batch_size, dtype_cache_dir)
        self.pin_memory = bool(pin_memory) and self.device.type == "cuda"
        self.classes = list(self.loaded.classes)
        # Multi-label checkpoints: sigmoid scores, and every label above its validation-chosen threshold.
        self.task = self.loaded.meta.get("task", "multiclass")
        self.thresholds = np.asarray(self.loaded.meta.get("thresholds") or [0.5] * len(self.classes), dtype=np.float32)
        self._class_names = pa.array(self.classes, pa.string())
        self.topk = max(1, min(int(topk), len(self.classes)))
        self.threshold = float(low_confidence_threshold)
        self.model_id = self.loaded.model_id
        self.run_id = run_id
        self.embedding_dim = self.model.num_features
        self.schema = predictions_schema(self.embedding_dim)
        # fetch_decode: batches arrive as catalog rows (image_id, uri, label) and this actor fetches
        # and decodes them itself (backfill with data.decode_in=actors).
        self.fetch_decode = fetch_decode
        self.defer_jpeg = defer_jpeg
        self.storage = dict(storage or {})
        if report_to:
            self._report(report_to, init_started)

    def _report(self, folder: str, init_started: float) -> None:
        import socket

        from .. import storage as st

        host = socket.gethostname()
        node = ray_node_id()
        report = {"host": host, "node_id": node, "device": self.device.type, "dtype": precision.dtype_name(self.dtype), "auto": self.dtype_choice,
                  "model_batch": self.model_batch, "model_batch_auto": self.model_batch_choice}
        # One file per Ray node and device (several nodes may share a host name): the actors of one
        # node agree, so they may overwrite each other.
        st.write_json(st.join(folder, f"{host}-{(node or 'local')[:16]}-{self.device.type}.json"), report, self.storage)
        # And one file per actor: how long this one took to come up.
        name = f"{startup.ACTOR_REPORT_PREFIX}{(node or 'local')[:16]}-{os.getpid()}.json"
        st.write_json(st.join(folder, name), startup.actor_report(node, init_started), self.storage)

    def _measure_dtype(self, batch_size: int, cache_dir: str | None) -> torch.dtype:
        import json

        shape = self.spec.shape
        n = precision.probe_batch(batch_size, shape)
        model_key = json.dumps(self.loaded.meta["model"], sort_keys=True)
        timer = precision.inference_timer(self.model, n, shape, self.channels_last)
        self.dtype_choice = precision.measured_dtype("inference", model_key, shape, n, timer, cache_dir)
        return precision.DTYPE_BY_NAME[self.dtype_choice["dtype"]]

    def _model_batch(self, setting: int | str | None, batch_size: int, cache_dir: str | None) -> int | None:
        if setting in (None, "null"):
            return None
        if setting != "auto":
            if int(setting) < 1:
                raise ValueError(f"predictor.model_batch={setting!r}; choose auto, null (the whole batch) or a positive number of images")
            return int(setting)
        if self.device.type != "cpu":
            return None  # accelerators: the whole batch
        import json

        from . import model_batch

        timer = model_batch.inference_timer(self.model, self.spec.shape, self.dtype, self.channels_last)
        model_key = json.dumps(self.loaded.meta["model"], sort_keys=True)
        self.model_batch_choice = model_batch.measured_model_batch(model_key, self.spec.shape, batch_size, self.dtype, timer, cache_dir)
        chosen = int(self.model_batch_choice["model_batch"])
        return None if chosen >= batch_size else chosen

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _to_device(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(pixels))
        if self.pin_memory and x.device.type == "cpu":
            x = x.pin_memory()
        return x.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def predict_pixels(self, pixels: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``uint8 (N,C,H,W)`` → (probabilities ``(N, K)``, L2-normalised embeddings ``(N, D)``).

        Probabilities are softmax over classes, or per-label sigmoids for multi-label models. With
        ``tta="hflip"`` the image and its mirror image both go through the model (2x the compute):
        probabilities and features are the mean of the two."""
        x = self._to_device(pixels)
        step = self.model_batch or len(x)
        if len(x) > step:  # model calls of the measured size (predictor.model_batch)
            parts = [self.predict_pixels(x[i : i + step]) for i in range(0, len(x), step)]
            return np.concatenate([p for p, _ in parts]), np.concatenate([e for _, e in parts])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        views = [x, x.flip(-1)] if self.tta == "hflip" else [x]
        probs, feats = 0.0, 0.0
        for v in views:
            with self._autocast():
                f = self.model.forward_features(v)
                logits = self.model.forward_head(f).float()
            probs = probs + (torch.sigmoid(logits) if self.task == "multilabel" else torch.softmax(logits, dim=1)) / len(views)
            feats = feats + f.float() / len(views)
        emb = torch.nn.functional.normalize(feats.float(), dim=1)
        return probs.cpu().numpy(), emb.cpu().numpy()

    def predict_table(self, image_id, uri, pixels, errors) -> pa.Table:
        errors = [str(e) if is_error(e) else None for e in errors]
        ok = np.array([e is None for e in errors], dtype=bool)
        outputs = None
        if ok.any():
            outputs = self.predict_pixels(pixels[torch.from_numpy(ok)] if isinstance(pixels, torch.Tensor) else pixels[ok])
        return self.table_from_outputs(image_id, uri, outputs, errors)

    def table_from_outputs(self, image_id, uri, outputs: tuple[np.ndarray, np.ndarray] | None, errors) -> pa.Table:
        """Rows in the predictions schema from :meth:`predict_pixels`' ``(probabilities, embeddings)``
        of the rows without an error (``None`` when every row has one). Serving builds its table rows
        here too, from the outputs it already answered with."""
        return predictions_table(self, image_id, uri, outputs, errors)

    def decode_jpegs(self, encoded: list[bytes]) -> tuple[torch.Tensor, list[str | None]]:
        """JPEG bytes → ``uint8 (N,C,H,W)`` on this predictor's device (:func:`.device_decode.decode_jpegs`)."""
        return device_decode.decode_jpegs(encoded, self.spec, self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        if self.fetch_decode:
            batch = fetch_and_decode(batch, self.loaded.preprocessing, self.storage, defer_jpeg=self.defer_jpeg)
        if "encoded" in batch:
            pixels, errors = device_decode.assemble(batch["encoded"], batch["decoded"], batch["error"], self.spec, self.device, self._to_device)
        else:
            pixels, errors = batch["pixels"], batch["error"]
        return self.predict_table(batch["image_id"], batch["uri"], pixels, errors)
