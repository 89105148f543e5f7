"""``http(s)://`` image URIs against a real server on 127.0.0.1 that injects faults (tests/httpfaults.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import io
import time

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv  # noqa: F401  (pa.csv)
import pyarrow.parquet as pq
import pytest
from PIL import Image

from catalog_vision.storage.secrets import redact_url
from catalog_vision.ingest.catalog import _resolve_uri, catalog_table
from catalog_vision.ingest.dataset import fetch_and_decode
from catalog_vision.backfill.outcome import BackfillFailed
from catalog_vision.ingest.errors import AccessDenied, ImageTooLarge, MissingObject, ReadError, RefusedURI, error_string
from catalog_vision.ingest.images import Preprocessing, decode
from catalog_vision.storage import http, http_options
from conftest import free_port, make_cfg
from httpfaults import FaultServer, Stats, self_signed, server_ssl_context

# Generous timeouts: several test suites share this machine's two cores. Backoff is short but
# long enough for the arrival gaps to show it.
# The fault server is on 127.0.0.1: private hosts must be allowed explicitly (the default refuses them).
OPTS = dict(timeout=20, connect_timeout=10, retries=2, backoff=0.2, max_backoff=3, max_bytes=2**20, allow_private_hosts=True)


@pytest.fixture(scope="module")
def images(fmnist) -> dict[str, bytes]:
    """Real product images: the first Fashion-MNIST test images as PNG files' bytes."""
    with gzip.open(fmnist / "t10k-images-idx3-ubyte.gz") as f:
        pixels = np.frombuffer(f.read(16 + 64 * 784)[16:], np.uint8).reshape(64, 28, 28)
    out = {}
    for i, p in enumerate(pixels):
        buf = io.BytesIO()
        Image.fromarray(p).save(buf, format="PNG")
        out[f"img{i:02d}.png"] = buf.getvalue()
    return out


@pytest.fixture
def server(images):
    with FaultServer(images, retry_after=1) as s:
        yield s


def opts(**kw) -> http_options.HttpOptions:
    return http_options.HttpOptions(**{**OPTS, **kw})


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def test_each_fault_gets_its_outcome(server, images):
    kinds = ["ok", "slow", "missing", "gone", "unauthorized", "forbidden", "error500", "flaky503", "throttle429", "reset", "huge", "endless", "notimage"]
    got = dict(zip(kinds, http.fetch_many([server.url(k, "img00.png") for k in kinds], opts())))
    attempts = {k: server.attempts(k, "img00.png") for k in kinds}

    for k in ("ok", "slow", "flaky503", "throttle429", "reset"):
        assert got[k] == images["img00.png"], k
    assert got["notimage"].startswith(b"<html>")  # fetched fine; the decoder rejects it (below)
    for k, cls in {"missing": MissingObject, "gone": MissingObject, "unauthorized": AccessDenied, "forbidden": AccessDenied, "huge": ImageTooLarge, "endless": ImageTooLarge}.items():
        assert type(got[k]) is cls, (k, got[k])
        assert len(attempts[k]) == 1, f"{k} is final; it must not be retried"
    assert "HTTP 404" in str(got["missing"]) and "HTTP 410" in str(got["gone"]) and "HTTP 401" in str(got["unauthorized"])
    assert "Content-Length 1000000000000" in str(got["huge"])
    assert "stopped reading at" in str(got["endless"])  # the cap, not a timeout, ended the endless body

    # Always-500: every attempt made, the message says the status and how many.
    assert type(got["error500"]) is ReadError and "HTTP 500" in str(got["error500"]) and "after 3 attempts" in str(got["error500"])
    assert len(attempts["error500"]) == 3
    # Backoff with equal jitter waits at least half of 0.2 s, then half of 0.4 s.
    g = gaps(attempts["error500"])
    assert g[0] >= 0.1 and g[1] >= 0.2, g
    assert len(attempts["flaky503"]) == 2 and gaps(attempts["flaky503"])[0] >= 0.1
    # Retry-After: 1 beats the 0.1-0.2 s backoff.
    assert len(attempts["throttle429"]) == 2 and gaps(attempts["throttle429"])[0] >= 0.95
    assert len(attempts["reset"]) >= 2


