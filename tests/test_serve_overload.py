"""Overload: more concurrent requests than a deliberately tiny limit get 503 (or 429) with a
Retry-After header, at once, never a 500 or a hang, and the service keeps answering afterwards.

Two limits, each tested with real concurrent HTTP requests against a real local Serve:
the ingress's admission control (a JSON error) and Serve's own max_queued_requests in its proxy
(configured through backpressure_config: the status and Retry-After, with Serve's plain-text body)."""

from __future__ import annotations

import base64
import concurrent.futures
import json

import numpy as np
import pytest
import requests

from conftest import free_port, make_cfg

from catalog_vision.ingest.images import encode_png
from catalog_vision.serve import build_app

MODEL = "catalog-vision"
BURST = 24


def body64() -> dict:
    rng = np.random.default_rng(0)
    pngs = [encode_png((rng.random((28, 28)) * 255).astype(np.uint8)) for _ in range(64)]
    data = [base64.b64encode(p).decode() for p in pngs]
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [64], "data": data}], "outputs": [{"name": "label"}]}


def burst(url: str, n: int = BURST) -> list[tuple[int, dict, str]]:
    """``n`` 64-image requests at once; (status, headers, body) of each (an exception fails the test)."""
    body = body64()

    def one(_):
        r = requests.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=120)
        return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.text

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


@pytest.fixture(scope="module")
def serve_port(ray_local):
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()


def deploy(port: int, checkpoint: str, *overrides: str) -> str:
    from ray import serve

    cfg = make_cfg(f"predictor.checkpoint={checkpoint}", "predictor.dtype=float32", "serve.predictions.write=false", *overrides)
    serve.run(build_app(cfg), name=MODEL, route_prefix="/")
    return f"http://127.0.0.1:{port}"


def still_serving(url: str) -> None:
    r = requests.post(f"{url}/v2/models/{MODEL}/infer", json=body64(), timeout=120)
    assert r.status_code == 200 and len(r.json()["outputs"][0]["data"]) == 64
    assert requests.get(f"{url}/v2/health/ready", timeout=30).status_code == 200


@pytest.mark.slow
def test_the_ingress_sheds_load_with_503_retry_after_and_a_json_error(serve_port, random_checkpoint):
    url = deploy(
        serve_port,
        random_checkpoint,
        "serve.max_batch_size=2",
        "serve.admission_limit=2",  # a third request in the replica is turned away...
        "serve.max_ongoing_requests=4",
        "serve.max_queued_requests=1000",  # ...long before Serve's own queue would fill
        "serve.retry_after_s=3",
    )
    answers = burst(url)
    codes = sorted(a[0] for a in answers)
    print(f"\n{BURST} concurrent 64-image requests, admission_limit=2: status codes {codes}")
    shed = [a for a in answers if a[0] == 503]
    assert {a[0] for a in answers} <= {200, 503} and shed and len(shed) < BURST
    for _, headers, text in shed:
        assert headers["retry-after"] == "3" and headers["content-type"].startswith("application/json")
        assert "overloaded" in json.loads(text)["error"]
    stats = requests.get(f"{url}/stats", timeout=30).json()
    assert stats["rejected_overload"] == len(shed) and stats["in_flight"] == 0
    still_serving(url)


@pytest.mark.slow
def test_serves_own_queue_limit_answers_the_configured_status_with_retry_after(serve_port, random_checkpoint):
    url = deploy(
        serve_port,
        random_checkpoint,
        "serve.max_batch_size=1",
        "serve.admission_limit=null",  # only Serve's limit
        "serve.max_ongoing_requests=1",
        "serve.max_queued_requests=2",
        "serve.overload_status=429",
        "serve.retry_after_s=2",
    )
    answers = burst(url)
    codes = sorted(a[0] for a in answers)
    print(f"\n{BURST} concurrent 64-image requests, max_ongoing_requests=1, max_queued_requests=2: status codes {codes}")
    shed = [a for a in answers if a[0] == 429]
    assert {a[0] for a in answers} <= {200, 429} and shed and len(shed) < BURST
    for _, headers, text in shed:
        assert headers["retry-after"] == "2" and "backpressure" in text  # Serve's proxy: plain text, not our JSON
    still_serving(url)
