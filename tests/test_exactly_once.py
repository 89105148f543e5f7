"""Exactly one row per image when runs overlap, when catalogs share ids, and across an outage.

* Two backfills of the same model and catalog started together against the S3 endpoint: one
  labels the catalog, the other stops naming the running run; a lease left by a dead run is taken
  over, and a writer holding the dead run's lease cannot commit.
* Two catalogs whose image ids collide: each gets its own table, neither skips the other's images.
* An S3 outage (503 on every attempt): a run stops instead of committing a batch of errors, or
  leaves the failed images uncommitted; the rerun after the outage labels exactly those.
"""

import json
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog_vision.backfill import lease as leases
from catalog_vision import make_catalog
from catalog_vision import storage as st
from catalog_vision.backfill.run import backfill
from catalog_vision.checkpoint import load
from catalog_vision.backfill.outcome import BackfillFailed
from catalog_vision.backfill.query import read_predictions
from catalog_vision.backfill.sink import commit_batch, committed_files
from catalog_vision.backfill.tables import catalog_id, table_dir
from conftest import BUCKET, REPO, make_cfg
from faultproxy import FaultProxy

N = 60


@pytest.fixture(scope="module")
def s3_catalog(ray_local, s3_endpoint, fmnist):
    """A 60-image catalog in the S3 endpoint (test split only)."""
    root = f"s3://{BUCKET}/once"
    cfg = make_cfg(
        "experiment=smoke", "storage=s3", f"paths.root={root}", f"data.source={fmnist}", "data.limit.train=0", "data.limit.val=0", f"data.limit.test={N}"
    )
    assert make_catalog(cfg)["splits"] == {"test": N}
    return {"root": root, "cfg": cfg}


def table_ids(uri: str, storage) -> list[str]:
    """Every image_id in a table, as a reader of the Parquet files sees it."""
    fs, _ = st.resolve(uri, storage)
    out = []
    for f in committed_files(uri, storage):
        with fs.open(st.resolve(f, storage)[1], "rb") as fh:
            out += pq.read_table(fh, columns=["image_id"]).column("image_id").to_pylist()
    return out