def test_redirects_are_followed_only_where_the_uri_policy_allows(server, images):
    """A redirect to the same kind of URL is followed; one to the instance-metadata address (SSRF
    through an allowed host), to a non-http scheme, or in a loop is a RefusedURI row, not a fetch."""
    kinds = ["redirect", "redirect-metadata", "redirect-file", "redirect-loop"]
    got = dict(zip(kinds, http.fetch_many([server.url(k, "img00.png") for k in kinds], opts())))
    assert got["redirect"] == images["img00.png"] and len(server.attempts("ok", "img00.png")) == 1
    for k, why in {"redirect-metadata": "instance-metadata", "redirect-file": "not an http(s) URL", "redirect-loop": "redirects"}.items():
        assert type(got[k]) is RefusedURI and why in str(got[k]), (k, got[k])
        assert len(server.attempts(k, "img00.png")) == (http.MAX_REDIRECTS + 1 if k == "redirect-loop" else 1)  # final: not retried


def test_private_hosts_are_refused_by_default(server, images):
    """With the shipped config, a URL whose host is, or resolves to, a loopback address is a
    RefusedURI row and no request reaches the server; allow_private_hosts=true fetches them."""
    default = http_options.options(make_cfg("storage=local")["storage"])
    assert default.allow_private_hosts is False
    urls = [server.url("ok", "img00.png"), server.url("ok", "img01.png").replace("127.0.0.1", "localhost"),  # a literal IP; a DNS name
            server.url("redirect", "img02.png")]
    got = http.fetch_many(urls, default)
    assert [type(g) for g in got] == [RefusedURI] * 3, got
    assert "connects to 127.0.0.1, a loopback address" in str(got[0]) and "host 'localhost' resolves to" in str(got[1])
    assert "storage.http.allow_private_hosts=true" in str(got[0])
    assert dict(server.arrivals) == {}  # refused before connecting
    assert http.fetch_many(urls, dataclasses.replace(default, allow_private_hosts=True)) == [images["img00.png"], images["img01.png"], images["img02.png"]]


@pytest.mark.parametrize("address, refused", [
    ("8.8.8.8", None), ("2606:4700::1111", None),
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("172.16.0.1", "private"),
    ("192.168.1.1", "private"), ("fd12::1", "private"), ("0.0.0.0", "private"), ("100.64.0.1", "private"),
    ("169.254.169.254", "metadata"), ("fe80::1%eth0", "metadata"), ("fd00:ec2::254", "metadata"), ("100.100.100.200", "metadata"),
])
def test_address_rules(address, refused):
    from catalog_vision.storage.hosts import address_refusal

    strict, relaxed = address_refusal(address, False), address_refusal(address, True)
    if refused is None:
        assert strict is None and relaxed is None
    else:
        assert refused.replace("metadata", "instance-metadata") in strict
        assert (relaxed is not None) == (refused == "metadata")  # link-local and metadata stay refused when private hosts are allowed


class NamesResolver:
    """DNS answers the tests cannot get from a real DNS server on loopback: ``names`` maps a host
    name to its addresses; ``lookups`` records each query."""

    def __init__(self, names: dict[str, list[str]]):
        self.names, self.lookups = names, []

    async def resolve(self, host, port=0, family=0):
        import socket

        self.lookups.append(host)
        return [{"hostname": host, "host": a, "port": port, "family": socket.AF_INET6 if ":" in a else socket.AF_INET, "proto": 0, "flags": 0}
                for a in self.names[host]]

    async def close(self):
        pass


