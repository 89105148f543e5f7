"""Object names are literal: ``*``, ``?`` and ``[`` in a manifest's URIs are never glob patterns
(review 3.5). Each object is fetched by its exact name, and a URI such as ``s3://bucket/**``
names one (missing) object instead of listing and downloading a prefix."""

import io

import numpy as np
import pytest
from PIL import Image

from catalog_vision import storage as st
from catalog_vision.ingest.dataset import fetch_and_decode
from conftest import BUCKET, make_cfg

# name → the gray level its image is filled with (each object identifies itself by its pixels)
OBJECTS = {"shirt[1].png": 10, "shirt1.png": 200, "what?.png": 60, "star*.png": 110, "whatX.png": 250, "starry.png": 160}


def png(level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((28, 28), level, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def fetch(uris, storage):
    pre = make_cfg("experiment=smoke")["data"]["preprocessing"]
    n = len(uris)
    return fetch_and_decode(
        {"image_id": np.array(uris, dtype=object), "uri": np.array(uris, dtype=object), "label": np.array([None] * n, dtype=object)}, pre, storage
    )


@pytest.mark.parametrize("where", ["s3", "local"])
def test_glob_characters_in_names_are_literal(where, s3_endpoint, tmp_path):
    storage = {"endpoint_url": s3_endpoint} if where == "s3" else {}
    base = f"s3://{BUCKET}/literal" if where == "s3" else str(tmp_path)
    for name, level in OBJECTS.items():
        st.write_bytes(f"{base}/{name}", png(level), storage)
    names = ["shirt[1].png", "what?.png", "star*.png"]
    out = fetch([f"{base}/{n}" for n in names], storage)
    assert list(out["error"]) == [None, None, None], list(out["error"])
    # Each literal name got its own object, not a glob match (shirt1.png, whatX.png, starry.png).
    assert [int(out["pixels"][i].mean()) for i in range(3)] == [OBJECTS[n] for n in names]
    # Patterns name objects that do not exist: one MissingObject row each, nothing listed.
    out = fetch([f"{base}/*", f"{base}/**", f"{base}/shirt[2].png"], storage)
    assert [e.split(":", 1)[0] for e in out["error"]] == ["MissingObject"] * 3, list(out["error"])
