"""Error rows: why an image did not become a model input, as an exception and as the table's string.

Every step that can fail on one image (fetch, URI policy, decode) raises or returns an
:class:`ImageError` subclass; the row carries ``'ErrorClass: message'`` in its ``error`` column and
the run manifest counts rows by that class.
"""

from __future__ import annotations

import re
from typing import Any

from ..storage.secrets import redact_text


class ImageError(Exception):
    """Base class: an input that cannot become a model input."""


class EmptyFile(ImageError):
    pass


class NotAnImage(ImageError):
    pass


class TruncatedImage(ImageError):
    pass


class ImageTooLarge(ImageError):
    pass


class MissingObject(ImageError):
    pass


class AccessDenied(ImageError):
    pass


class ReadError(ImageError):
    pass


class DecodeError(ImageError):
    """The decoder failed in a way it does not document (e.g. a malformed EXIF block making
    ``exif_transpose`` raise ``KeyError``): the bytes are what they are, so it is final, not retried."""


class RefusedURI(ImageError):
    """The manifest names a URI its policy does not allow (``data.uri_schemes``, ``data.uri_prefixes``)."""


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def error_string(exc: BaseException) -> str:
    """``'ErrorClass: message'``: the class is what the run manifest counts by."""
    msg = redact_text(str(exc).strip().replace("\n", " "))  # no presigned signatures or passwords in tables
    msg = _OBJECT_REPR.sub("<image bytes>", msg)  # PIL names its input as "<_io.BytesIO object at 0x7f...>"
    return f"{type(exc).__name__}: {msg[:500]}"


def is_error(e: Any) -> bool:
    """Error cells may come back from Arrow as None or NaN when a whole batch is clean."""
    return isinstance(e, str) and bool(e)
