"""Object-store faults between the job and a real S3 endpoint: transient ones are retried and
nothing is lost; a permanent one (access denied) becomes that image's error row."""

import pytest

from catalog_vision import make_catalog
from catalog_vision.backfill.run import backfill
from catalog_vision.backfill.query import read_predictions
from conftest import BUCKET, make_cfg
from faultproxy import FaultProxy

pytestmark = pytest.mark.slow


def test_backfill_through_faulty_s3(ray_local, s3_endpoint, fmnist, random_checkpoint):
    root = f"s3://{BUCKET}/faults"
    cfg = make_cfg("experiment=smoke", "storage=s3", f"paths.root={root}", f"data.source={fmnist}", "data.limit.train=0", "data.limit.val=0", "data.limit.test=60")
    assert make_catalog(cfg)["splits"] == {"test": 60}  # a limit of 0 means none of that split
    denied = "test-00007.png"
    with FaultProxy(s3_endpoint, fault_prefix=f"/{BUCKET}/faults/catalog/images/", deny={denied}, delay_s=3.0) as proxy:
        cfg = make_cfg(
            "experiment=smoke", "storage=s3", f"paths.root={root}",
            f"storage.endpoint_url={proxy.url}",  # every request of the job goes through the proxy
            "storage.read_timeout=1",  # the proxy's 3 s stalls become read timeouts, then retries
            f"predictor.checkpoint={random_checkpoint}", "data.decode_batch_size=16",
        )
        out = backfill(cfg)
    c = out["counts"]
    # Every transient fault kind was injected, and nothing was lost to them.
    assert set(proxy.injected) == {"slowdown", "internal", "reset", "timeout", "deny"}, proxy.injected
    assert c["inputs"] == 60 and c["predicted"] == 59 and c["errors"] == 1
    assert c["errors_by_class"] == {"AccessDenied": 1}
    rows = {r["image_id"]: r for r in read_predictions(out["output"], cfg["storage"]).to_pylist()}
    assert len(rows) == 60
    assert rows["test-00007"]["error"].startswith("AccessDenied: ") and rows["test-00007"]["label"] is None
    # Each transient fault was retried: its key was asked for again (and then answered, since the
    # proxy faults a first attempt only). Access denied is final: asked for once, never retried.
    prefix = f"/{BUCKET}/faults/catalog/images/"
    transient = {k: f for k, f in proxy.faulted.items() if "deny" not in f}
    print(f"faults injected: {dict(proxy.injected)}; counts: {c}; attempts of faulted keys: { {k[len(prefix):]: proxy.attempts[k] for k in proxy.faulted} }")
    assert transient and all(len(f) == 1 and proxy.attempts[k] >= 2 for k, f in transient.items()), {k: (f, proxy.attempts[k]) for k, f in transient.items()}
    assert sum(len(f) for f in transient.values()) == sum(n for kind, n in proxy.injected.items() if kind != "deny")
    assert proxy.faulted[prefix + denied] == ["deny"] * proxy.attempts[prefix + denied] and proxy.attempts[prefix + denied] == 1
