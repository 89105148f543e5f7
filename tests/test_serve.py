"""Online classification: the Serve application on a real local Ray, spoken to over real HTTP on
127.0.0.1, with a checkpoint trained here on Fashion-MNIST and saved in the project's format."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import struct
import time
import zlib

import numpy as np
import pytest
import requests

from serve_helpers import train_checkpoint
from conftest import free_port, make_cfg

from catalog_vision import checkpoint as ckpt
from catalog_vision.ingest.images import Preprocessing, decode, encode_jpeg, encode_png
from catalog_vision.infer.predictor import Predictor
from catalog_vision.serve import build_app, check_serve

MODEL = "catalog-vision"
MAX_IMAGES = 64
MAX_BODY_MB = 1
MAX_BATCH = 16
SERVE_OVERRIDES = [
    f"serve.max_batch_size={MAX_BATCH}",
    "serve.max_ongoing_requests=64",
    "serve.batch_wait_timeout_s=0.01",
    f"serve.max_body_mb={MAX_BODY_MB}",
    f"serve.max_images_per_request={MAX_IMAGES}",
    "predictor.dtype=float32",
]

CATALOG = "served-catalog"  # serve.predictions.catalog_id and the later backfill's data.catalog_id


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, fmnist_arrays):
    """small_cnn trained for a few hundred steps on 4,000 training images: decisive top-1s, so
    online/offline agreement is not decided by float noise between near-equal classes."""
    return train_checkpoint(tmp_path_factory.mktemp("serve-ckpt") / "model", fmnist_arrays, seed=0, images=4000, epochs=2)


@pytest.fixture(scope="module")
def service(ray_local, trained_checkpoint, tmp_path_factory):
    from ray import serve

    port = free_port()
    predictions = tmp_path_factory.mktemp("served") / "predictions"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = make_cfg(
        f"predictor.checkpoint={trained_checkpoint}",
        f"serve.predictions.root={predictions}",
        f"serve.predictions.catalog_id={CATALOG}",
        "serve.predictions.flush_seconds=1",
        *SERVE_OVERRIDES,
    )
    serve.run(build_app(cfg), name="catalog-vision", route_prefix="/")
    yield {"url": f"http://127.0.0.1:{port}", "cfg": cfg, "checkpoint": trained_checkpoint, "predictions": predictions}
    serve.shutdown()


@pytest.fixture(scope="module")
def direct(trained_checkpoint):
    """The same checkpoint called in-process: what the service must answer."""
    return Predictor(trained_checkpoint, device="cpu", dtype="float32", topk=5)


def png_of(fmnist_arrays, i: int, split: str = "test") -> bytes:
    return encode_png(fmnist_arrays[split][0][i])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def infer_body(*images: bytes, outputs=None) -> dict:
    body = {"id": "req-1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)], "data": [b64(b) for b in images]}]}
    if outputs is not None:
        body["outputs"] = outputs
    return body


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring ``width x height`` with one tiny IDAT: the decompression-bomb shape
    (a few dozen bytes claiming billions of pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="28" height="28"><rect width="28" height="28"/></svg>'
NOT_AN_IMAGE = b"name,price\nshirt,19.99\n"


def truncated_jpeg() -> bytes:
    full = encode_jpeg((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    return full[: len(full) // 2]


def multipart(*parts: tuple[str, str | None, bytes, str | None], boundary: str = "cvboundary") -> tuple[bytes, str]:
    out = b""
    for name, filename, data, ctype in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def binary_header(size: int) -> bytes:
    return json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": size}}]}).encode()


def binary_body(head: bytes, tail: bytes, header_length: int | None = None) -> dict:
    """Request kwargs for a body in the binary tensor data extension: JSON, then raw tensor bytes."""
    length = len(head) if header_length is None else header_length
    return {"data": head + tail, "headers": {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(length)}}


def good_png() -> bytes:
    return encode_png((np.random.default_rng(1).random((28, 28)) * 255).astype(np.uint8))


def _bad_cases():
    png = good_png()
    too_many, too_many_type = multipart(*[("image", f"{i}.png", png, "image/png") for i in range(MAX_IMAGES + 1)])
    no_files, no_files_type = multipart(("note", None, b"hello", None))
    unclosed, unclosed_type = multipart(("image", "a.png", png, "image/png"))
    unclosed = unclosed[: -len("--cvboundary--\r\n")]
    over_limit = b"\x89PNG" + b"\0" * (MAX_BODY_MB * 2**20 + 1)
    infer = f"/v2/models/{MODEL}/infer"
    raw = lambda data, ctype: {"data": data, "headers": {"Content-Type": ctype}}  # noqa: E731
    return [
        # (id, method, path, request kwargs, status, words the error must contain)
        ("classify-empty-body", "post", "/classify", raw(b"", "image/png"), 400, "empty request body"),
        ("classify-not-an-image", "post", "/classify", raw(NOT_AN_IMAGE, "application/octet-stream"), 422, "NotAnImage"),
        ("classify-truncated-jpeg", "post", "/classify", raw(truncated_jpeg(), "image/jpeg"), 422, "TruncatedImage"),
        ("classify-svg-declared", "post", "/classify", raw(SVG, "image/svg+xml"), 415, "vector"),
        ("classify-svg-as-bytes", "post", "/classify", raw(SVG, "application/octet-stream"), 422, "NotAnImage"),
        ("classify-text-plain", "post", "/classify", raw(png, "text/plain"), 415, "unsupported Content-Type 'text/plain'"),
        ("classify-form-urlencoded", "post", "/classify", raw(png, "application/x-www-form-urlencoded"), 415, "image/* or application/octet-stream"),
        ("classify-over-body-limit", "post", "/classify", raw(over_limit, "image/png"), 413, "over the limit"),
        ("classify-bomb-billions", "post", "/classify", raw(png_header_only(100_000, 100_000), "image/png"), 413, "ImageTooLarge"),
        ("classify-bomb-over-max-pixels", "post", "/classify", raw(png_header_only(10_000, 6_000), "image/png"), 413, "exceeds max_pixels"),
        ("classify-too-many-images", "post", "/classify", raw(too_many, too_many_type), 413, f"the limit is {MAX_IMAGES}"),
        ("classify-multipart-no-files", "post", "/classify", raw(no_files, no_files_type), 400, "without any file part"),
        ("classify-multipart-unclosed", "post", "/classify", raw(unclosed, unclosed_type), 400, "closing boundary"),
        ("classify-multipart-no-boundary", "post", "/classify", raw(b"x", "multipart/form-data"), 400, "boundary"),
        (
            "classify-all-parts-bad",
            "post",
            "/classify",
            raw(*multipart(("a", "a.png", b"", "image/png"), ("b", "b.svg", SVG, "image/svg+xml"))),
            400,
            "all 2 images failed",
        ),
        (
            "classify-image-ids-per-file",
            "post",
            "/classify",
            raw(*multipart(("image", "a.png", png, "image/png"), ("image_id", None, b"a", None), ("image_id", None, b"b", None))),
            422,
            "2 image_id fields for 1 files",
        ),
        ("classify-topk-zero", "post", "/classify?topk=0", raw(png, "image/png"), 422, "topk=0"),
        ("classify-topk-not-a-number", "post", "/classify?topk=many", raw(png, "image/png"), 422, "topk"),
        ("infer-malformed-json", "post", infer, raw(b'{"inputs": [', "application/json"), 400, "malformed JSON"),
        ("infer-empty-body", "post", infer, raw(b"", "application/json"), 400, "empty request body"),
        ("infer-not-an-object", "post", infer, {"json": [1, 2]}, 422, "must be a JSON object"),
        ("infer-no-inputs", "post", infer, {"json": {"outputs": []}}, 422, "'inputs'"),
        (
            "infer-unknown-input",
            "post",
            infer,
            {"json": {"inputs": [{"name": "pixels", "datatype": "BYTES", "shape": [1], "data": [b64(png)]}]}},
            422,
            "unknown input 'pixels'",
        ),
        (
            "infer-wrong-datatype",
            "post",
            infer,
            {"json": {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [0.5]}]}},
            422,
            "expected 'BYTES'",
        ),
        (
            "infer-shape-mismatch",
            "post",
            infer,
            {"json": {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [3], "data": [b64(png)]}]}},
            422,
            "holds 3 elements",
        ),
        (
            "infer-bad-base64",
            "post",
            infer,
            {"json": {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not base64!"]}]}},
            422,
            "not valid base64",
        ),
        ("infer-not-an-image", "post", infer, {"json": infer_body(NOT_AN_IMAGE)}, 422, "NotAnImage"),
        ("infer-too-many-images", "post", infer, {"json": infer_body(*[b"x"] * (MAX_IMAGES + 1))}, 413, f"the limit is {MAX_IMAGES}"),
        (
            "infer-image-ids-not-a-list",
            "post",
            infer,
            {"json": {**infer_body(png), "parameters": {"image_id": "sku-1"}}},
            422,
            "parameters.image_id must be a list of 1",
        ),
        ("infer-unknown-output", "post", infer, {"json": infer_body(png, outputs=[{"name": "logits"}])}, 422, "unknown output 'logits'"),
        (
            "infer-classification-too-large",
            "post",
            infer,
            {"json": infer_body(png, outputs=[{"name": "probabilities", "parameters": {"classification": 11}}])},
            422,
            "from 1 to 10",
        ),
        (
            "infer-classification-on-label",
            "post",
            infer,
            {"json": infer_body(png, outputs=[{"name": "label", "parameters": {"classification": 2}}])},
            422,
            "applies to output 'probabilities'",
        ),
        # The binary tensor data extension (what tritonclient sends): a body that does not add up is a 400.
        ("infer-binary-header-past-body", "post", infer, binary_body(b'{"inputs": []}', b"", header_length=999), 400, "must fit in the body"),
        ("infer-binary-size-mismatch", "post", infer, binary_body(binary_header(10), struct.pack("<I", 0)), 400, "declares binary_data_size=10"),
        ("infer-binary-element-overrun", "post", infer, binary_body(binary_header(8), struct.pack("<I", 100) + b"\x89PNG"), 400, "declares 100 bytes"),
        ("infer-binary-without-size", "post", infer, binary_body(json.dumps(infer_body(png)).encode(), b"tail"), 400, "declares no parameters.binary_data_size"),
        ("infer-text-plain", "post", infer, raw(b"{}", "text/plain"), 415, "application/json"),
        ("infer-unknown-model", "post", "/v2/models/resnet/infer", {"json": infer_body(png)}, 404, "unknown model 'resnet'"),
        ("metadata-unknown-model", "get", "/v2/models/resnet", {}, 404, "unknown model 'resnet'"),
        ("ready-unknown-model", "get", "/v2/models/resnet/ready", {}, 404, "unknown model 'resnet'"),
        ("metadata-unknown-version", "get", f"/v2/models/{MODEL}/versions/v9", {}, 404, "unknown version 'v9'"),
        ("unknown-route", "get", "/v1/models", {}, 404, "Not Found"),
        ("wrong-method", "post", "/v2/health/live", {}, 405, "Method Not Allowed"),
    ]


BAD_CASES = _bad_cases()


@pytest.mark.parametrize("method,path,kwargs,status,words", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_request_gets_its_4xx_and_a_json_error(service, method, path, kwargs, status, words):
    r = requests.request(method, service["url"] + path, timeout=60, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) >= {"error"} and isinstance(body["error"], str) and words in body["error"], body


def test_the_default_ingress_is_haproxy_in_front_of_the_replica(service):
    """serve.ingress=haproxy (the default): the process listening on the service's port is the
    HAProxy that Ray Serve starts, and Ray's workers carry the mode's environment."""
    import psutil

    from catalog_vision.serve.run import cluster_ingress

    port = int(service["url"].rsplit(":", 1)[1])
    assert requests.get(f"{service['url']}/v2/health/live", timeout=30).status_code == 200
    listeners = {c.pid for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid}
    assert listeners and {psutil.Process(pid).name() for pid in listeners} == {"haproxy"}
    assert service["cfg"]["serve"]["ingress"] == cluster_ingress() == "haproxy"


def test_health_and_metadata(service, direct):
    url = service["url"]
    assert requests.get(f"{url}/v2/health/live", timeout=30).json() == {"live": True}
    assert requests.get(f"{url}/v2/health/ready", timeout=30).json() == {"ready": True}
    assert requests.get(f"{url}/v2/models/{MODEL}/ready", timeout=30).json() == {"name": MODEL, "ready": True}
    meta = requests.get(f"{url}/v2/models/{MODEL}", timeout=30).json()
    model_id = ckpt.model_id_of(ckpt.read_meta(service["checkpoint"]))
    assert meta["name"] == MODEL and meta["versions"] == [model_id]
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    shapes = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert shapes["probabilities"] == ("FP32", [-1, 10]) and shapes["embedding"] == ("FP32", [-1, direct.embedding_dim])
    assert meta["parameters"]["classes"] == direct.classes and meta["parameters"]["model_id"] == model_id
    assert meta["parameters"]["preprocessing"] == Preprocessing.from_dict(direct.loaded.preprocessing).to_dict()
    # The versioned path answers for the served version.
    assert requests.get(f"{url}/v2/models/{MODEL}/versions/{model_id}", timeout=30).json() == meta


def test_classify_raw_and_multipart_match_the_direct_predictor(service, direct, fmnist_arrays):
    url = service["url"]
    pngs = [png_of(fmnist_arrays, i) for i in range(3)]
    probs, emb = direct.predict_pixels(np.stack([decode(b, direct.spec) for b in pngs]))

    r = requests.post(f"{url}/classify?embedding=true", data=pngs[0], headers={"Content-Type": "image/png"}, timeout=60)
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    assert r.json()["model_id"] == direct.model_id
    order = np.argsort(-probs[0], kind="stable")[:5]
    assert p["label"] == direct.classes[order[0]] and p["topk_labels"] == [direct.classes[j] for j in order]
    np.testing.assert_allclose(p["topk_scores"], probs[0][order], atol=1e-5)
    np.testing.assert_allclose(p["embedding"], emb[0], atol=1e-5)
    assert p["low_confidence"] == (p["score"] < direct.threshold)

    # Several images in one upload, one of them bad: the bad one is a per-item error, the others answered.
    body, ctype = multipart(
        ("image", "a.png", pngs[1], "image/png"), ("image", "broken.jpg", truncated_jpeg(), "image/jpeg"), ("image", "c.png", pngs[2], "image/png")
    )
    r = requests.post(f"{url}/classify?topk=2", data=body, headers={"Content-Type": ctype}, timeout=60)
    assert r.status_code == 200, r.text
    a, broken, c = r.json()["predictions"]
    assert (a["name"], broken["name"], c["name"]) == ("a.png", "broken.jpg", "c.png")
    assert broken["status"] == 422 and broken["error"].startswith("TruncatedImage:") and "label" not in broken
    for got, i in ((a, 1), (c, 2)):
        assert got["label"] == direct.classes[int(probs[i].argmax())] and len(got["topk_labels"]) == 2
        assert abs(got["score"] - float(probs[i].max())) < 1e-5 and "embedding" not in got


def test_infer_v2_outputs_and_the_classification_extension(service, direct, fmnist_arrays):
    pngs = [png_of(fmnist_arrays, i) for i in range(4)]
    probs, emb = direct.predict_pixels(np.stack([decode(b, direct.spec) for b in pngs]))
    outputs = [{"name": "probabilities", "parameters": {"classification": 3}}, {"name": "label"}, {"name": "score"}, {"name": "embedding"}]
    r = requests.post(f"{service['url']}/v2/models/{MODEL}/infer", json=infer_body(*pngs, outputs=outputs), timeout=60)
    assert r.status_code == 200, r.text
    resp = r.json()
    assert resp["model_name"] == MODEL and resp["model_version"] == direct.model_id and resp["id"] == "req-1"
    out = {o["name"]: o for o in resp["outputs"]}
    assert set(out) == {"probabilities", "label", "score", "embedding"}  # no error output: every image was fine
    top = out["probabilities"]
    assert (top["datatype"], top["shape"]) == ("BYTES", [4, 3])
    for row in range(4):
        cells = [s.split(":", 2) for s in top["data"][row * 3 : row * 3 + 3]]
        order = np.argsort(-probs[row], kind="stable")[:3]
        assert [int(i) for _, i, _ in cells] == order.tolist()
        assert [lbl for _, _, lbl in cells] == [direct.classes[j] for j in order]
        np.testing.assert_allclose([float(s) for s, _, _ in cells], probs[row][order], atol=1e-5)
    assert out["label"]["data"] == [direct.classes[int(p.argmax())] for p in probs] and out["label"]["shape"] == [4]
    np.testing.assert_allclose(out["score"]["data"], probs.max(1), atol=1e-5)
    assert out["embedding"]["shape"] == [4, direct.embedding_dim]
    np.testing.assert_allclose(np.reshape(out["embedding"]["data"], (4, -1)), emb, atol=1e-5)

    # Default outputs: the full probability tensor in class order, row-major.
    r = requests.post(f"{service['url']}/v2/models/{MODEL}/infer", json=infer_body(pngs[0]), timeout=60)
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert set(out) == {"probabilities", "label", "score"} and out["probabilities"]["shape"] == [1, 10]
    np.testing.assert_allclose(out["probabilities"]["data"], probs[0], atol=1e-5)

    # One bad image among good ones: answered, with the protocol-level error output per image.
    r = requests.post(f"{service['url']}/v2/models/{MODEL}/infer", json=infer_body(pngs[0], SVG, pngs[1]), timeout=60)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["error"]["shape"] == [3] and out["error"]["data"][0] == out["error"]["data"][2] == ""
    assert out["error"]["data"][1].startswith("NotAnImage:")
    assert out["label"]["data"] == [direct.classes[int(probs[0].argmax())], "", direct.classes[int(probs[1].argmax())]]


def test_batches_are_counted_in_images_and_form_under_concurrency(service, fmnist_arrays):
    url = service["url"]
    before = requests.get(f"{url}/stats", timeout=30).json()
    # One 48-image request: its images fill batches of max_batch_size.
    pngs = [png_of(fmnist_arrays, i) for i in range(48)]
    r = requests.post(f"{url}/v2/models/{MODEL}/infer", json=infer_body(*pngs, outputs=[{"name": "label"}]), timeout=60)
    assert r.status_code == 200 and len(r.json()["outputs"][0]["data"]) == 48
    after = requests.get(f"{url}/stats", timeout=30).json()
    assert after["images"] - before["images"] == 48
    assert after["batches"] - before["batches"] == 48 // MAX_BATCH and after["max_batch_size"] == MAX_BATCH

    # Concurrent single-image requests share batches.
    before = after
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda b: requests.post(f"{url}/classify", data=b, headers={"Content-Type": "image/png"}, timeout=60).status_code, pngs[:32]))
    assert codes == [200] * 32
    after = requests.get(f"{url}/stats", timeout=30).json()
    assert after["images"] - before["images"] == 32 and after["batches"] - before["batches"] < 32


def test_a_lone_request_does_not_wait_for_a_batch_while_concurrent_ones_still_share_batches(service, fmnist_arrays):
    """serve.adaptive_batch_wait: with a 3 s batch wait, a request alone in the replica is answered at
    once (nothing else can join its batch), while requests that arrive together wait and batch."""
    from ray import serve

    wait = 3.0
    cfg = make_cfg(f"predictor.checkpoint={service['checkpoint']}", "serve.predictions.write=false", *SERVE_OVERRIDES, f"serve.batch_wait_timeout_s={wait}")
    assert cfg["serve"]["adaptive_batch_wait"] is True  # the default
    serve.run(build_app(cfg), name="adaptive", route_prefix="/adaptive")
    url = f"{service['url']}/adaptive"
    try:
        pngs = [png_of(fmnist_arrays, i) for i in range(8)]
        for b in pngs[:3]:
            t = time.monotonic()
            r = requests.post(f"{url}/classify", data=b, headers={"Content-Type": "image/png"}, timeout=60)
            assert r.status_code == 200 and time.monotonic() - t < wait / 2, "a lone request waited for its batch to fill"
        before = requests.get(f"{url}/stats", timeout=30).json()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda b: requests.post(f"{url}/classify", data=b, headers={"Content-Type": "image/png"}, timeout=60).status_code, pngs))
        after = requests.get(f"{url}/stats", timeout=30).json()
        assert codes == [200] * 8 and after["images"] - before["images"] == 8
        print(f"8 concurrent requests: {after['batches'] - before['batches']} batches")
        assert after["batches"] - before["batches"] < 8
    finally:
        serve.delete("adaptive")


def test_still_serving_after_the_bad_requests(service, direct, fmnist_arrays):
    """Runs after the matrix (file order): the same replica answers, correctly."""
    png = png_of(fmnist_arrays, 7)
    r = requests.post(f"{service['url']}/classify", data=png, headers={"Content-Type": "image/png"}, timeout=60)
    assert r.status_code == 200
    probs, _ = direct.predict_pixels(np.stack([decode(png, direct.spec)]))
    assert r.json()["predictions"][0]["label"] == direct.classes[int(probs[0].argmax())]
    assert requests.get(f"{service['url']}/v2/health/ready", timeout=30).status_code == 200


@pytest.mark.slow
def test_served_images_land_in_the_predictions_table_and_a_backfill_skips_them(service, direct, local_catalog, tmp_path):
    import duckdb

    from catalog_vision.backfill.run import backfill
    from catalog_vision.infer.predictions import predictions_schema

    manifest = f"{local_catalog['root']}/catalog/manifest.parquet"
    catalog = duckdb.connect().execute(f"SELECT image_id, uri FROM read_parquet('{manifest}') WHERE split = 'test' ORDER BY image_id").fetchall()
    base = str(local_catalog["root"]) + "/catalog"
    data = {i: open(u if u.startswith("/") else f"{base}/{u}", "rb").read() for i, u in catalog[:6]}
    ids = list(data)
    url = service["url"]
    # Four through the protocol (ids in the request parameters), two through a multipart upload.
    body = infer_body(*[data[i] for i in ids[:4]], outputs=[{"name": "label"}])
    body["parameters"] = {"image_id": ids[:4]}
    assert requests.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=60).status_code == 200
    form, ctype = multipart(
        ("image", "a.png", data[ids[4]], "image/png"),
        ("image_id", None, ids[4].encode(), None),
        ("image", "b.png", data[ids[5]], "image/png"),
        ("image_id", None, ids[5].encode(), None),
        ("image", "bad.png", b"nope", "image/png"),
        ("image_id", None, b"bad-1", None),
    )
    r = requests.post(f"{url}/classify", data=form, headers={"Content-Type": ctype}, timeout=60)
    assert r.status_code == 200 and "error" in r.json()["predictions"][2]
    # Mismatched ids are a 422, and nothing is written for them.
    body["parameters"] = {"image_id": ids[:3]}
    assert requests.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=60).status_code == 422

    folder = service["predictions"] / direct.model_id / CATALOG  # the model's table for the catalog the service names
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(1 for _ in folder.glob("serve-*/*.parquet")) == 0:
        time.sleep(0.5)  # flush_seconds=1 after the first buffered row
    files = sorted(folder.glob("serve-*/*.parquet"))
    assert files and not list(folder.glob("serve-*/.*.tmp"))
    import pyarrow.parquet as pq

    assert pq.read_schema(files[0]).remove_metadata() == predictions_schema(direct.embedding_dim)
    rows = (
        duckdb.connect()
        .execute(f"SELECT image_id, label, score, embedding, model_id, run_id, error FROM read_parquet('{folder}/serve-*/*.parquet') ORDER BY image_id")
        .fetchall()
    )
    assert [r[0] for r in rows] == sorted(ids)  # the bad image is not a row
    probs, emb = direct.predict_pixels(np.stack([decode(data[r[0]], direct.spec) for r in rows]))
    for r, p, e in zip(rows, probs, emb):
        assert r[1] == direct.classes[int(p.argmax())] and abs(r[2] - float(p.max())) < 1e-5
        np.testing.assert_allclose(r[3], e, atol=1e-5)
        assert r[4] == direct.model_id and r[5].startswith("serve-") and r[6] is None

    # A backfill of the catalog with the same model labels only the rest.
    cfg = make_cfg(
        "experiment=smoke",
        f"paths.root={tmp_path}",
        f"data.manifest={manifest}",
        f"data.catalog_id={CATALOG}",
        f"paths.predictions={service['predictions']}",
        f"predictor.checkpoint={service['checkpoint']}",
        "predictor.dtype=float32",
    )
    run = backfill(cfg)
    assert run["counts"]["skipped"] == 6 and run["counts"]["predicted"] == len(catalog) - 6
    n, distinct = duckdb.connect().execute(f"SELECT count(*), count(DISTINCT image_id) FROM read_parquet('{folder}/*/*.parquet')").fetchone()
    assert n == distinct == len(catalog)

    # Serving images the table already has (labeled by the backfill, or served before) adds no row,
    # so the table keeps one row per image and the next backfill still succeeds.
    again = [i for i, _ in catalog[6:9]] + ids[:1]
    extra = {i: open(u if u.startswith("/") else f"{base}/{u}", "rb").read() for i, u in catalog[6:9]}
    body = infer_body(*[extra.get(i) or data[i] for i in again], outputs=[{"name": "label"}])
    body["parameters"] = {"image_id": again}
    for _ in range(2):  # the same ids twice: in one flush window or two
        assert requests.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=60).status_code == 200
    assert requests.post(f"{url}/flush", timeout=60).status_code == 200
    n, distinct = duckdb.connect().execute(f"SELECT count(*), count(DISTINCT image_id) FROM read_parquet('{folder}/*/*.parquet')").fetchone()
    assert n == distinct == len(catalog)
    rerun = backfill(cfg)
    assert rerun["status"] == "succeeded" and rerun["counts"]["skipped"] == len(catalog) and rerun["counts"]["model_rows"] == len(catalog)


@pytest.mark.parametrize(
    "overrides,words",
    [
        (["serve.max_batch_size=64", "serve.max_ongoing_requests=8"], "serve.max_ongoing_requests=8 < serve.max_batch_size=64"),
        (["serve.num_replicas=0"], "serve.num_replicas=0"),
        (["serve.num_replicas=2", "serve.autoscaling={max_replicas: 4}"], "use num_replicas: auto"),
        (["serve.num_replicas=auto", "serve.autoscaling={max_replica: 4}"], "unknown keys ['max_replica']"),
        (["serve.max_body_mb=0"], "serve.max_body_mb=0"),
        (["predictor.dtype=fp8"], "predictor.dtype='fp8'"),
    ],
)
def test_bad_serve_config_is_refused_before_start(overrides, words):
    cfg = make_cfg("predictor.checkpoint=/nonexistent", *overrides)
    with pytest.raises(ValueError) as e:
        build_app(cfg)
    assert words in str(e.value)


def test_default_serve_config_is_valid():
    cfg = make_cfg()
    check_serve(cfg["serve"])
    assert cfg["serve"]["max_ongoing_requests"] >= cfg["serve"]["max_batch_size"]


@pytest.mark.slow
def test_online_answers_equal_the_backfill_on_all_fashion_mnist_test_images(service, direct, fmnist, tmp_path):
    """All 10,000 Fashion-MNIST test images: backfilled to Parquet, then sent over HTTP (64-image
    v2 requests, 4 at a time) with the same checkpoint and dtype; same top-1, top-k, scores and
    embeddings within float tolerance (batches of other sizes round differently)."""
    import duckdb

    from catalog_vision import make_catalog
    from catalog_vision.backfill.run import backfill

    cfg = make_cfg("experiment=smoke", f"paths.root={tmp_path}", f"data.source={fmnist}", "data.limit.train=64", "data.limit.val=32", "data.limit.test=null")
    summary = make_catalog(cfg)
    cfg = make_cfg(
        "experiment=smoke", f"paths.root={tmp_path}", f"predictor.checkpoint={service['checkpoint']}", "predictor.dtype=float32", "output.rows_per_file=100000"
    )
    run = backfill(cfg)
    rows = (
        duckdb.connect()
        .execute(
            f"SELECT image_id, uri, label, score, topk_labels, topk_scores, embedding, error FROM read_parquet('{run['output']}/*.parquet') ORDER BY image_id"
        )
        .fetchall()
    )
    assert summary["splits"]["test"] == len(rows) == 10_000 and all(r[7] is None for r in rows)

    def infer(chunk):
        images = [open(r[1], "rb").read() for r in chunk]
        outputs = [{"name": "probabilities", "parameters": {"classification": 5}}, {"name": "label"}, {"name": "score"}, {"name": "embedding"}]
        r = requests.post(f"{service['url']}/v2/models/{MODEL}/infer", json=infer_body(*images, outputs=outputs), timeout=120)
        assert r.status_code == 200, r.text
        return {o["name"]: o for o in r.json()["outputs"]}

    t0 = time.perf_counter()
    chunks = [rows[i : i + MAX_IMAGES] for i in range(0, len(rows), MAX_IMAGES)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(infer, chunks))
    seconds = time.perf_counter() - t0
    labels = [lbl for a in answers for lbl in a["label"]["data"]]
    scores = np.concatenate([a["score"]["data"] for a in answers])
    emb = np.concatenate([np.reshape(a["embedding"]["data"], (-1, direct.embedding_dim)) for a in answers])
    topk = [[cell.split(":", 2) for cell in a["probabilities"]["data"][j * 5 : j * 5 + 5]] for a in answers for j in range(a["probabilities"]["shape"][0])]

    offline_scores = np.array([r[3] for r in rows])
    offline_topk_scores = np.array([r[5] for r in rows])
    # A label may differ only where the backfill's top two classes are tied to float noise.
    near_ties = offline_topk_scores[:, 0] - offline_topk_scores[:, 1] < 1e-5
    differ = [i for i, r in enumerate(rows) if labels[i] != r[2]]
    assert all(near_ties[i] and labels[i] == rows[i][4][1] for i in differ), [rows[i][0] for i in differ]
    # Top-k names agree wherever the backfill's k scores are apart by more than float noise.
    decisive = (-np.diff(offline_topk_scores, axis=1) > 1e-5).all(axis=1)
    assert all([c[2] for c in topk[i]] == rows[i][4] for i in np.flatnonzero(decisive))
    np.testing.assert_allclose(scores, offline_scores, atol=1e-5)
    np.testing.assert_allclose(np.array([[float(c[0]) for c in t] for t in topk]), offline_topk_scores, atol=1e-5)
    np.testing.assert_allclose(emb, np.array([r[6] for r in rows]), atol=1e-5)
    print(
        f"\n10,000 images over HTTP in {seconds:.1f} s ({10_000 / seconds:.0f} images/s, 64-image requests, 4 clients); top-1 equal on {10_000 - len(differ)}, near-ties {int(near_ties.sum())}, top-5 order compared on {int(decisive.sum())}"
    )
