"""Open Inference Protocol v2 (KServe v2, Triton, MLServer) over REST: request parsing and
response tensors for an image classifier.

Spec: https://github.com/kserve/open-inference-protocol/blob/main/specification/protocol/inference_rest.md
Classification extension (Triton): https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_classification.md

The model takes one input, ``image``: ``BYTES [N]``, each element an encoded image file (PNG, JPEG,
...) as a base64 string (JSON cannot carry raw bytes). Outputs:

* ``probabilities`` ``FP32 [N, K]`` in class order (softmax; sigmoids for multi-label models). With
  ``"parameters": {"classification": k}`` it comes back as the classification extension's top-k
  instead: ``BYTES [N, k]``, each ``"<score>:<class index>:<label>"``, best first;
* ``label`` ``BYTES [N]`` and ``score`` ``FP32 [N]``: the top-1 class, as in the predictions table;
* ``embedding`` ``FP32 [N, D]``: the L2-normalised features (only when requested);
* ``error`` ``BYTES [N]``: ``""`` or ``"ErrorClass: message"`` per image; present when an image of a
  multi-image request failed while others were answered (their other outputs are zeros / ``""``).

The binary tensor data extension (:mod:`.binary`) carries the images as raw bytes instead of base64
(an input with ``binary_data_size``) and returns outputs as raw bytes (an output's ``binary_data``
parameter, or the request's ``binary_data_output``): what ``tritonclient.http`` does by default.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..ingest.errors import ImageError, error_string
from .binary import unpack_bytes
from .inputs import ApiError, b64decode, check_count

INPUT = "image"
OUTPUTS = ("probabilities", "label", "score", "embedding", "error")
DEFAULT_OUTPUTS = ("probabilities", "label", "score")
RUNTIME = "catalog-vision"


def model_metadata(name: str, model_id: str, classes: Sequence[str], embedding_dim: int, extra: dict) -> dict:
    """``GET /v2/models/{name}``: the protocol's ``$metadata_model_response`` plus ``parameters``."""
    k = len(classes)
    return {
        "name": name,
        "versions": [model_id],
        "platform": RUNTIME,
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, k]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
            {"name": "embedding", "datatype": "FP32", "shape": [-1, embedding_dim]},
            {"name": "error", "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {"model_id": model_id, "classes": list(classes), **extra},
    }


def parse_infer(req: Any, max_images: int, max_topk: int, num_classes: int, binary: bytes = b"") -> tuple[list[bytes], list[tuple[str, int | None, bool]]]:
    """An inference request object (and the binary part of its body) → (image bytes, requested
    outputs as ``(name, classification k or None, binary)``)."""
    if not isinstance(req, dict):
        raise ApiError(422, f"the inference request must be a JSON object, got {type(req).__name__}")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(422, f"'inputs' must be a list with exactly one tensor object, named {INPUT!r}")
    inp = inputs[0]
    if inp.get("name") != INPUT:
        raise ApiError(422, f"unknown input {inp.get('name')!r}; this model has one input, {INPUT!r} (BYTES [N])")
    if inp.get("datatype") != "BYTES":
        raise ApiError(422, f"input {INPUT!r} has datatype {inp.get('datatype')!r}; expected 'BYTES' (encoded image files, base64)")
    shape = inp.get("shape")
    dims_ok = isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    if not dims_ok or not 1 <= len(shape) <= 2 or (len(shape) == 2 and shape[1] != 1):
        raise ApiError(422, f"input {INPUT!r} shape {shape!r}; expected [N] (or [N, 1]) for N images")
    images = binary_images(inp, binary) if binary or isinstance(inp.get("parameters"), dict) and "binary_data_size" in inp["parameters"] else json_images(inp)
    if len(images) != int(np.prod(shape)):
        raise ApiError(422, f"input {INPUT!r} shape {shape} holds {int(np.prod(shape))} elements but the data has {len(images)}")
    if not images:
        raise ApiError(400, f"input {INPUT!r} holds no images")
    check_count(len(images), max_images)
    images = [s if isinstance(s, bytes) else b64decode(s, i) for i, s in enumerate(images)]
    params = req.get("parameters") if isinstance(req.get("parameters"), dict) else {}
    return images, parse_outputs(req.get("outputs"), max_topk, num_classes, bool(params.get("binary_data_output")))


def json_images(inp: dict) -> list:
    """The elements of ``data``: base64 strings (decoded by the caller), flattened from [N] or [N, 1]."""
    data = inp.get("data")
    if not isinstance(data, list):
        raise ApiError(422, f"input {INPUT!r} needs 'data': a list of base64 strings (or binary data, with parameters.binary_data_size)")
    return [x for row in data for x in row] if data and all(isinstance(r, list) for r in data) else data


