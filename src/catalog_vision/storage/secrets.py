"""Keeping credentials out of everything catalog-vision writes: configs, commands, URIs, errors.

Credentials come from the environment by design; these functions are the net for the ones that
arrive anyway: a secret-looking config key or command-line override, a URL with ``user:password@``,
or a presigned URL's signature and credential parameters (S3 ``X-Amz-*``, GCS ``X-Goog-*``, Azure
SAS ``sig``, generic ``token``/``key``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
SECRET_WORDS = ("secret", "password", "passwd", "token", "credential", "access_key", "api_key", "apikey", "signature", "private_key")
SECRET_NAMES = ("key", "sig", "pass", "pwd", "auth", "x-amz-credential", "x-amz-signature", "x-amz-security-token", "x-goog-credential", "x-goog-signature")

# scheme://[userinfo@]rest, up to whitespace or a quote
_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s'\"<>]+)")


def is_secret_name(name: str) -> bool:
    """A config key, override or query parameter name that holds a credential."""
    n = str(name).lower().rsplit(".", 1)[-1].lstrip("+~")
    return n in SECRET_NAMES or any(w in n for w in SECRET_WORDS)


def redact_url(url: str) -> str:
    """``url`` with its userinfo and the values of secret query parameters replaced by ``***``
    (other parameters, e.g. a CDN's ``?v=2``, are kept: they can be part of what the image is)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_name(k) for k, _ in pairs):
            query = urlencode([(k, MASK if is_secret_name(k) else v) for k, v in pairs], safe="*/:")
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Every URL inside ``text`` (an error message, a command) passed through :func:`redact_url`."""
    if "://" not in text:
        return text
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def redact(obj: Any) -> Any:
    """A copy of a config with every secret-looking value replaced by ``***``: values under secret
    key names, and credentials inside URL values."""
    if isinstance(obj, Mapping):
        return {k: MASK if is_secret_name(k) and v is not None else redact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def redact_override(override: str) -> str:
    """A Hydra override ``key=value`` as it may be saved: ``key=***`` for a secret key."""
    key, eq, value = override.partition("=")
    if not eq:
        return redact_text(override)
    return f"{key}={MASK}" if is_secret_name(key) else f"{key}={redact_text(value)}"


def redact_command(argv: list[str]) -> list[str]:
    """A command line (script and overrides) safe to record."""
    return [redact_override(a) for a in argv]