def fetch_with_resolver(urls: list[str], o: http_options.HttpOptions, resolver) -> list:
    async def run():
        client = http._Client(o, resolver=resolver)
        try:
            return await asyncio.gather(*(http._fetch_one(client, u, o) for u in urls))
        finally:
            await client.session.close()

    return asyncio.run_coroutine_threadsafe(run(), http._loop()).result(timeout=60)


def test_the_checked_address_is_the_one_connected_to(server, images):
    """The check runs on the resolver's answer and the connection goes to that answer: a made-up
    name resolving to 127.0.0.1 reaches the fault server when private hosts are allowed (so no
    second lookup could lead elsewhere), and a name resolving to the metadata address is refused
    even then; mixed answers keep only the allowed addresses."""
    names = {"cdn.shop.test": ["127.0.0.1"], "meta.shop.test": ["169.254.169.254"], "mixed.shop.test": ["169.254.169.254", "127.0.0.1"]}
    urls = [server.url("ok", n).replace("127.0.0.1", h) for n, h in [("img00.png", "cdn.shop.test"), ("img01.png", "meta.shop.test"), ("img02.png", "mixed.shop.test")]]
    allowed = fetch_with_resolver(urls, opts(retries=0), NamesResolver(names))
    assert allowed[0] == images["img00.png"] and allowed[2] == images["img02.png"]
    assert type(allowed[1]) is RefusedURI and "resolves to 169.254.169.254, a link-local or instance-metadata address" in str(allowed[1])
    strict = fetch_with_resolver(urls, opts(retries=0, allow_private_hosts=False), NamesResolver(names))
    assert [type(g) for g in strict] == [RefusedURI] * 3 and "resolves to 127.0.0.1, a loopback address" in str(strict[0])
    assert len(server.attempts("ok", "img00.png")) == 1 and not server.attempts("ok", "img01.png")


def test_a_stall_times_out_and_is_retried(images):
    with FaultServer(images, stall_s=30) as s:
        t0 = time.monotonic()
        (got,) = http.fetch_many([s.url("stall", "img01.png")], opts(timeout=0.5, retries=1, backoff=0.1))
        elapsed = time.monotonic() - t0
        assert type(got) is ReadError and "timed out" in str(got) and "after 2 attempts" in str(got), got
        assert len(s.attempts("stall", "img01.png")) == 2
        assert elapsed >= 2 * 0.5


def test_retry_after_longer_than_max_backoff_gives_up(images):
    with FaultServer(images, retry_after=120) as s:
        (got,) = http.fetch_many([s.url("throttle429", "img02.png")], opts(max_backoff=3))
        assert type(got) is ReadError and "Retry-After 120 s exceeds storage.http.max_backoff=3" in str(got)
        assert len(s.attempts("throttle429", "img02.png")) == 1


def test_retry_after_as_http_date():
    from email.utils import formatdate

    assert http._retry_after("7") == 7.0
    assert 5 < http._retry_after(formatdate(time.time() + 10, usegmt=True)) <= 10
    assert http._retry_after(formatdate(time.time() - 60, usegmt=True)) == 0.0
    assert http._retry_after("soon") is None and http._retry_after(None) is None


def test_per_host_limit_and_connection_reuse(server, images):
    urls = [server.url("slow", name) for name in images]  # 64 requests of >= 50 ms
    got = http.fetch_many(urls, opts(per_host_concurrency=3, max_concurrency=10))
    assert got == list(images.values())  # in order
    assert 2 <= server.stats.max_in_flight <= 3
    # Kept-alive connections: no more TCP connections than the per-host limit for 64 requests.
    assert len(server.ports) <= 3


def test_waiting_for_a_slot_does_not_count_against_the_timeout(images):
    """24 URLs of 0.25 s through 2 slots queue for 3 s; a 1 s timeout applies to each request, not the queue."""
    with FaultServer(images, slow_s=0.25) as s:
        urls = [s.url("slow", name) for name in list(images)[:24]]
        got = http.fetch_many(urls, opts(per_host_concurrency=2, timeout=1, retries=0))
        assert [type(g) for g in got] == [bytes] * 24, [str(g) for g in got if not isinstance(g, bytes)][:3]
        assert all(len(s.attempts("slow", name)) == 1 for name in list(images)[:24])


