"""The Serve deployment: FastAPI routes over one :class:`~catalog_vision.infer.predictor.Predictor` per replica.

[1] Read the body (capped) and turn it into image bytes (:mod:`.inputs`, :mod:`.protocol`).
[2] Decode each image with :func:`catalog_vision.ingest.images.decode`, the backfill's decoder: a bad
    image becomes a per-image error, never an exception out of the request.
[3] Submit each decoded image to :meth:`ImageClassifier.predict_batch` (``@serve.batch``): batches
    are counted in images, so a multi-image request spreads over as many batch slots as it has images.
[4] Answer as the Open Inference Protocol v2 or as plain JSON.
"""


import asyncio
import logging
from typing import Any, Mapping, Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..ingest.errors import ImageError, NotAnImage, error_string
from ..ingest.images import Preprocessing, decode
from . import binary, protocol
from .admission import Admission
from .inputs import ApiError, check_image_ids, classify_images, parse_json, read_body, status_of

log = logging.getLogger("catalog_vision")

# Bodies above this many bytes are decoded off the event loop, so one large photo does not stall
# every other request's I/O on the replica.
DECODE_INLINE_BYTES = 256 * 1024

api = FastAPI(title="catalog-vision", version=__version__, docs_url=None, redoc_url=None)


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": f"invalid request: {exc.errors()}"}, status_code=422)


def decode_all(images: list[tuple[str, bytes | ImageError]], spec: Preprocessing) -> list[np.ndarray | ImageError]:
    out: list[np.ndarray | ImageError] = []
    for _, data in images:
        if isinstance(data, ImageError):
            out.append(data)
            continue
        try:
            out.append(decode(data, spec))
        except ImageError as e:
            out.append(e)
        except Exception as e:  # a decoder bug costs this image, not the request or the replica
            out.append(NotAnImage(f"unexpected {type(e).__name__}: {e}"))
    return out


def fail_if_all_failed(results: list) -> None:
    """A request whose every image failed gets the first image's status and message."""
    if results and all(isinstance(r, ImageError) for r in results):
        first = results[0]
        n = len(results)
        prefix = "" if n == 1 else f"all {n} images failed; the first: "
        raise ApiError(status_of(first), prefix + error_string(first))


def load_similar_index(folder: str | dict | None, storage, model_id: str, threads: int | None):
    """The replica's similarity index for ``GET /similar``: ``None`` when off or not built yet."""
    if not folder:
        return None
    from ..search import SimilarityIndex
    from ..search.ann import set_threads
    from ..search.store import index_dir, read_manifest

    if isinstance(folder, dict):  # serve.similar_index=auto: this model's index for the catalog
        folder = index_dir(folder["root"], model_id, folder["catalog_id"])

    manifest = read_manifest(folder, storage)
    if manifest is None:
        log.warning("no similarity index at %s (build it with python jobs/index.py): GET /similar answers 404", folder)
        return None
    if manifest["model_id"] != model_id:
        raise ValueError(f"serve.similar_index={folder!r} indexes {manifest['model_id']}, this service serves {model_id}")
    set_threads(threads or 1)
    index = SimilarityIndex.load(folder, storage)
    log.info("GET /similar: %d images of %s from %s", index.size, manifest["catalog_id"], folder)
    return index


