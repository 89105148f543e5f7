"""The binary tensor data extension of the v2 REST protocol (Triton's ``binary_data``, what
``tritonclient.http`` sends by default).

Spec: https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md

A request or response body is the inference JSON followed by raw tensor bytes; the
``Inference-Header-Content-Length`` header gives the JSON's length. A tensor sent this way has
``"parameters": {"binary_data_size": n}`` instead of ``data``, and its ``n`` bytes follow in the
order the tensors appear. Numbers are little-endian; a BYTES tensor is, per element, a 4-byte
little-endian length and the element's bytes: here, the image file as it is (no base64).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from .inputs import ApiError

HEADER = "Inference-Header-Content-Length"
NUMPY = {"FP32": "<f4"}


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """``(inference JSON, binary tail)``; without the header the whole body is JSON."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise ApiError(400, f"invalid {HEADER} {header_length!r}; the length in bytes of the JSON part of the body") from None
    if not 0 < n <= len(body):
        raise ApiError(400, f"{HEADER}: {n}, but the body has {len(body)} bytes; the JSON part must fit in the body")
    return body[:n], body[n:]


def unpack_bytes(buf: bytes, what: str) -> list[bytes]:
    """A binary BYTES tensor → its elements."""
    out, i = [], 0
    while i < len(buf):
        if i + 4 > len(buf):
            raise ApiError(400, f"{what}: binary BYTES data ends inside an element's 4-byte length at offset {i}")
        (n,) = struct.unpack_from("<I", buf, i)
        i += 4
        if i + n > len(buf):
            raise ApiError(400, f"{what}: binary BYTES element at offset {i - 4} declares {n} bytes, {len(buf) - i} are left")
        out.append(buf[i : i + n])
        i += n
    return out


def pack(tensor: dict) -> bytes:
    """A response tensor's ``data`` as the extension's bytes."""
    if tensor["datatype"] == "BYTES":
        items = [s.encode() if isinstance(s, str) else bytes(s) for s in tensor["data"]]
        return b"".join(struct.pack("<I", len(b)) + b for b in items)
    return np.asarray(tensor["data"], dtype=NUMPY[tensor["datatype"]]).tobytes()


def encode_response(resp: dict[str, Any], binary_outputs: set[str]) -> tuple[bytes, dict[str, str]] | None:
    """The response body and headers with the named outputs moved to the binary part; ``None``
    when no output is binary (the caller answers plain JSON)."""
    tails = []
    for t in resp["outputs"]:
        if t["name"] in binary_outputs:
            raw = pack(t)
            del t["data"]
            t["parameters"] = {**t.get("parameters", {}), "binary_data_size": len(raw)}
            tails.append(raw)
    if not tails:
        return None
    head = json.dumps(resp, separators=(",", ":")).encode()
    return head + b"".join(tails), {HEADER: str(len(head))}