@pytest.mark.slow
def test_two_concurrent_backfills_label_each_image_once(ray_local, s3_catalog, random_checkpoint, tmp_path):
    root = f"{s3_catalog['root']}/concurrent"
    overrides = [
        "experiment=smoke",
        "storage=s3",
        f"paths.root={s3_catalog['root']}",
        f"paths.output={root}",
        f"predictor.checkpoint={random_checkpoint}",
        "output.rows_per_file=16",
        "data.decode_batch_size=16",
    ]
    address = f"ray.address={ray_local.get_runtime_context().gcs_address}"
    drivers = {
        run_id: subprocess.Popen(
            [sys.executable, "jobs/backfill.py", *overrides, address, f"run_id={run_id}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for run_id in ("run-a", "run-b")
    }
    logs = {r: d.communicate(timeout=600)[0] for r, d in drivers.items()}
    codes = {r: d.returncode for r, d in drivers.items()}
    print("exit codes:", codes)
    assert sorted(codes.values()) == [0, 1], {r: logs[r][-3000:] for r in logs}
    winner = next(r for r, c in codes.items() if c == 0)
    loser = next(r for r, c in codes.items() if c == 1)
    stop = next(line for line in logs[loser].splitlines() if "is backfilling this model and catalog" in line)
    print(stop)
    assert f"run '{winner}'" in stop, stop
    assert f"backfill summary: {N} inputs = 0 already labeled + {N} predicted + 0 errors" in logs[winner], logs[winner][-3000:]

    cfg = make_cfg(*overrides)
    model_id = load(random_checkpoint).model_id
    table = table_dir(cfg["paths"]["predictions"], model_id, catalog_id(cfg["data"]))
    ids = table_ids(table, cfg["storage"])
    assert len(ids) == len(set(ids)) == N
    run = st.read_json(st.join(table, winner, "_run.json"), cfg["storage"])
    assert run["status"] == "succeeded" and run["counts"]["model_rows"] == N
    assert not st.exists(st.join(table, loser), cfg["storage"])  # the second run wrote nothing
    assert not st.exists(st.join(table, leases.LEASE_NAME), cfg["storage"])  # released at the end


@pytest.mark.slow
def test_expired_lease_is_taken_over_and_its_writers_cannot_commit(ray_local, s3_catalog, random_checkpoint):
    cfg = make_cfg(
        "experiment=smoke",
        "storage=s3",
        f"paths.root={s3_catalog['root']}",
        f"paths.output={s3_catalog['root']}/expired",
        f"predictor.checkpoint={random_checkpoint}",
        "output.lease.ttl_s=30",
    )
    storage = cfg["storage"]
    table = table_dir(cfg["paths"]["predictions"], load(random_checkpoint).model_id, catalog_id(cfg["data"]))
    lease_uri = st.join(table, leases.LEASE_NAME)
    # A run on another host, its lease renewed 5 s ago (30 s ttl): it holds the catalog.
    dead = {"run_id": "dead-run", "token": "dead-run/0", "host": "gone-host", "pid": 1, "renewed_at": time.time() - 5, "ttl_s": 30}
    st.write_bytes(lease_uri, json.dumps(dead).encode(), storage)
    with pytest.raises(leases.LeaseHeld, match="dead-run"):
        backfill(cfg)
    # The same run, not renewed for 31 s (its driver died): the next run takes over.
    dead["renewed_at"] = time.time() - 31
    st.write_bytes(lease_uri, json.dumps(dead).encode(), storage)

    out = backfill(cfg)
    assert out["status"] == "succeeded" and out["counts"]["predicted"] + out["counts"]["errors"] == N
    # A writer of the dead run (the lease is now another run's) refuses to commit.
    st.write_bytes(lease_uri, json.dumps({**dead, "token": "live-run/1", "run_id": "live-run", "renewed_at": time.time()}).encode(), storage)
    batch = pa.table({"image_id": ["x"], "error": pa.array([None], pa.string())})
    with pytest.raises(leases.LeaseLost, match="live-run"):
        commit_batch(batch, st.join(table, "dead-run"), storage, lease_uri=lease_uri, lease_token=dead["token"])
    assert not st.exists(st.join(table, "dead-run"), storage)


def test_second_run_waits_for_the_lease_when_asked(tmp_path):
    uri = str(tmp_path / leases.LEASE_NAME)
    first = leases.acquire(uri, "first", ttl_s=30)
    threading.Timer(1.5, first.release).start()
    t0 = time.monotonic()
    with pytest.raises(leases.LeaseHeld, match="'first'"):
        leases.acquire(uri, "impatient", ttl_s=30, wait_s=0)
    second = leases.acquire(uri, "second", ttl_s=30, wait_s=20, poll_s=0.1)
    waited = time.monotonic() - t0
    assert 1.4 < waited < 10, waited
    assert json.loads(open(uri).read())["run_id"] == "second"
    second.release()


@pytest.mark.slow
def test_catalogs_with_colliding_ids_never_skip_each_other(ray_local, local_catalog, random_checkpoint, tmp_path):
    manifest = pq.read_table(local_catalog["cfg"]["data"]["manifest"])
    base = local_catalog["cfg"]["data"]["manifest"].rsplit("/", 1)[0]
    uris = [u if u.startswith("/") else f"{base}/{u}" for u in manifest.column("uri").to_pylist()]
    ids = [f"img-{i:03d}" for i in range(40)]
    # Two catalogs, the same 40 ids, different images (the second takes the next 40 files).
    for name, offset in (("a", 0), ("b", 40)):
        (tmp_path / name).mkdir()
        pq.write_table(pa.table({"image_id": ids, "uri": uris[offset : offset + 40]}), tmp_path / name / "manifest.parquet")
    common = ["experiment=smoke", "data.split=null", f"predictor.checkpoint={random_checkpoint}", f"paths.output={tmp_path}/out"]
    a = backfill(make_cfg(*common, f"data.manifest={tmp_path}/a/manifest.parquet"))
    b = backfill(make_cfg(*common, f"data.manifest={tmp_path}/b/manifest.parquet"))
    assert (a["counts"]["skipped"], b["counts"]["skipped"]) == (0, 0)
    assert a["catalog_id"] != b["catalog_id"]
    assert b["counts"]["predicted"] + b["counts"]["errors"] == 40
    for run, offset in ((a, 0), (b, 40)):
        rows = read_predictions(run["output"]).to_pylist()
        assert sorted(r["uri"] for r in rows) == sorted(uris[offset : offset + 40])
    # A rerun of catalog a skips all of a (and only a).
    again = backfill(make_cfg(*common, f"data.manifest={tmp_path}/a/manifest.parquet"))
    assert (again["counts"]["skipped"], again["counts"]["predicted"]) == (40, 0)


@pytest.mark.slow
def test_outage_then_rerun_labels_every_image_once(ray_local, s3_endpoint, s3_catalog, random_checkpoint):
    root = s3_catalog["root"]
    keys = sorted(k.rsplit("/", 1)[-1] for k in st.resolve(f"{root}/catalog/images", {"endpoint_url": s3_endpoint})[0].find(f"{BUCKET}/once/catalog/images"))
    assert len(keys) == N
    with FaultProxy(s3_endpoint, fault_prefix=f"/{BUCKET}/once/catalog/images/", first_attempt_faults=False, outage=True) as proxy:
        base = [
            "experiment=smoke",
            "storage=s3",
            f"paths.root={root}",
            f"paths.output={root}/outage",
            f"storage.endpoint_url={proxy.url}",
            "storage.max_attempts=2",
            f"predictor.checkpoint={random_checkpoint}",
            "data.decode_batch_size=20",
            "predictor.batch_size=20",
            "output.rows_per_file=20",
        ]
        cfg = make_cfg(*base)
        table = table_dir(cfg["paths"]["predictions"], load(random_checkpoint).model_id, catalog_id(cfg["data"]))
        # [1] Everything is down: the first batch of errors stops the run; nothing is committed.
        with pytest.raises(BackfillFailed, match="max_error_fraction") as failed:
            backfill(cfg)
        assert failed.value.manifest["status"] == "failed"
        assert st.read_json(st.join(failed.value.manifest["output"], "_run.json"), cfg["storage"])["status"] == "failed"
        assert table_ids(table, cfg["storage"]) == []
        # [2] A quarter of the objects are down, under the error limit: those are left for a rerun.
        down = set(keys[::4])
        proxy.outage = down
        with pytest.raises(BackfillFailed, match="run again") as partial:
            backfill(cfg)
        c = partial.value.manifest["counts"]
        assert partial.value.manifest["status"] == "incomplete"
        assert (c["predicted"], c["errors"], c["retry_later"]) == (N - len(down), 0, len(down)), c
        assert sorted(table_ids(table, cfg["storage"])) == sorted(k.rsplit(".", 1)[0] for k in keys if k not in down)
        # [3] The outage is over: the rerun labels exactly the images that were down.
        proxy.outage = None
        out = backfill(cfg)
    c = out["counts"]
    print(f"outage then rerun: {c}")
    assert out["status"] == "succeeded"
    assert (c["skipped"], c["predicted"], c["errors"], c["retry_later"]) == (N - len(down), len(down), 0, 0)
    ids = table_ids(table, cfg["storage"])
    assert len(ids) == len(set(ids)) == N
    rows = read_predictions(table, cfg["storage"]).to_pylist()
    assert all(r["error"] is None and r["label"] for r in rows)


@pytest.mark.slow
def test_a_rerun_skips_files_a_lagging_listing_hides(ray_local, s3_endpoint, s3_catalog, random_checkpoint):
    """A store whose LIST lags behind its writes (the proxy drops keys from ListObjectsV2; GET and
    HEAD still find them): the run's commit record, ``_committed.json``, still tells the rerun
    which images are done, so it labels none of them again."""
    root = s3_catalog["root"]
    with FaultProxy(s3_endpoint, fault_prefix="/no-faults/", first_attempt_faults=False) as proxy:
        cfg = make_cfg("experiment=smoke", "storage=s3", f"paths.root={root}", f"paths.output={root}/lagging", f"storage.endpoint_url={proxy.url}",
                       f"predictor.checkpoint={random_checkpoint}", "output.rows_per_file=20", "data.decode_batch_size=20", "predictor.batch_size=20")
        storage = cfg["storage"]
        table = table_dir(cfg["paths"]["predictions"], load(random_checkpoint).model_id, catalog_id(cfg["data"]))
        first = backfill(cfg)
        assert first["status"] == "succeeded" and first["counts"]["files"] == N // 20
        files = committed_files(first["output"], storage)
        record = st.read_json(st.join(first["output"], "_committed.json"), storage)
        assert [f["name"] for f in record["files"]] == [f.rsplit("/", 1)[-1] for f in files]
        fs, _ = st.resolve(table, storage)
        assert [f["rows"] for f in record["files"]] == [pq.ParquetFile(fs.open(st.resolve(f, storage)[1])).metadata.num_rows for f in files]
        hidden = {f.rsplit("/", 1)[-1] for f in files[:2]}
        proxy.hide_from_list = hidden
        listed = {f.rsplit("/", 1)[-1] for f in fs.find(st.resolve(table, storage)[1])}
        assert not hidden & listed and "_committed.json" in listed  # the LIST lags: two committed files are missing from it
        again = backfill(cfg)
        assert proxy.hidden >= 2
    c = again["counts"]
    print(f"rerun behind a lagging listing: {c}")
    assert again["status"] == "succeeded"
    assert (c["skipped"], c["predicted"], c["errors"], c["model_rows"]) == (N, 0, 0, N)
    ids = table_ids(table, {**storage, "endpoint_url": s3_endpoint})  # straight from the store, every key listed
    assert len(ids) == len(set(ids)) == N
