"""Objects larger than storage.max_object_bytes are ImageTooLarge rows, read only one byte past the
limit (review 4.3: a 20 GB object must not be pulled into a decode task's memory)."""

import io

import numpy as np
from PIL import Image

from catalog_vision import storage as st
from catalog_vision.ingest.dataset import fetch_and_decode
from conftest import BUCKET, make_cfg


def png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(side).integers(0, 255, (side, side), dtype=np.uint8)).save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


def test_objects_over_the_limit_are_error_rows(s3_endpoint, tmp_path):
    small, big = png(28), png(600)  # ~1 KB and ~360 KB
    limit = 100_000
    assert len(small) < limit < len(big)
    uris = {"local": [], "s3": []}
    for name, data in (("small", small), ("big", big)):
        (tmp_path / f"{name}.png").write_bytes(data)
        uris["local"].append(str(tmp_path / f"{name}.png"))
        st.write_bytes(f"s3://{BUCKET}/size/{name}.png", data)
        uris["s3"].append(f"s3://{BUCKET}/size/{name}.png")
    for storage_group, u in uris.items():
        cfg = make_cfg("experiment=smoke", f"storage={'s3' if storage_group == 's3' else 'local'}", f"storage.max_object_bytes={limit}")
        batch = {"image_id": np.array(["small", "big"], dtype=object), "uri": np.array(u, dtype=object), "label": np.array([None, None], dtype=object)}
        out = fetch_and_decode(batch, cfg["data"]["preprocessing"], cfg["storage"])
        assert out["error"][0] is None and out["pixels"][0].any(), storage_group
        err = out["error"][1]
        assert err.startswith("ImageTooLarge: ") and f"storage.max_object_bytes={limit} (stopped reading at {limit + 1} bytes)" in err, err
    # The default lets the big one through.
    out = fetch_and_decode({**batch, "uri": np.array(uris["s3"], dtype=object)}, cfg["data"]["preprocessing"], make_cfg("storage=s3")["storage"])
    assert list(out["error"]) == [None, None]