def test_overall_limit_across_hosts(images):
    shared = Stats()
    with FaultServer(images, stats=shared) as a, FaultServer(images, stats=shared) as b:
        urls = [s.url("slow", name) for name in images for s in (a, b)]
        got = http.fetch_many(urls, opts(per_host_concurrency=4, max_concurrency=5))
        assert all(isinstance(g, bytes) for g in got)
        assert a.stats.max_in_flight <= 4 and b.stats.max_in_flight <= 4
        assert 2 <= shared.max_in_flight <= 5


def test_messages_carry_no_credentials(server):
    secret = "?X-Amz-Signature=s3cretsig&X-Amz-Credential=AKIAEXAMPLE"
    auth = "http://alice:hunter2@"
    urls = [
        server.url("missing", "img00.png") + secret,
        server.url("forbidden", "img00.png").replace("http://", auth) + secret,
        server.url("error500", "img00.png").replace("http://", auth) + secret,
        f"{auth}127.0.0.1:{free_port()}/nothing-listens.png{secret}",  # connection refused
        f"{auth}[::1/unclosed.png{secret}",  # not a URL
    ]
    got = http.fetch_many(urls, opts(retries=0))
    assert [type(g) for g in got] == [MissingObject, AccessDenied, ReadError, ReadError, ReadError]
    for g in got:
        msg = error_string(g)
        assert "s3cretsig" not in msg and "AKIAEXAMPLE" not in msg and "hunter2" not in msg and "alice" not in msg, msg
    assert f"127.0.0.1:{server.port}/missing/img00.png" in str(got[0])
    assert http.safe_url(f"GET '{auth}cdn.example.com:8443/a/b.jpg{secret}#frag' failed") == "GET 'http://cdn.example.com:8443/a/b.jpg' failed"


def test_https_with_a_private_ca(images, tmp_path):
    ca, key = self_signed(tmp_path)
    with FaultServer(images, ssl_context=server_ssl_context(ca, key)) as s:
        url = s.url("ok", "img03.png")
        assert url.startswith("https://127.0.0.1:")
        (untrusted,) = http.fetch_many([url], opts())
        assert type(untrusted) is ReadError and "not trusted" in str(untrusted) and "storage.http.ca_file" in str(untrusted)
        assert s.attempts("ok", "img03.png") == []  # refused at the handshake: no request was sent
        (trusted,) = http.fetch_many([url], opts(ca_file=ca))
        assert trusted == images["img03.png"]


def test_fetch_from_code_already_in_an_event_loop(server, images):
    """Ray Serve replicas run inside an event loop; ``asyncio.run`` would refuse to nest there."""

    async def handler():
        return http.fetch_many([server.url("ok", "img04.png")], opts())

    assert asyncio.run(handler()) == [images["img04.png"]]


def test_fetch_and_decode_mixes_local_and_http(server, images, tmp_path):
    local = tmp_path / "local.png"
    local.write_bytes(images["img05.png"])
    uris = [str(local), server.url("ok", "img06.png"), server.url("notimage", "img06.png"), server.url("missing", "img07.png"), server.url("flaky503", "img08.png")]
    spec = make_cfg("experiment=smoke")["data"]["preprocessing"]
    batch = {"image_id": np.array([f"id{i}" for i in range(5)], dtype=object), "uri": np.array(uris, dtype=object), "label": np.array(["Bag"] * 5, dtype=object)}
    out = fetch_and_decode(batch, spec, {"http": dict(OPTS)})
    assert list(out["uri"]) == uris
    errors = [e.split(":", 1)[0] if e else None for e in out["error"]]
    assert errors == [None, None, "NotAnImage", "MissingObject", None]
    pre = Preprocessing.from_dict(spec)
    for i, name in ((0, "img05.png"), (1, "img06.png"), (4, "img08.png")):
        np.testing.assert_array_equal(out["pixels"][i], decode(images[name], pre))


