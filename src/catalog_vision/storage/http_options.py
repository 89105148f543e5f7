"""The ``storage.http`` config block as :class:`HttpOptions`, checked when a job starts (a bad key or
value names ``storage.http.<key>``), not per image."""

from __future__ import annotations

import dataclasses
import os
import ssl
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class HttpOptions:
    """The ``storage.http`` config block; see ``conf/storage/http/default.yaml`` for each key."""

    timeout: float = 60.0
    connect_timeout: float = 10.0
    retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 30.0
    per_host_concurrency: int = 16
    max_concurrency: int = 64
    max_bytes: int = 50 * 2**20
    user_agent: str = "catalog-vision/0.1"
    ca_file: str | None = None
    allow_private_hosts: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "HttpOptions":
        """Validate a config block; a bad key or value raises ``ValueError`` naming ``storage.http.<key>``."""
        d = dict(d or {})
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(f"unknown storage.http keys {unknown}; valid keys: {fields}")
        kw: dict[str, Any] = {}
        for name, value in d.items():
            if name == "ca_file" and value is None:
                continue
            kind = str if name == "ca_file" else type(getattr(cls, name))
            if kind is str:
                ok, want = isinstance(value, str), "a string"
            elif kind is bool:
                ok, want = isinstance(value, bool), "true or false"
            elif kind is int:
                ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
            else:
                ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
            if not ok:
                raise ValueError(f"storage.http.{name}={value!r}: expected {want}")
            kw[name] = kind(value) if kind is float else value
        opts = cls(**kw)
        opts._check()
        return opts

    def _check(self) -> None:
        positive = {"timeout": self.timeout, "connect_timeout": self.connect_timeout, "per_host_concurrency": self.per_host_concurrency,
                    "max_concurrency": self.max_concurrency, "max_bytes": self.max_bytes}
        for name, v in positive.items():
            if not v > 0:
                raise ValueError(f"storage.http.{name}={v!r}: must be > 0")
        for name, v in {"retries": self.retries, "backoff": self.backoff, "max_backoff": self.max_backoff}.items():
            if v < 0:
                raise ValueError(f"storage.http.{name}={v!r}: must be >= 0")
        if self.max_backoff < self.backoff:
            raise ValueError(f"storage.http.max_backoff={self.max_backoff} is below storage.http.backoff={self.backoff}")
        if self.ca_file is not None:
            if not os.path.isfile(self.ca_file):
                raise ValueError(f"storage.http.ca_file={self.ca_file!r}: no such file on this machine "
                                 "(a PEM bundle of CA certificates; it must exist on every node)")
            try:
                ssl.create_default_context().load_verify_locations(cafile=self.ca_file)
            except ssl.SSLError as e:
                raise ValueError(f"storage.http.ca_file={self.ca_file!r}: not a PEM bundle of CA certificates ({e})") from None


def options(storage: Mapping[str, Any] | None) -> HttpOptions:
    """:class:`HttpOptions` from a ``storage`` config (its ``http`` block; defaults when absent)."""
    return HttpOptions.from_dict((storage or {}).get("http"))
