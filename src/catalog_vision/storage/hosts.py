"""Which network addresses an ``http(s)://`` image fetch may connect to (SSRF from a manifest).

The driver's URI policy (:mod:`.policy`) sees host names as written; a DNS name can still resolve to
the instance-metadata endpoint, a loopback service or a host on the cluster's private network. So
the check is made where the connection is made: :class:`GuardedResolver` is the aiohttp
connector's resolver, and the connector connects only to the addresses it returned, after the
check. A name that resolves to a public address at check time and to ``127.0.0.1`` a moment later
(DNS rebinding) gains nothing: there is no second lookup. Literal IPs in URLs never reach a
resolver (aiohttp connects to them directly), so :func:`check_url` checks those before each request.

* Link-local (``169.254.0.0/16``, ``fe80::/10``) and the clouds' metadata addresses are refused always.
* Loopback, private (RFC 1918, ULA ``fc00::/7``, CGNAT ``100.64.0.0/10``) and every other address
  that is not globally routable are refused unless ``storage.http.allow_private_hosts`` is true (a
  catalog served from an internal CDN or, in the tests, from ``127.0.0.1``).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from ..ingest.errors import RefusedURI

# AWS IMDS over IPv6, Alibaba's metadata service (inside CGNAT space), Azure's wire server (a public address).
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200", "168.63.129.16"))


class PrivateHost(Exception):
    """Raised by the resolver; :mod:`.http` turns it into a ``RefusedURI`` row naming the URL."""


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone id (fe80::1%eth0) is not part of the address
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:  # ::ffff:127.0.0.1 is 127.0.0.1
        ip = ip.ipv4_mapped
    return ip


def address_refusal(address: str, allow_private: bool) -> str | None:
    """Why a connection to ``address`` is refused (``"<ip>, a ... address"``), or None when it is allowed."""
    ip = _ip(address)
    if ip is None:
        return f"{address!r} is not an IP address"
    if ip.is_link_local or ip in METADATA_ADDRESSES:
        return f"{ip}, a link-local or instance-metadata address"
    if allow_private:
        return None
    if ip.is_loopback:
        return f"{ip}, a loopback address"
    if not ip.is_global:
        return f"{ip}, a private or otherwise non-public address"
    return None


def _advice(allow_private: bool) -> str:
    return "" if allow_private else " (set storage.http.allow_private_hosts=true to fetch from private networks)"


def check_url(url: str, allow_private: bool) -> None:
    """Raise ``RefusedURI`` when ``url``'s host is a literal IP that may not be connected to."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return  # a malformed URL fails in the request, with its own message
    if _ip(host) is not None:
        why = address_refusal(host, allow_private)
        if why:
            raise RefusedURI(f"connects to {why}{_advice(allow_private)}")


def guarded_resolver(allow_private: bool, inner=None):
    """An aiohttp resolver (built inside the running loop) that drops the addresses
    :func:`address_refusal` refuses, and raises :class:`PrivateHost` when none is left."""
    import aiohttp

    class GuardedResolver(aiohttp.abc.AbstractResolver):
        def __init__(self):
            self.inner = inner or aiohttp.ThreadedResolver()

        async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
            found = await self.inner.resolve(host, port, family)
            allowed = [h for h in found if address_refusal(h["host"], allow_private) is None]
            if found and not allowed:
                why = address_refusal(found[0]["host"], allow_private)
                raise PrivateHost(f"host {host!r} resolves to {why}{_advice(allow_private)}")
            return allowed

        async def close(self) -> None:
            await self.inner.close()

    return GuardedResolver()
