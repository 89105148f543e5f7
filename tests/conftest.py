"""Shared fixtures: a real S3 endpoint (moto server on 127.0.0.1), a real local Ray, real catalogs.

Order matters: the S3 environment variables are set before Ray starts so Ray's workers inherit
them, exactly as on a cluster whose nodes carry credentials in their environment.
"""

from __future__ import annotations

import hashlib
import subprocess
import io
import os
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
FMNIST = Path(os.environ.get("CV_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
BUCKET = "cv-test"

# Every Ray the tests start (ray.init here, `ray start` in subprocesses) serves in the default
# serve.ingress mode, as jobs/serve.py starts it: the environment is read when Ray starts.
# In that mode an old replica drains for at least 30 s in a roll-out (Serve's default, so that load
# balancers can take it out first); 5 s here keeps the roll-out test short.
from catalog_vision.serve.config import INGRESS_ENV  # noqa: E402

for _k, _v in {**INGRESS_ENV["haproxy"], "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5"}.items():
    os.environ.setdefault(_k, _v)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_cfg(*overrides: str, config_name: str = "config") -> dict:
    """Compose the real configs, as the jobs do, and resolve them to plain containers."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server over HTTP on 127.0.0.1, with a bucket; credentials via the environment."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    import ray

    # Serve kills an HTTP proxy that is not ready within 5 s (its default); on a loaded 2-core
    # machine a proxy can take longer to start, and the Serve tests then fail at start-up.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    ray.init(num_cpus=6, include_dashboard=True, log_to_driver=True)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def fmnist() -> Path:
    if not (FMNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.fail(f"Fashion-MNIST not found in {FMNIST}: run `apt-get install dataset-fashion-mnist` (tests/run.sh does) or set CV_FASHION_MNIST")
    return FMNIST


@pytest.fixture(scope="session")
def fmnist_arrays(fmnist) -> dict:
    """The Fashion-MNIST arrays (``{"train": (x, y), "test": (x, y)}``), read once for the session and
    made read-only: a test that changes pixels works on its own copy, so sharing them is safe."""
    from catalog_vision.catalogs.fashion_mnist import load_fashion_mnist

    arrays = load_fashion_mnist(str(fmnist))
    for pair in arrays.values():
        for a in pair:
            a.setflags(write=False)
    return arrays


@pytest.fixture(scope="session")
def small_cnn(tmp_path_factory, fmnist_arrays):
    """small_cnn trained by ``quick_checkpoint`` on the first 4,000 training images (seed 0, 2 epochs,
    the smoke config): the trained checkpoint of the duplicates, drift and notebook-02 tests, which
    all used this recipe, trained once for the session. Tests read it and never write into it."""
    from catalog_vision.analytics.shifts import quick_checkpoint

    cfg = make_cfg("experiment=smoke")
    x, y = fmnist_arrays["train"]
    path = quick_checkpoint(str(tmp_path_factory.mktemp("small-cnn") / "model"), x[:4000, None], y[:4000], cfg["data"]["classes"], cfg)
    yield from shared_readonly(path)


@pytest.fixture(scope="session")
def serve_checkpoint(tmp_path_factory, fmnist_arrays):
    """``serve_helpers.train_checkpoint`` with seed 0 and its defaults (2,000 images, 1 epoch): the
    checkpoint of the Triton tests and the first model of the rollout test, trained once."""
    from serve_helpers import train_checkpoint

    yield from shared_readonly(train_checkpoint(tmp_path_factory.mktemp("serve-seed0") / "model", fmnist_arrays, seed=0))


def shared_readonly(folder: str):
    """Yield ``folder`` to the tests that share it, then check that none of them changed it."""
    def digest() -> dict:
        return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(Path(folder).rglob("*")) if f.is_file()}

    before = digest()
    yield folder
    assert digest() == before, f"a test changed the shared checkpoint {folder}"


@pytest.fixture(scope="session")
def local_catalog(tmp_path_factory, ray_local, fmnist):
    """A small real catalog (PNG files + manifest) built by make_catalog, plus its config."""
    from catalog_vision import make_catalog

    root = tmp_path_factory.mktemp("local")
    cfg = make_cfg("experiment=smoke", f"paths.root={root}", f"data.source={fmnist}")
    summary = make_catalog(cfg)
    return {"root": root, "cfg": cfg, "summary": summary}


@pytest.fixture(scope="session")
def photo_catalog(s3_endpoint, ray_local, fmnist):
    """A small photo-like catalog in the S3 endpoint, written by make_demo_photos: 40 products,
    2-4 RGB JPEGs each in nested class folders, ``products.csv``, export clutter and 2 truncated
    JPEGs. Returns its ``prefix`` (``s3://cv-test/photos``), ``cfg`` and ``summary``."""
    from catalog_vision.catalogs import make_demo_photos

    prefix = f"s3://{BUCKET}/photos"
    cfg = make_cfg("storage=s3", f"demo_photos.out={prefix}", "demo_photos.products=40", f"demo_photos.source={fmnist}", config_name="demo_photos")
    return {"prefix": prefix, "cfg": cfg, "summary": make_demo_photos(cfg)}


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory):
    """A small_cnn checkpoint with weights made here (seeded init), in the real checkpoint format."""
    import torch

    from catalog_vision import checkpoint as ckpt
    from catalog_vision.models import build_model

    cfg = make_cfg("experiment=smoke")
    torch.manual_seed(0)
    model = build_model(cfg["model"], len(cfg["data"]["classes"]), cfg["data"]["preprocessing"])
    path = tmp_path_factory.mktemp("ckpt") / "model"
    meta = {"model": cfg["model"], "classes": cfg["data"]["classes"], "preprocessing": cfg["data"]["preprocessing"], "task": "multiclass", "embedding_dim": model.num_features, "epoch": 0, "metrics": {}}
    ckpt.save(str(path), model, meta)
    return str(path)


def jpeg_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


BAD_INPUTS = {
    # image_id: (filename or None for a missing object, bytes, expected error class)
    "bad-truncated": ("bad-truncated.jpg", "truncated", "TruncatedImage"),
    "bad-empty": ("bad-empty.png", b"", "EmptyFile"),
    "bad-text": ("bad-text.png", b"this is not an image, it is a text file named .png\n", "NotAnImage"),
    "bad-missing": ("bad-missing.png", None, "MissingObject"),
}


def write_hostile_manifest(catalog_manifest: str, target_prefix: str, write, split: str = "test") -> tuple[str, int]:
    """Append corrupt inputs to a copy of a real manifest; ``write(uri, bytes)`` stores objects.

    Returns the new manifest URI and the number of good rows in the split.
    """
    table = pq.read_table(io.BytesIO(read_any(catalog_manifest)))
    good = table.filter(pa.compute.equal(table["split"], split))
    rng = np.random.default_rng(0)
    real = (rng.random((28, 28)) * 255).astype(np.uint8)
    rows = {"image_id": [], "uri": [], "label": [], "split": []}
    for image_id, (name, data, _) in BAD_INPUTS.items():
        uri = f"{target_prefix}/hostile/{name}"
        if data == "truncated":
            full = jpeg_bytes(real)
            data = full[: len(full) // 2]
        if data is not None:
            write(uri, data)
        rows["image_id"].append(image_id)
        rows["uri"].append(uri)
        rows["label"].append("Bag")
        rows["split"].append(split)
    bad = pa.table({k: pa.array(v, pa.string()) for k, v in rows.items()})
    merged = pa.concat_tables([good.select(bad.column_names), bad])
    buf = io.BytesIO()
    pq.write_table(merged, buf)
    uri = f"{target_prefix}/hostile-manifest.parquet"
    write(uri, buf.getvalue())
    return uri, good.num_rows


def read_any(uri: str) -> bytes:
    from catalog_vision import storage as st

    return st.read_bytes(uri, {"endpoint_url": os.environ.get("AWS_ENDPOINT_URL")})


def start_logged(cmd, log, **kw) -> subprocess.Popen:
    """A child process whose output goes to the file ``log``: a PIPE that nobody reads while the test
    polls fills up and blocks the child (a hang, not a failure)."""
    with open(log, "w") as f:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, text=True, **kw)
    proc.log_path = str(log)
    return proc


def output(proc: subprocess.Popen) -> str:
    with open(proc.log_path) as f:
        return f.read()


def finish(proc: subprocess.Popen, timeout: float) -> str:
    proc.wait(timeout=timeout)
    return output(proc)
