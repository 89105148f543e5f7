"""Which URIs a manifest may name. A manifest is input from outside the team (a product export, a
partner's feed): a row must not make the workers read local files, other buckets, or the cloud's
instance-metadata endpoint (SSRF) just by naming them.

Rules, applied on the driver before any fetch; a refused row becomes an error row
(``RefusedURI: <why>``), the rest of the catalog runs:

* the scheme is in ``data.uri_schemes`` (local paths count as ``file``);
* a relative URI, resolved against the manifest's folder, stays inside it (no ``..`` escapes);
* a manifest in object storage names no local files;
* http(s) URIs name no link-local or instance-metadata host (``169.254.0.0/16``, ``fd00:ec2::254``,
  ``metadata.google.internal``) as written; where the name resolves to is checked again when the
  fetch connects (:mod:`.hosts`: also loopback and private addresses, unless
  ``storage.http.allow_private_hosts``);
* with ``data.uri_prefixes`` set, the URI (with ``..`` and ``.`` segments resolved) starts with one
  of them; left null, a manifest in object storage may name objects in its own bucket only (other
  schemes, e.g. CDN URLs, are not restricted by it); ``[]`` lifts every prefix rule.
"""

from __future__ import annotations

import ipaddress
import posixpath
from typing import Sequence
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc

from .hosts import METADATA_ADDRESSES
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
    return ip.is_link_local or ip in METADATA_ADDRESSES


def own_bucket(manifest: str, prefixes: Sequence[str] | None) -> str | None:
    """``<scheme>://<bucket>/`` of a manifest in object storage when ``data.uri_prefixes`` is unset
    (None): the default, that such a manifest names objects of that scheme in its own bucket only."""
    scheme = scheme_of(manifest)
    if prefixes is not None or scheme in ("file", "http", "https"):
        return None
    return f"{scheme}://{manifest.split('://', 1)[1].split('/', 1)[0].lower()}/"


def refusals(raw: Sequence[str], resolved: Sequence[str], manifest: str, schemes: Sequence[str] | None, prefixes: Sequence[str] | None) -> list[str | None]:
    """Per row: None when the URI may be fetched, else why not. ``raw`` is the manifest's value,
    ``resolved`` the same made absolute against the manifest's folder."""
    allowed = {s.lower() for s in (schemes or DEFAULT_SCHEMES)}
    remote_manifest = "://" in manifest and not manifest.startswith("file://")
    bucket = own_bucket(manifest, prefixes)
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
        elif bucket and scheme == bucket.split("://")[0] and not n.lower().startswith(bucket):
            why = f"{shown!r} is outside the manifest's bucket {bucket}; list the places a manifest may name in data.uri_prefixes"
        else:
            why = None
        out.append(why)
    return out


# Vectorised: the same rules over a whole manifest column without a Python object per row. --------
CHUNK = 65536  # rows per Python pass for the rows the vectorised screen cannot clear
# Rows the screen leaves to the per-row rules: dot segments, doubled or trailing slashes,
# backslashes, userinfo, and http(s) hosts that are not plain DNS names (IPs, bare names).
_ODD = r"(^|/)\.\.?(/|$|\?|#)|(^|[^:])//|/$|\\|%2e|%2f|@"
_PLAIN_HOST = r"^https?://[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}(:[0-9]+)?([/?#]|$)"


def resolve_column(raw: pa.Array, base: str) -> pa.Array:
    """Each URI made absolute against ``base`` (the manifest's folder), as :func:`..storage.join` does."""
    relative = pc.invert(pc.or_(pc.match_substring(raw, "://"), pc.starts_with(raw, "/")))
    joined = pc.binary_join_element_wise(pa.scalar(base.rstrip("/") + "/"), pc.utf8_trim(raw, "/"), "")
    return pc.if_else(relative, joined, raw)


def _cleared(raw: pa.Array, resolved: pa.Array, manifest: str, allowed: set[str], prefixes: Sequence[str], bucket: str | None) -> pa.Array:
    """True where a row certainly passes every rule: a plain URI (nothing ``normalised`` would
    change) with an allowed scheme, a DNS host name for http(s), and a configured prefix."""
    lower = pc.utf8_lower(resolved)
    scheme = pc.fill_null(pc.struct_field(pc.extract_regex(lower, r"^(?P<s>.*?)://"), [0]), "file")
    ok = pc.and_(pc.invert(pc.match_substring_regex(lower, _ODD)), pc.is_in(scheme, value_set=pa.array(sorted(allowed))))
    if "://" in manifest and not manifest.startswith("file://"):
        ok = pc.and_(ok, pc.not_equal(scheme, "file"))
    web = pc.is_in(scheme, value_set=pa.array(["http", "https"]))
    host = pc.struct_field(pc.extract_regex(lower, r"^https?://(?P<h>[^/?#:]*)"), [0])
    plain = pc.and_(pc.match_substring_regex(lower, _PLAIN_HOST), pc.invert(pc.fill_null(pc.is_in(host, value_set=pa.array(METADATA_HOSTS)), False)))
    ok = pc.and_(ok, pc.or_(pc.invert(web), pc.fill_null(plain, False)))
    if prefixes:
        under = pc.starts_with(resolved, prefixes[0])
        for p in prefixes[1:]:
            under = pc.or_(under, pc.starts_with(resolved, p))
        ok = pc.and_(ok, under)
    if bucket:
        ok = pc.and_(ok, pc.or_(pc.not_equal(scheme, bucket.split("://")[0]), pc.starts_with(lower, bucket)))
    return pc.fill_null(ok, False)


def refusals_column(raw: pa.Array, resolved: pa.Array, manifest: str, schemes: Sequence[str] | None, prefixes: Sequence[str] | None) -> pa.Array | None:
    """:func:`refusals` for a whole column: a string array (null where the row may be fetched), or
    None when nothing is refused. Arrow compute clears the plain rows; the rest go through the
    per-row rules, ``CHUNK`` rows at a time, so memory does not grow with Python objects per row."""
    allowed = {s.lower() for s in (schemes or DEFAULT_SCHEMES)}
    # A cleared URI is plain, so ``normalised`` only appends a missing "/" to it: a literal prefix
    # match on it implies the per-row rule's match on the normalised URI.
    cleared = _cleared(raw, resolved, manifest, allowed, [normalised(p) for p in prefixes or []], own_bucket(manifest, prefixes))
    todo = pc.indices_nonzero(pc.invert(cleared))
    if len(todo) == 0:
        return None
    reasons = []
    for i in range(0, len(todo), CHUNK):
        idx = todo[i : i + CHUNK]
        reasons.append(pa.array(refusals(raw.take(idx).to_pylist(), resolved.take(idx).to_pylist(), manifest, schemes, prefixes), pa.string()))
    found = pa.concat_arrays(reasons)
    if found.null_count == len(found):
        return None
    return pc.replace_with_mask(pa.nulls(len(raw), pa.string()), pc.invert(cleared), found)