@serve.deployment(name="ImageClassifier")
@serve.ingress(api)
class ImageClassifier:
    def __init__(self, cfg: Mapping[str, Any]):
        from ..infer.predictor import Predictor

        p, s = cfg["predictor"], cfg["serve"]
        self.name = s["model_name"]
        self.max_body = int(float(s["max_body_mb"]) * 2**20)
        self.max_images = int(s["max_images_per_request"])
        self.max_topk = int(s["max_topk"])
        self.predictor = Predictor(
            p["checkpoint"],
            cfg.get("storage"),
            device=p["device"],
            dtype=p["dtype"],
            topk=int(p["topk"]),
            low_confidence_threshold=float(p["low_confidence_threshold"]),
            channels_last=bool(p["channels_last"]),
            num_threads=s.get("threads_per_replica"),
            tta=p.get("tta") or "none",
            batch_size=int(s["max_batch_size"]),
            dtype_cache_dir=p.get("dtype_cache_dir"),
            fold_bn=bool(p.get("fold_bn", True)),
        )
        self.classes = self.predictor.classes
        self.topk = self.predictor.topk
        self.model_id = self.predictor.model_id
        self.predict_batch.set_max_batch_size(int(s["max_batch_size"]))
        self.batch_wait = float(s["batch_wait_timeout_s"])
        self.adaptive_wait = bool(s.get("adaptive_batch_wait", True))
        self.predict_batch.set_batch_wait_timeout_s(self.batch_wait)
        t = s.get("predictions") or {}
        self.writer = None
        if t.get("write"):
            from .table import PredictionsWriter

            self.writer = PredictionsWriter(self.predictor, t["root"], t["catalog_id"], cfg.get("storage"), t["flush_rows"], t["flush_seconds"])
        self.similar_index = load_similar_index(s.get("similar_index"), cfg.get("storage"), self.model_id, s.get("threads_per_replica"))
        self.max_similar_k = int(s.get("max_similar_k") or 100)
        self.admission = Admission(s.get("admission_limit"), s.get("overload_status", 503), s.get("retry_after_s", 1))
        self.batches = 0
        self.batched_images = 0
        self.largest_batch = 0
        log.info("serving %s as %r (batches of up to %s images)", self.model_id, self.name, s["max_batch_size"])

    # [3] Dynamic batching: one item per image.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(self, pixels: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        self.batches += 1
        self.batched_images += len(pixels)
        self.largest_batch = max(self.largest_batch, len(pixels))
        probs, emb = await asyncio.to_thread(self.predictor.predict_pixels, np.stack(pixels))
        return list(zip(probs, emb))

    async def predict_images(self, images: list[tuple[str, bytes | ImageError]], image_ids: list[str] | None = None) -> list:
        # [2] Decode with the backfill's decoder.
        spec = self.predictor.spec
        size = sum(len(d) for _, d in images if isinstance(d, bytes))
        decoded = await asyncio.to_thread(decode_all, images, spec) if size > DECODE_INLINE_BYTES else decode_all(images, spec)
        good = [i for i, d in enumerate(decoded) if not isinstance(d, ImageError)]
        if self.adaptive_wait:
            # A lone request waits for no one: its images go to the model at once (a batch still
            # takes every image already queued). With others in this replica, partial batches wait.
            self.predict_batch.set_batch_wait_timeout_s(self.batch_wait if self.admission.active > 1 else 0.0)
        answers = await asyncio.gather(*(self.predict_batch(decoded[i]) for i in good))
        for i, a in zip(good, answers):
            decoded[i] = a
        if image_ids is not None and self.writer is not None and good:
            await self.writer.add([image_ids[i] for i in good], answers)
        return decoded

    async def __del__(self):
        """Serve calls this when the replica stops: commit what is still buffered."""
        if getattr(self, "writer", None) is not None:
            await self.writer.flush()

    def check_health(self) -> None:
        """Serve's replica health check (every health_check_period_s): a replica counts as started,
        and gets traffic, only after __init__ loaded the model and this passed."""
        if getattr(self, "predictor", None) is None:
            raise RuntimeError("the model is not loaded")

    async def body(self, request: Request) -> bytes:
        return await read_body(request.stream(), request.headers.get("content-length"), self.max_body)

    def check_model(self, name: str, version: str | None = None) -> None:
        if name != self.name:
            raise ApiError(404, f"unknown model {name!r}; this server serves {self.name!r}")
        if version is not None and version != self.model_id:
            raise ApiError(404, f"unknown version {version!r} of model {name!r}; this server has {self.model_id!r}")

    # [4] Open Inference Protocol v2.
    @api.get("/v2/health/live")
    async def live(self) -> dict:
        return {"live": True}

    @api.get("/v2/health/ready")
    async def ready(self) -> dict:
        return {"ready": True}

    @api.get("/v2")
    async def server_metadata(self) -> dict:
        return {"name": protocol.RUNTIME, "version": __version__, "extensions": ["classification", "binary_tensor_data"]}

    @api.get("/v2/models/{name}")
    @api.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(self, name: str, version: str | None = None) -> dict:
        self.check_model(name, version)
        extra = {
            "preprocessing": self.predictor.spec.to_dict(),
            "task": self.predictor.task,
            "topk": self.topk,
            "max_topk": min(self.max_topk, len(self.classes)),
            "max_images_per_request": self.max_images,
            "max_body_bytes": self.max_body,
        }
        return protocol.model_metadata(self.name, self.model_id, self.classes, self.predictor.embedding_dim, extra)

    @api.get("/v2/models/{name}/ready")
    @api.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(self, name: str, version: str | None = None) -> dict:
        self.check_model(name, version)
        return {"name": name, "ready": True}

    @api.post("/v2/models/{name}/infer")
    @api.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(self, name: str, request: Request, version: str | None = None):
        self.check_model(name, version)
        with self.admission.admit():
            return await self._infer(request)

    async def _infer(self, request: Request):
        header_length = request.headers.get(binary.HEADER)
        mtype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        allowed = ("", "application/json") if header_length is None else ("", "application/octet-stream", "application/json")
        if mtype not in allowed:
            raise ApiError(415, f"unsupported Content-Type {mtype!r}; an inference request is application/json (application/octet-stream with {binary.HEADER})")
        head, tail = binary.split_body(await self.body(request), header_length)
        req = parse_json(head)
        images, outputs = protocol.parse_infer(req, self.max_images, self.max_topk, len(self.classes), tail)
        params = req.get("parameters") if isinstance(req.get("parameters"), dict) else {}
        ids = check_image_ids(params.get("image_id"), len(images))
        results = await self.predict_images([(str(i), b) for i, b in enumerate(images)], ids)
        fail_if_all_failed(results)
        resp = protocol.infer_response(self.name, self.model_id, req.get("id"), results, outputs, self.classes, self.predictor.embedding_dim)
        wanted = {o for o, _, b in outputs if b}
        if "error" not in {o for o, _, _ in outputs} and (wanted or params.get("binary_data_output") is True):
            wanted.add("error")  # the error output added for a failed image goes the way the others go
        encoded = binary.encode_response(resp, wanted)
        if encoded is None:
            return resp
        body, headers = encoded
        return Response(body, media_type="application/octet-stream", headers=headers)

    # [4] Plain JSON.
    @api.post("/classify")
    async def classify(self, request: Request, topk: Optional[int] = None, embedding: bool = False, image_id: Optional[str] = None) -> dict:
        k = self.topk if topk is None else topk
        limit = min(self.max_topk, len(self.classes))
        if not 1 <= k <= limit:
            raise ApiError(422, f"topk={k}; must be from 1 to {limit}")
        with self.admission.admit():
            images, ids = classify_images(await self.body(request), request.headers.get("content-type"), self.max_images, image_id)
            results = await self.predict_images(images, ids)
        fail_if_all_failed(results)
        preds = [self.prediction(name, r, k, embedding) for (name, _), r in zip(images, results)]
        return {"model_id": self.model_id, "predictions": preds}

    def prediction(self, name: str, result, k: int, with_embedding: bool) -> dict:
        if isinstance(result, ImageError):
            return {"name": name, "error": error_string(result), "status": status_of(result)}
        probs, emb = result
        s, i = protocol.top_k(probs[None], k)
        out = {
            "name": name,
            "label": self.classes[i[0, 0]],
            "score": float(s[0, 0]),
            "topk_labels": [self.classes[j] for j in i[0]],
            "topk_scores": s[0].tolist(),
            "low_confidence": bool(s[0, 0] < self.predictor.threshold),
        }
        if self.predictor.task == "multilabel":
            out["labels"] = [c for c, pr, t in zip(self.classes, probs, self.predictor.thresholds) if pr >= t]
        if with_embedding:
            out["embedding"] = emb.tolist()
        return out

    @api.get("/similar")
    async def similar(self, image_id: str, k: int = 10, label: Optional[str] = None, exclude_self: bool = False) -> dict:
        """Top-``k`` images similar to an indexed image, from the model's similarity index."""
        from ..search import UnknownImage

        if self.similar_index is None:
            raise ApiError(404, f"no similarity index for {self.model_id} is loaded: build one with python jobs/index.py and redeploy (serve.similar_index)")
        if not 1 <= k <= self.max_similar_k:
            raise ApiError(422, f"k={k}; must be from 1 to {self.max_similar_k}")
        try:
            table = await asyncio.to_thread(self.similar_index.similar_to, [image_id], k, label, exclude_self)
        except UnknownImage as e:
            raise ApiError(404, str(e)) from None
        except ValueError as e:
            raise ApiError(422, str(e)) from None
        results = table.drop_columns(["query"]).to_pylist()
        return {"model_id": self.model_id, "image_id": image_id, "k": k, "label": label, "results": results}

    @api.post("/flush")
    async def flush(self) -> dict:
        """Commit the buffered served rows now (also done every flush_rows rows / flush_seconds)."""
        if self.writer is None:
            raise ApiError(404, "serve.predictions.write is false: served images are not written to the predictions table")
        return {"committed": await self.writer.flush(), "folder": self.writer.out}

    @api.get("/stats")
    async def stats(self) -> dict:
        """Batches formed on this replica so far (the benchmark's mean batch size)."""
        mean = self.batched_images / self.batches if self.batches else 0.0
        return {
            "batches": self.batches,
            "images": self.batched_images,
            "mean_batch_size": mean,
            "max_batch_size": self.largest_batch,
            "in_flight": self.admission.active,
            "rejected_overload": self.admission.rejected,
        }