def test_manifest_urls_pass_through_untouched(tmp_path):
    urls = ["https://cdn.example.com/p/1.jpg?sig=abc&exp=1", "http://127.0.0.1:9/x.png", "HTTPS://CDN.EXAMPLE.COM/Upper.JPG"]
    assert [_resolve_uri(u, str(tmp_path)) for u in urls] == urls
    manifest = tmp_path / "manifest.csv"
    pa.csv.write_csv(pa.table({"image_id": ["a", "b", "c"], "uri": urls, "label": ["Bag"] * 3, "split": ["test"] * 3}), manifest)
    cfg = make_cfg("experiment=smoke", f"data.manifest={manifest}")
    assert catalog_table(cfg["data"], cfg["storage"], split="test").column("uri").to_pylist() == urls


@pytest.mark.parametrize(
    "override, message",
    [
        ("storage.http.retries=-1", r"storage\.http\.retries=-1: must be >= 0"),
        ("storage.http.timeout=0", r"storage\.http\.timeout=0\.0: must be > 0"),
        ("storage.http.max_concurrency=many", r"storage\.http\.max_concurrency='many': expected an integer"),
        ("storage.http.per_host_concurrency=2.5", r"storage\.http\.per_host_concurrency=2\.5: expected an integer"),
        ("storage.http.max_backoff=0.1", r"max_backoff=0\.1 is below storage\.http\.backoff=0\.5"),
        ("storage.http.ca_file=/nonexistent/ca.pem", r"ca_file='/nonexistent/ca.pem': no such file"),
        ("storage.http.ca_file={tmp}/notes.pem", r"ca_file='.*/notes\.pem': not a PEM bundle"),
        ("+storage.http.timeuot=3", r"unknown storage\.http keys \['timeuot'\]; valid keys: \['timeout', 'connect_timeout'"),
    ],
)
@pytest.mark.parametrize("group", ["local", "s3"])
def test_bad_http_options_fail_at_start(group, override, message, tmp_path):
    manifest = tmp_path / "manifest.csv"
    pa.csv.write_csv(pa.table({"image_id": ["a"], "uri": ["https://cdn.example.com/a.jpg"], "label": ["Bag"], "split": ["test"]}), manifest)
    (tmp_path / "notes.pem").write_text("a text file, not certificates\n")
    cfg = make_cfg("experiment=smoke", f"storage={group}", f"data.manifest={manifest}", override.format(tmp=tmp_path))
    with pytest.raises(ValueError, match=message):
        catalog_table(cfg["data"], cfg["storage"], split="test")


@pytest.mark.parametrize("group", ["local", "s3"])
def test_both_storage_groups_carry_the_http_block(group):
    cfg = make_cfg(f"storage={group}", "storage.http.per_host_concurrency=4")
    o = http_options.options(cfg["storage"])
    assert o.per_host_concurrency == 4 and o.timeout == 60 and o.ca_file is None


# -- end to end: a backfill through Ray over a manifest of URLs with faults mixed in ------------

# kind of URL → expected outcome in the predictions table (None = predicted, "retry" = no row: left for a rerun)
E2E_FAULTS = {
    "missing": "MissingObject",
    "gone": "MissingObject",
    "unauthorized": "AccessDenied",
    "forbidden": "AccessDenied",
    "error500": "retry",  # ReadError: can pass, so not committed; the next run retries it
    "stall": "retry",
    "huge": "ImageTooLarge",
    "endless": "ImageTooLarge",
    "notimage": "NotAnImage",
    "flaky503": None,
    "throttle429": None,
    "reset": None,
    "slow": None,
}


