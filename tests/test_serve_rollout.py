"""A new checkpoint rolled out with `serve deploy` while closed-loop clients keep sending requests:
no request fails, and the answers move from model A to model B.

Real local Ray, the generated deploy config sent by the real `serve deploy` CLI through the dashboard
(the path a cluster operator and KubeRay use), real HTTP on 127.0.0.1."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests

from conftest import free_port, make_cfg
from serve_helpers import serve_deploy, train_checkpoint, wait_for_model

from catalog_vision import checkpoint as ckpt
from catalog_vision.ingest.images import decode, encode_png
from catalog_vision.infer.predictor import Predictor
from catalog_vision.serve.deploy import deploy_config

MODEL = "catalog-vision"
CLIENTS = 4


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, fmnist_arrays, serve_checkpoint):
    root = tmp_path_factory.mktemp("rollout")
    a = serve_checkpoint  # train_checkpoint(seed=0), shared with the Triton tests
    b = train_checkpoint(root / "b", fmnist_arrays, seed=1, images=1000)
    ids = [ckpt.model_id_of(ckpt.read_meta(p)) for p in (a, b)]
    assert ids[0] != ids[1]
    return a, b


def config_for(checkpoint: str, port: int) -> dict:
    cfg = make_cfg(
        f"predictor.checkpoint={checkpoint}",
        "predictor.dtype=float32",
        f"serve.port={port}",
        "serve.predictions.write=false",
        "serve.max_batch_size=8",
        "serve.max_ongoing_requests=16",
        "serve.admission_limit=12",
    )
    return deploy_config(cfg)


class Load:
    """Closed-loop clients, each sending one /classify request after another; every answer kept."""

    def __init__(self, url: str, images: list[bytes]):
        self.url, self.images = url, images
        self.answers: list[tuple[float, int, int | None, str | None, str | None, float]] = []  # (time, image, status, model_id, label or error, seconds)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, args=(c,), daemon=True) for c in range(CLIENTS)]

    def client(self, c: int) -> None:
        s = requests.Session()
        i = c
        while not self.stop.is_set():
            i = (i + CLIENTS) % len(self.images)
            t0 = time.monotonic()
            try:
                r = s.post(f"{self.url}/classify", data=self.images[i], headers={"Content-Type": "image/png"}, timeout=60)
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {"error": r.text[:200]}
                pred = (body.get("predictions") or [{}])[0]
                answer = (time.monotonic(), i, r.status_code, body.get("model_id"), pred.get("label", body.get("error")), time.monotonic() - t0)
            except requests.RequestException as e:
                answer = (time.monotonic(), i, None, None, repr(e), time.monotonic() - t0)
            with self.lock:
                self.answers.append(answer)

    def model_ids(self) -> list[str | None]:
        with self.lock:
            return [a[3] for a in self.answers]


@pytest.mark.slow
def test_rollout_to_a_new_checkpoint_under_load_fails_no_request(ray_local, two_checkpoints, fmnist_arrays, tmp_path):
    from ray import serve

    a, b = two_checkpoints
    x, _ = fmnist_arrays["test"]
    images = [encode_png(x[i]) for i in range(32)]
    # What each model answers for each image, computed in this process.
    expected = {}
    for path in (a, b):
        p = Predictor(path, device="cpu", dtype="float32")
        probs, _ = p.predict_pixels(np.stack([decode(png, p.spec) for png in images]))
        expected[p.model_id] = [p.classes[int(row.argmax())] for row in probs]
    id_a, id_b = list(expected)
    assert expected[id_a] != expected[id_b]  # the models disagree somewhere, so answers show which one ran

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    load = Load(url, images)
    try:
        print(serve_deploy(config_for(a, port), tmp_path, "a"))
        wait_for_model(url, MODEL, id_a)
        for t in load.threads:
            t.start()
        time.sleep(3)
        t_deploy = time.monotonic()
        serve_deploy(config_for(b, port), tmp_path, "b")  # same application name: an in-place update
        # Until B answers, and 5 s more while the old replica drains and stops: the replicas' states,
        # polled from Serve's controller, say whether any replica was RUNNING (taking requests) throughout.
        running = []
        deadline = time.monotonic() + 240
        t_first_b = None
        while time.monotonic() < deadline and (t_first_b is None or time.monotonic() < t_first_b + 5):
            deployment = serve.status().applications[MODEL].deployments.get("ImageClassifier")  # absent while the new args build
            if deployment is not None:
                running.append(int(deployment.replica_states.get("RUNNING", 0)))
            if t_first_b is None and id_b in load.model_ids():
                t_first_b = time.monotonic()
            time.sleep(0.1)
        load.stop.set()
        for t in load.threads:
            t.join(timeout=120)
        # The old replica drains before it stops (with serve.ingress=haproxy for at least
        # RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S): the roll-out ends once it is gone.
        settle = time.monotonic() + 90
        while (status := serve.status().applications[MODEL]).status != "RUNNING" and time.monotonic() < settle:
            time.sleep(0.5)
    finally:
        load.stop.set()
        serve.shutdown()

    answers = load.answers
    failed = [a_ for a_ in answers if a_[2] != 200 or a_[3] not in expected or expected[a_[3]][a_[1]] != a_[4]]
    ids = [a_[3] for a_ in answers]
    t_first_b = min((a_[0] for a_ in answers if a_[3] == id_b), default=deadline)
    during = [a_ for a_ in answers if t_deploy <= a_[0] < t_first_b]  # answered between `serve deploy` and B's first answer
    seconds = np.array([a_[5] for a_ in answers])
    print(
        f"\n{len(answers)} requests from {CLIENTS} clients: {ids.count(id_a)} answered by A ({id_a}), {ids.count(id_b)} by B ({id_b}), "
        f"{len(failed)} failed; {len(during)} answered in the {t_first_b - t_deploy:.1f} s from `serve deploy` to B's first answer; "
        f"latency p50 {np.median(seconds) * 1e3:.0f} ms, max {seconds.max():.1f} s; RUNNING replicas during the roll-out: min {min(running)}, "
        f"max {max(running)} ({len(running)} polls)"
    )
    assert not failed, failed[:5]
    assert id_a in ids and id_b in ids
    assert ids[-2 * CLIENTS :] == [id_b] * (2 * CLIENTS)  # the old replica is gone: only B answers at the end
    # A replica was taking requests at every poll: the old one served until the new one was RUNNING
    # (with Serve's default max_surge_percent=0 the old replica stops first and none runs while B loads).
    assert running and min(running) >= 1
    assert status.status == "RUNNING", status