def binary_images(inp: dict, binary: bytes) -> list[bytes]:
    """The input's elements from the binary part of the body (the one input takes all of it)."""
    size = (inp.get("parameters") or {}).get("binary_data_size")
    if size is None:
        raise ApiError(400, f"the body has {len(binary)} bytes after the JSON, but input {INPUT!r} declares no parameters.binary_data_size")
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise ApiError(400, f"input {INPUT!r} declares binary_data_size={size!r}, but the body has {len(binary)} bytes after the JSON")
    if "data" in inp:
        raise ApiError(422, f"input {INPUT!r} has both 'data' and binary_data_size; send one")
    return unpack_bytes(binary, f"input {INPUT!r}")


def parse_outputs(outputs: Any, max_topk: int, num_classes: int, binary_default: bool = False) -> list[tuple[str, int | None, bool]]:
    if outputs is None:
        return [(n, None, binary_default) for n in DEFAULT_OUTPUTS]
    if not isinstance(outputs, list) or not outputs:
        raise ApiError(422, "'outputs' must be a non-empty list of {\"name\": ...} objects")
    out = []
    for o in outputs:
        name = o.get("name") if isinstance(o, dict) else None
        if name not in OUTPUTS:
            raise ApiError(422, f"unknown output {name!r}; choose from {list(OUTPUTS)}")
        params = o.get("parameters") or {}
        if not isinstance(params, dict):
            raise ApiError(422, f"output {name!r}: 'parameters' must be an object")
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise ApiError(422, f"output {name!r}: binary_data={binary!r}; must be true or false")
        k = params.get("classification")
        if k is not None:
            if name != "probabilities":
                raise ApiError(422, f"the classification parameter applies to output 'probabilities', not {name!r}")
            limit = min(max_topk, num_classes)
            if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= limit:
                raise ApiError(422, f"classification={k!r}; must be an integer from 1 to {limit}")
        out.append((name, k, binary))
    return out


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and class indices of the ``k`` best classes per row, best first: ``torch.topk``, as the
    backfill's predictor ranks them."""
    import torch

    s, i = torch.topk(torch.from_numpy(np.ascontiguousarray(probs)), k, dim=1)
    return s.numpy(), i.numpy()


def infer_response(
    name: str, model_id: str, request_id: Any, results: Sequence[tuple[np.ndarray, np.ndarray] | ImageError],
    outputs: list[tuple[str, int | None, bool]], classes: Sequence[str], embedding_dim: int,
) -> dict:
    """Per-image results (``(probabilities, embedding)`` or an error) → the protocol's response object."""
    n, kc = len(results), len(classes)
    probs = np.zeros((n, kc), dtype=np.float32)
    emb = np.zeros((n, embedding_dim), dtype=np.float32)
    errors = [""] * n
    for i, r in enumerate(results):
        if isinstance(r, ImageError):
            errors[i] = error_string(r)
        else:
            probs[i], emb[i] = r
    ok = np.array([not e for e in errors])
    scores, idx = top_k(probs, 1)
    tensors = []
    for out_name, k, _ in outputs:
        if out_name == "probabilities" and k:
            s, ix = top_k(probs, k)
            data = [f"{float(s[r, j]):.9g}:{int(ix[r, j])}:{classes[ix[r, j]]}" if ok[r] else "" for r in range(n) for j in range(k)]
            tensors.append({"name": out_name, "datatype": "BYTES", "shape": [n, k], "data": data})
        elif out_name == "probabilities":
            tensors.append({"name": out_name, "datatype": "FP32", "shape": [n, kc], "data": probs.reshape(-1).tolist()})
        elif out_name == "label":
            tensors.append({"name": out_name, "datatype": "BYTES", "shape": [n], "data": [classes[idx[r, 0]] if ok[r] else "" for r in range(n)]})
        elif out_name == "score":
            tensors.append({"name": out_name, "datatype": "FP32", "shape": [n], "data": np.where(ok, scores[:, 0], 0).astype(np.float32).tolist()})
        elif out_name == "embedding":
            tensors.append({"name": out_name, "datatype": "FP32", "shape": [n, embedding_dim], "data": emb.reshape(-1).tolist()})
    if not ok.all() or any(o[0] == "error" for o in outputs):
        tensors.append({"name": "error", "datatype": "BYTES", "shape": [n], "data": errors})
    resp = {"model_name": name, "model_version": model_id, "outputs": tensors}
    if request_id is not None:
        resp["id"] = request_id
    return resp
