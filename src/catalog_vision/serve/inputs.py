"""Request bodies → image bytes, and bad input → the 4xx that says what was wrong.

Nothing here touches the model: a request is rejected (``ApiError``) or becomes a list of
``(name, bytes)`` images, each decoded by :func:`catalog_vision.ingest.images.decode`, the decoder the
backfill uses.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, AsyncIterator

from ..ingest.errors import EmptyFile, ImageError, ImageTooLarge, NotAnImage, TruncatedImage

RAW_TYPES = ("application/octet-stream", "image/*")
MULTIPART = "multipart/form-data"
# Vector and document formats PIL cannot rasterise: named in the 415 so the caller knows why.
VECTOR_TYPES = ("image/svg+xml", "application/pdf", "application/postscript")


class ApiError(Exception):
    """A request the service refuses: HTTP ``status`` with a JSON body ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class UnsupportedImageType(ImageError):
    """A part declared a media type that is not a raster image (SVG, PDF, ...)."""


# Per-image failures and their status when a whole request fails on them.
STATUS_BY_ERROR = {EmptyFile: 400, NotAnImage: 422, TruncatedImage: 422, ImageTooLarge: 413, UnsupportedImageType: 415}


def status_of(exc: ImageError) -> int:
    for cls, status in STATUS_BY_ERROR.items():
        if isinstance(exc, cls):
            return status
    return 422


def media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """``'multipart/form-data; boundary=x'`` → ``('multipart/form-data', {'boundary': 'x'})``."""
    if not content_type:
        return "", {}
    main, *params = content_type.split(";")
    out = {}
    for p in params:
        k, _, v = p.strip().partition("=")
        out[k.strip().lower()] = v.strip().strip('"')
    return main.strip().lower(), out


def check_raster_type(mtype: str) -> None:
    """415 for a declared type that cannot be an image this service decodes."""
    if mtype in VECTOR_TYPES:
        raise UnsupportedImageType(f"{mtype} is a vector/document format; send a raster image (PNG, JPEG, WebP, GIF, TIFF, BMP)")


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """The whole body, refusing (413) at ``limit`` bytes without reading further."""
    too_big = ApiError(413, f"request body over the limit of {limit} bytes (serve.max_body_mb)")
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise ApiError(400, f"invalid Content-Length {content_length!r}") from None
        if declared > limit:
            raise too_big
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > limit:
            raise too_big
    return bytes(buf)


def parse_multipart(body: bytes, params: dict[str, str]) -> tuple[list[tuple[str, bytes, str]], list[tuple[str, str]]]:
    """``multipart/form-data`` → (file parts as ``(filename, bytes, content type)``, text fields as ``(name, value)``).

    A minimal RFC 7578 reader: exact bytes, no temp files, and the caller has already capped the body."""
    boundary = params.get("boundary")
    if not boundary:
        raise ApiError(400, "multipart/form-data without a boundary parameter")
    delim = b"--" + boundary.encode("latin-1")
    pieces = body.split(delim)
    if len(pieces) < 3 or not pieces[-1].startswith(b"--"):
        raise ApiError(400, "malformed multipart body: missing the closing boundary")
    files, fields = [], []
    for piece in pieces[1:-1]:
        if not piece.startswith(b"\r\n"):
            raise ApiError(400, "malformed multipart body: boundary not followed by CRLF")
        head, sep, data = piece[2:].partition(b"\r\n\r\n")
        if not sep or not data.endswith(b"\r\n"):
            raise ApiError(400, "malformed multipart body: part without headers or trailing CRLF")
        data = data[:-2]
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        _, disp = media_type("x;" + headers.get("content-disposition", "").partition(";")[2])
        name, filename = disp.get("name", ""), disp.get("filename")
        if filename is not None:
            files.append((filename or name, data, media_type(headers.get("content-type"))[0]))
        else:
            fields.append((name, data.decode("utf-8", errors="replace")))
    return files, fields


def classify_images(
    body: bytes, content_type: str | None, max_images: int, image_id: str | None = None
) -> tuple[list[tuple[str, bytes | ImageError]], list[str] | None]:
    """``POST /classify`` body → (``[(name, bytes or a per-image error)]``, image ids or ``None``): raw
    image bytes (one image; its id from the ``image_id`` query parameter) or a multipart upload (one
    image per file part; ids from ``image_id`` text fields, one per file, in order)."""
    mtype, params = media_type(content_type)
    if mtype == MULTIPART:
        files, fields = parse_multipart(body, params)
        ids = [v for k, v in fields if k == "image_id"] or None
        if image_id is not None:
            raise ApiError(422, "with a multipart upload, send image ids as 'image_id' form fields (one per file), not as a query parameter")
        if ids is not None and len(ids) != len(files):
            raise ApiError(422, f"{len(ids)} image_id fields for {len(files)} files; send one per file, in order")
        if not files:
            raise ApiError(400, "multipart/form-data request without any file part; send images as file parts, e.g. curl -F image=@shirt.png")
        check_count(len(files), max_images)
        out: list[tuple[str, bytes | ImageError]] = []
        for filename, data, part_type in files:
            try:
                check_raster_type(part_type)
                out.append((filename, data))
            except ImageError as e:
                out.append((filename, e))
        return out, ids
    if mtype in VECTOR_TYPES:
        raise ApiError(415, f"Content-Type {mtype} is a vector/document format; send a raster image (PNG, JPEG, WebP, GIF, TIFF, BMP)")
    if mtype and mtype != "application/octet-stream" and not mtype.startswith("image/"):
        raise ApiError(415, f"unsupported Content-Type {mtype!r}; send raw image bytes as image/* or application/octet-stream, or {MULTIPART} with file parts")
    if not body:
        raise ApiError(400, "empty request body; send the image bytes")
    return [("image", body)], None if image_id is None else [image_id]


def check_count(n: int, max_images: int) -> None:
    if n > max_images:
        raise ApiError(413, f"{n} images in one request; the limit is {max_images} (serve.max_images_per_request)")


def parse_json(body: bytes) -> Any:
    if not body:
        raise ApiError(400, "empty request body; expected an inference request JSON object")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"malformed JSON: {e}") from None


def b64decode(s: Any, i: int) -> bytes:
    if not isinstance(s, str):
        raise ApiError(422, f"inputs[0].data[{i}] is {type(s).__name__}; BYTES elements are base64 strings")
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(422, f"inputs[0].data[{i}] is not valid base64: {e}") from None


def check_image_ids(ids, n: int) -> list[str] | None:
    """The v2 request's ``parameters.image_id``: ``None`` or one non-empty string per image."""
    if ids is None:
        return None
    if not isinstance(ids, list) or len(ids) != n or not all(isinstance(i, str) and i for i in ids):
        raise ApiError(422, f"parameters.image_id must be a list of {n} non-empty strings, one per image")
    return ids
