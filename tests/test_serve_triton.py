"""An unmodified Open Inference Protocol client, tritonclient.http, against the Serve application:
health, model readiness and metadata, and inference with images as a BYTES input, in the binary
tensor data extension it uses by default and in plain JSON, with top-k through the classification
extension (InferRequestedOutput(..., class_count=k)). Answers are compared with the same
checkpoint's Predictor called in this process."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from conftest import free_port, make_cfg

from catalog_vision.ingest.images import decode, encode_png
from catalog_vision.infer.predictor import Predictor
from catalog_vision.serve import build_app

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the test extras")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "catalog-vision"
N = 6


@pytest.fixture(scope="module")
def checkpoint(serve_checkpoint):
    return serve_checkpoint  # train_checkpoint(seed=0), shared with the rollout test


@pytest.fixture(scope="module")
def client(ray_local, checkpoint):
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = make_cfg(f"predictor.checkpoint={checkpoint}", "predictor.dtype=float32", "serve.predictions.write=false")
    serve.run(build_app(cfg), name=MODEL, route_prefix="/")
    yield httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    serve.shutdown()


@pytest.fixture(scope="module")
def expected(checkpoint, fmnist_arrays):
    """The images and what the checkpoint answers for them, computed in this process."""
    x, _ = fmnist_arrays["test"]
    pngs = [encode_png(x[i]) for i in range(N)]
    p = Predictor(checkpoint, device="cpu", dtype="float32")
    probs, emb = p.predict_pixels(np.stack([decode(b, p.spec) for b in pngs]))
    return {"pngs": pngs, "probs": probs, "emb": emb, "classes": p.classes, "model_id": p.model_id}


def image_input(pngs: list[bytes], binary: bool = True):
    inp = httpclient.InferInput("image", [len(pngs)], "BYTES")
    if binary:
        inp.set_data_from_numpy(np.array(pngs, dtype=np.object_))  # raw file bytes, binary_data=True (the default)
    else:
        inp.set_data_from_numpy(np.array([base64.b64encode(b).decode() for b in pngs], dtype=np.object_), binary_data=False)
    return inp


def test_health_readiness_and_metadata(client, expected):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, expected["model_id"])
    assert not client.is_model_ready("resnet50")
    assert set(client.get_server_metadata()["extensions"]) >= {"classification", "binary_tensor_data"}
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["versions"] == [expected["model_id"]]
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert meta["parameters"]["classes"] == expected["classes"]
    with pytest.raises(InferenceServerException, match="unknown model 'resnet50'"):
        client.get_model_metadata("resnet50")


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-input", "json-input"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-outputs", "json-outputs"])
def test_infer_with_top_k_matches_the_predictor(client, expected, binary_in, binary_out):
    k = 3
    outputs = [
        httpclient.InferRequestedOutput("probabilities", binary_data=binary_out, class_count=k),
        httpclient.InferRequestedOutput("label", binary_data=binary_out),
        httpclient.InferRequestedOutput("score", binary_data=binary_out),
        httpclient.InferRequestedOutput("embedding", binary_data=binary_out),
    ]
    result = client.infer(MODEL, [image_input(expected["pngs"], binary_in)], outputs=outputs, request_id="r-1")
    resp = result.get_response()
    assert resp["model_name"] == MODEL and resp["model_version"] == expected["model_id"] and resp["id"] == "r-1"
    probs, classes = expected["probs"], expected["classes"]
    top = result.as_numpy("probabilities")
    assert top.shape == (N, k)
    for row in range(N):
        order = np.argsort(-probs[row], kind="stable")[:k]
        cells = [(c.decode() if isinstance(c, bytes) else c).split(":", 2) for c in top[row]]
        assert [int(i) for _, i, _ in cells] == order.tolist() and [lbl for _, _, lbl in cells] == [classes[j] for j in order]
        np.testing.assert_allclose([float(s) for s, _, _ in cells], probs[row][order], atol=1e-5)
    labels = [lbl.decode() if isinstance(lbl, bytes) else lbl for lbl in result.as_numpy("label")]
    assert labels == [classes[int(p.argmax())] for p in probs]
    np.testing.assert_allclose(result.as_numpy("score"), probs.max(1), atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("embedding"), expected["emb"], atol=1e-5)


def test_infer_without_outputs_returns_the_defaults_in_binary(client, expected):
    """No outputs named: tritonclient asks for binary_data_output, and gets every default output."""
    result = client.infer(MODEL, [image_input(expected["pngs"][:2])])
    assert {o["name"] for o in result.get_response()["outputs"]} == {"probabilities", "label", "score"}
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probs"][:2], atol=1e-5)


def test_one_bad_image_is_a_per_image_error_and_errors_reach_the_client(client, expected):
    pngs = [expected["pngs"][0], b"not an image", expected["pngs"][1]]
    result = client.infer(MODEL, [image_input(pngs)], outputs=[httpclient.InferRequestedOutput("label")])
    errors = [e.decode() for e in result.as_numpy("error")]
    assert errors[0] == errors[2] == "" and errors[1].startswith("NotAnImage:")
    labels = [lbl.decode() for lbl in result.as_numpy("label")]
    assert labels[0] == expected["classes"][int(expected["probs"][0].argmax())] and labels[1] == ""
    with pytest.raises(InferenceServerException, match="NotAnImage") as e:
        client.infer(MODEL, [image_input([b"not an image"])])
    assert e.value.status() == "422"
    with pytest.raises(InferenceServerException, match="from 1 to 10"):
        client.infer(MODEL, [image_input(expected["pngs"][:1])], outputs=[httpclient.InferRequestedOutput("probabilities", class_count=11)])