@pytest.mark.slow
def test_backfill_over_http_with_faults(ray_local, random_checkpoint, images, tmp_path):
    with FaultServer(images, retry_after=1, stall_s=60) as server:
        rows = []
        names = list(images)
        for i, name in enumerate(names[:40]):  # plain URLs, one with a presigned-style query string
            rows.append(("ok", f"ok-{i:02d}", server.url("ok", name) + ("?X-Amz-Signature=s3cretsig" if i == 0 else "")))
        for j, kind in enumerate(E2E_FAULTS):
            rows.append((kind, f"{kind}-{j:02d}", server.url(kind, names[40 + j])))
        manifest = tmp_path / "manifest.parquet"
        pq.write_table(pa.table({"image_id": [r[1] for r in rows], "uri": [r[2] for r in rows], "label": ["Bag"] * len(rows), "split": ["test"] * len(rows)}), manifest)

        from catalog_vision.backfill.run import backfill

        cfg = make_cfg(
            "experiment=smoke",
            f"paths.root={tmp_path}",
            f"data.manifest={manifest}",
            f"predictor.checkpoint={random_checkpoint}",
            "storage.http.timeout=3",  # the stall: 2 attempts of 3 s
            "storage.http.retries=2",
            "storage.http.backoff=0.2",
            "storage.http.max_bytes=1048576",
            "storage.http.allow_private_hosts=true",  # the server is on 127.0.0.1
        )
        with pytest.raises(BackfillFailed, match="run again") as incomplete:
            backfill(cfg)
    out = incomplete.value.manifest
    assert out["status"] == "incomplete"

    counts = out["counts"]
    expected_errors: dict[str, int] = {}
    for cls in E2E_FAULTS.values():
        if cls and cls != "retry":
            expected_errors[cls] = expected_errors.get(cls, 0) + 1
    n_ok = 40 + sum(1 for c in E2E_FAULTS.values() if c is None)
    n_retry = sum(1 for c in E2E_FAULTS.values() if c == "retry")
    assert counts["inputs"] == len(rows) == counts["predicted"] + counts["errors"] + counts["retry_later"]
    assert counts["predicted"] == n_ok and counts["errors_by_class"] == expected_errors and counts["retry_later"] == n_retry

    got = duckdb.connect().execute(
        f"SELECT image_id, uri, label, split_part(error, ':', 1) AS cls, error FROM read_parquet('{out['output']}/*.parquet') ORDER BY image_id"
    ).fetchall()
    by_id = {r[0]: r for r in got}
    assert len(got) == len(by_id) == len(rows) - n_retry
    table: dict[str, dict[str, int]] = {}
    for kind, image_id, uri in rows:
        want = "ok" if kind == "ok" else E2E_FAULTS[kind]
        if want == "retry":
            assert image_id not in by_id, (kind, by_id.get(image_id))
            table.setdefault(kind, {}).setdefault("left for rerun", [0, None])
            table[kind]["left for rerun"][0] += 1
            continue
        _, row_uri, label, cls, error = by_id[image_id]
        assert row_uri == redact_url(uri) and "s3cretsig" not in row_uri  # the user's string, with presigned signatures masked
        outcome = cls or "predicted"
        assert outcome == ("predicted" if want in ("ok", None) else want), (kind, error)
        assert (label is None) == bool(cls)
        if error:
            assert "s3cretsig" not in error
        table.setdefault(kind, {}).setdefault(outcome, [0, error])
        table[kind][outcome][0] += 1

    print(f"\nHTTP backfill {out['run_id']}: {counts['inputs']} inputs = {counts['predicted']} predicted + {counts['errors']} errors {counts['errors_by_class']} + {counts['retry_later']} left for a rerun")
    print(f"{'URL kind':<14}{'rows':>5}  {'outcome':<15}error (its message, host and port elided)")
    for kind, outcomes in table.items():
        for outcome, (n, error) in outcomes.items():
            message = (error or "").split(": ", 1)[-1].replace(f"http://127.0.0.1:{server.port}", "…")
            print(f"{kind:<14}{n:>5}  {outcome:<15}{message[:110]}")
