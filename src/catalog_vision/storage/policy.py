"""Which URIs a manifest may name. A manifest is input from outside the team (a product export, a
partner's feed): a row must not make the workers read local files, other buckets, or the cloud's
instance-metadata endpoint (SSRF) just by naming them.

Rules, applied on the driver before any fetch; a refused row becomes an error row
(``RefusedURI: <why>``), the rest of the catalog runs:

* the scheme is in ``data.uri_schemes`` (local paths count as ``file``);
* a relative URI, resolved against the manifest's folder, stays inside it (no ``..`` escapes);
* a manifest in object storage names no local files;
* http(s) URIs name no link-local or instance-metadata host (``169.254.0.0/16``, ``fd00:ec2::254``,
  ``metadata.google.internal``);
* with ``data.uri_prefixes`` set, the URI (with ``..`` and ``.`` segments resolved) starts with one
  of them.
"""

from __future__ import annotations

import ipaddress
import posixpath
from typing import Sequence
from urllib.parse import urlsplit

from .secrets import redact_url

DEFAULT_SCHEMES = ("s3", "https", "http", "file")
METADATA_HOSTS = ("metadata.google.internal", "metadata", "instance-data")


def scheme_of(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def normalised(uri: str) -> str:
    """``uri`` with ``.``/``..`` path segments resolved (what a prefix check must look at)."""
    if "://" not in uri:
        return posixpath.normpath(uri)
    scheme, rest = uri.split("://", 1)
    host, _, path = rest.partition("/")
    query = ""
    if scheme.lower() in ("http", "https"):
        path, q, query = path.partition("?")
        query = q + query
    path = posixpath.normpath("/" + path).lstrip("/") if path else ""
    return f"{scheme}://{host}/{path}{query}"


def _metadata_host(uri: str) -> bool:
    try:
        host = (urlsplit(uri).hostname or "").lower()
    except ValueError:
        return True  # unparseable: refuse rather than guess
    if host in METADATA_HOSTS:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_link_local or ip == ipaddress.ip_address("fd00:ec2::254")


def refusals(raw: Sequence[str], resolved: Sequence[str], manifest: str, schemes: Sequence[str] | None, prefixes: Sequence[str] | None) -> list[str | None]:
    """Per row: None when the URI may be fetched, else why not. ``raw`` is the manifest's value,
    ``resolved`` the same made absolute against the manifest's folder."""
    allowed = {s.lower() for s in (schemes or DEFAULT_SCHEMES)}
    remote_manifest = "://" in manifest and not manifest.startswith("file://")
    base = normalised(manifest.rsplit("/", 1)[0]).rstrip("/") + "/"
    prefixes = [normalised(p) for p in prefixes or []]
    out: list[str | None] = []
    for r, u in zip(raw, resolved):
        scheme, n = scheme_of(u), normalised(u)
        shown = redact_url(r)
        if scheme not in allowed:
            why = f"scheme {scheme!r} of {shown!r} is not in data.uri_schemes {sorted(allowed)}"
        elif "://" not in r and not r.startswith("/") and not n.startswith(base):
            why = f"{shown!r} leaves the manifest's folder {base!r}"
        elif remote_manifest and scheme == "file":
            why = f"{shown!r} is a local path in a manifest in object storage ({manifest})"
        elif scheme in ("http", "https") and _metadata_host(u):
            why = f"{shown!r} names a link-local or instance-metadata host"
        elif prefixes and not any(n.startswith(p) for p in prefixes):
            why = f"{shown!r} is not under data.uri_prefixes {prefixes}"
        else:
            why = None
        out.append(why)
    return out
