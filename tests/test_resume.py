"""Exactly-once resume: kill the backfill driver mid-run, run again, get one row per image."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from catalog_vision import backfill
from catalog_vision.checkpoint import load
from catalog_vision.sink import committed_files
from conftest import REPO, make_cfg

pytestmark = pytest.mark.slow


def test_driver_killed_mid_run_then_rerun_finishes_only_the_remainder(ray_local, local_catalog, random_checkpoint, tmp_path):
    model_id = load(random_checkpoint).model_id
    overrides = [
        "experiment=smoke",
        f"data.manifest={local_catalog['cfg']['data']['manifest']}",
        "data.split=null",  # all 768 images of the catalog
        f"predictor.checkpoint={random_checkpoint}",
        f"paths.output={tmp_path}",
        "output.rows_per_file=32",  # many small commits, so the kill lands between two of them
        "predictor.batch_size=32",
        "data.decode_batch_size=32",
    ]
    killed_dir = tmp_path / "predictions" / model_id / "killed"
    # The driver connects to the running local cluster, as a job's driver would.
    driver = subprocess.Popen(
        [sys.executable, "jobs/backfill.py", *overrides, f"ray.address={ray_local.get_runtime_context().gcs_address}", "run_id=killed"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None and len(committed_files(str(killed_dir))) < 2:
        time.sleep(0.05)
    assert driver.poll() is None, "the driver finished before it could be killed:\n" + driver.stdout.read()[-3000:]
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=60)

    before = committed_files(str(killed_dir))
    rows_before = sum(pq.read_metadata(f).num_rows for f in before)  # every visible file is whole
    assert 0 < rows_before < 768, rows_before
    done_before = {i for f in before for i in pq.read_table(f, columns=["image_id"]).column("image_id").to_pylist()}

    # [2] Start again with the same config (a new run id): only the remainder is labeled.
    cfg = make_cfg(*overrides)
    out = backfill(cfg)
    c = out["counts"]
    assert c["inputs"] == 768
    assert c["skipped"] >= rows_before  # files committed after our listing, before the kill landed, count too
    assert c["skipped"] + c["predicted"] + c["errors"] == 768
    assert c["model_rows"] == c["model_distinct_image_ids"] == 768
    redone = {i for f in committed_files(out["output"]) for i in pq.read_table(f, columns=["image_id"]).column("image_id").to_pylist()}
    assert len(redone) == c["predicted"] + c["errors"] and not (redone & done_before)

    # Every image exactly once across both runs, as a reader of the model's table sees it.
    all_files = committed_files(str(tmp_path / "predictions" / model_id))
    ids = [i for f in all_files for i in pq.read_table(f, columns=["image_id"]).column("image_id").to_pylist()]
    assert len(ids) == len(set(ids)) == 768
    # No temp file is visible to a `*.parquet` reader.
    assert not [p for p in Path(tmp_path).rglob("*.parquet") if p.name.startswith(".")]


def test_incremental_run_labels_only_new_images(ray_local, local_catalog, random_checkpoint, tmp_path):
    import io

    import pyarrow as pa

    manifest = pq.read_table(local_catalog["cfg"]["data"]["manifest"]).filter(pa.compute.equal(pq.read_table(local_catalog["cfg"]["data"]["manifest"])["split"], "test"))
    first, grown = tmp_path / "first.parquet", tmp_path / "grown.parquet"
    pq.write_table(manifest.slice(0, 100), first)
    pq.write_table(manifest, grown)  # 28 images added
    base = ["experiment=smoke", "data.split=null", f"predictor.checkpoint={random_checkpoint}", f"paths.output={tmp_path}/out"]
    a = backfill(make_cfg(*base, f"data.manifest={first}"))
    assert (a["counts"]["skipped"], a["counts"]["predicted"]) == (0, 100)
    b = backfill(make_cfg(*base, f"data.manifest={grown}"))
    assert (b["counts"]["skipped"], b["counts"]["predicted"] + b["counts"]["errors"]) == (100, 28)
    assert b["counts"]["model_rows"] == 128
