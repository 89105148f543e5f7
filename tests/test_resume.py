"""Exactly-once resume: kill the backfill driver mid-run, run again, get one row per image."""

import signal
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from catalog_vision.backfill.run import backfill
from catalog_vision.checkpoint import load
from catalog_vision.backfill.sink import committed_files
from catalog_vision.backfill.tables import catalog_id
from conftest import REPO, finish, make_cfg, output, start_logged

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
    killed_dir = tmp_path / "predictions" / model_id / catalog_id(make_cfg(*overrides)["data"]) / "killed"
    # The driver connects to the running local cluster, as a job's driver would.
    driver = start_logged(
        [sys.executable, "jobs/backfill.py", *overrides, f"ray.address={ray_local.get_runtime_context().gcs_address}", "run_id=killed"],
        tmp_path / "killed.log", cwd=REPO,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None and len(committed_files(str(killed_dir))) < 2:
        time.sleep(0.05)
    assert driver.poll() is None, "the driver finished before it could be killed:\n" + output(driver)[-3000:]
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
    print(f"driver killed with {rows_before}/768 images committed; rerun: skipped={c['skipped']} predicted={c['predicted']} errors={c['errors']}")
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


def ids_in(files) -> list[str]:
    return [i for f in files for i in pq.read_table(f, columns=["image_id"]).column("image_id").to_pylist()]


N_BIG = 4 * 768


def kill_overrides(local_catalog, random_checkpoint, tmp_path) -> list[str]:
    """A 3,072-image catalog (each of the 768 files under 4 ids), long enough to be killed mid-run."""
    import pyarrow as pa

    table = pq.read_table(local_catalog["cfg"]["data"]["manifest"])
    base = str(Path(local_catalog["cfg"]["data"]["manifest"]).parent)
    uris = [u if u.startswith("/") else f"{base}/{u}" for u in table.column("uri").to_pylist()]
    big = pa.table({
        "image_id": [f"{i}#{k}" for k in range(4) for i in table.column("image_id").to_pylist()],
        "uri": uris * 4,
        "label": table.column("label").to_pylist() * 4,
    })
    manifest = tmp_path / "big-manifest.parquet"
    pq.write_table(big, manifest)
    return [
        "experiment=smoke",
        f"data.manifest={manifest}",
        "data.split=null",
        f"predictor.checkpoint={random_checkpoint}",
        f"paths.output={tmp_path}",
        "output.rows_per_file=32",  # many small commits, so a kill lands between two of them
        "predictor.batch_size=32",
        "data.decode_batch_size=32",
    ]


def test_inference_actor_killed_mid_run_the_run_recovers(ray_local, local_catalog, random_checkpoint, tmp_path):
    """SIGKILL a predictor actor's process while it runs a batch: Ray restarts the actor, the batch it
    was running is sent again, and the same run ends with exactly one row per image."""
    import psutil
    from ray.util.state import list_actors, list_tasks

    model_id = load(random_checkpoint).model_id
    # Batches of 8: a few seconds of actor work, so the kill lands while the actors are busy.
    overrides = [*kill_overrides(local_catalog, random_checkpoint, tmp_path), "predictor.min_actors=2", "predictor.max_actors=2", "predictor.batch_size=8", "data.decode_batch_size=8"]
    run_dir = tmp_path / "predictions" / model_id / catalog_id(make_cfg(*overrides)["data"]) / "actor-killed"
    address = ray_local.get_runtime_context().gcs_address  # this cluster: another Ray instance on the machine would make it ambiguous
    driver = start_logged(
        [sys.executable, "jobs/backfill.py", *overrides, f"ray.address={address}", "run_id=actor-killed"],
        tmp_path / "actor-killed.log", cwd=REPO,
    )

    def predictors() -> dict[str, int]:
        actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], detail=True)
        return {a.actor_id: a.pid for a in actors if "Predictor" in (a.class_name or "") and a.pid}

    def tasks_of(actor_id: str, *filters) -> list:
        return list_tasks(address=address, filters=[("actor_id", "=", actor_id), *filters], detail=True, limit=10_000)

    # Kill an actor only while it has a batch RUNNING, so the kill interrupts work in flight.
    deadline = time.monotonic() + 300
    victim = None
    while time.monotonic() < deadline and driver.poll() is None and victim is None:
        victim = next(((aid, pid) for aid, pid in predictors().items() if tasks_of(aid, ("state", "=", "RUNNING"))), None)
        time.sleep(0.1)
    assert driver.poll() is None and victim, "the run finished before a busy actor could be killed:\n" + output(driver)[-3000:]
    actor_id, pid = victim
    psutil.Process(pid).kill()  # SIGKILL: no cleanup, like an OOM kill or a lost node
    files_at_kill = len(committed_files(str(run_dir)))
    assert not (run_dir / "_run.json").exists()
    replacement = None
    while driver.poll() is None and replacement is None:
        now = predictors().get(actor_id)  # the same actor, restarted in a new process
        replacement = now if now not in (None, pid) else None
        time.sleep(0.2)
    log = finish(driver, 600)
    retried = [t for t in tasks_of(actor_id) if t.attempt_number > 0]
    print(f"killed predictor pid {pid} with {files_at_kill}/{N_BIG // 32} files committed; restarted as pid {replacement}; "
          f"tasks sent again: {sorted({(t.name, t.attempt_number) for t in retried})}")
    assert driver.returncode == 0, log[-4000:]
    assert replacement is not None, "the killed actor was never seen restarted"
    # Whether the batch in flight is sent again to the restarted actor (attempt_number >= 1) is printed,
    # not asserted: the state API reports task states a moment late, so "RUNNING" above may already be
    # over when the kill lands (seen on a quiet machine: restarted, nothing resent, every row present).
    assert files_at_kill < N_BIG // 32, "the kill landed after the last commit"
    assert f"backfill summary: {N_BIG} inputs = 0 already labeled + {N_BIG} predicted + 0 errors" in log, log[-3000:]
    ids = ids_in(committed_files(str(run_dir)))
    assert len(ids) == len(set(ids)) == N_BIG
    # Files of exactly output.rows_per_file rows, even across the retry: no stray remainder files.
    assert [pq.read_metadata(f).num_rows for f in committed_files(str(run_dir))] == [32] * (N_BIG // 32)


def test_whole_cluster_stopped_mid_run_then_rerun_finishes_only_the_remainder(local_catalog, random_checkpoint, tmp_path):
    """Stop every process of the cluster mid-run (SIGKILL: a power cut), start a new cluster, run
    again with the same config: one row per image, and the second run labels only what is missing."""
    from raycluster import start_cluster, stop_cluster, wait_for

    model_id = load(random_checkpoint).model_id
    overrides = kill_overrides(local_catalog, random_checkpoint, tmp_path)
    model_dir = tmp_path / "predictions" / model_id / catalog_id(make_cfg(*overrides)["data"])

    def run_driver(cluster, run_id):
        return start_logged(
            [sys.executable, "jobs/backfill.py", *overrides, "ray=cluster", f"ray.address={cluster.gcs_address}", f"run_id={run_id}"],
            tmp_path / f"{run_id}.log", cwd=REPO, env=cluster.env,
        )

    first = start_cluster(num_cpus=4)
    try:
        driver = run_driver(first, "cluster-lost")
        assert wait_for(lambda: driver.poll() is not None or len(committed_files(str(model_dir / "cluster-lost"))) >= 2, timeout=300)
        assert driver.poll() is None, "the run finished before the cluster could be stopped:\n" + output(driver)[-3000:]
        stop_cluster(first.temp_dir, kill=True)
    finally:
        stop_cluster(first.temp_dir, kill=True)
    # The driver loses its cluster; it may hang on reconnect attempts, so it goes too.
    if not wait_for(lambda: driver.poll() is not None, timeout=5):
        driver.kill()
    driver.wait(timeout=60)
    before = committed_files(str(model_dir / "cluster-lost"))
    done_before = set(ids_in(before))
    assert 0 < len(done_before) < N_BIG

    second = start_cluster(num_cpus=4, env=first.env)
    try:
        driver = run_driver(second, "after-restart")
        log = finish(driver, 600)
        assert driver.returncode == 0, log[-4000:]
    finally:
        stop_cluster(second.temp_dir)
    assert f"backfill summary: {N_BIG} inputs = {len(done_before)} already labeled + {N_BIG - len(done_before)} predicted + 0 errors" in log, log[-3000:]
    print(f"cluster killed with {len(done_before)}/{N_BIG} images committed; rerun on a new cluster: " + next(ln for ln in log.splitlines() if "backfill summary" in ln))
    redone = ids_in(committed_files(str(model_dir / "after-restart")))
    assert len(redone) == N_BIG - len(done_before) and not set(redone) & done_before  # the rerun did only the remainder
    ids = ids_in(committed_files(str(model_dir)))
    assert len(ids) == len(set(ids)) == N_BIG
    assert not [p for p in Path(tmp_path).rglob("*.parquet") if p.name.startswith(".")]


def test_incremental_run_labels_only_new_images(ray_local, local_catalog, random_checkpoint, tmp_path):
    import pyarrow.compute as pc

    manifest = pq.read_table(local_catalog["cfg"]["data"]["manifest"])
    manifest = manifest.filter(pc.equal(manifest["split"], "test"))
    # The catalog grows in place: the same manifest URI (the catalog's identity), 28 images added.
    path = tmp_path / "manifest.parquet"
    pq.write_table(manifest.slice(0, 100), path)
    base = ["experiment=smoke", "data.split=null", f"predictor.checkpoint={random_checkpoint}", f"paths.output={tmp_path}/out", f"data.manifest={path}"]
    a = backfill(make_cfg(*base))
    assert (a["counts"]["skipped"], a["counts"]["predicted"]) == (0, 100)
    pq.write_table(manifest, path)
    b = backfill(make_cfg(*base))
    assert (b["counts"]["skipped"], b["counts"]["predicted"] + b["counts"]["errors"]) == (100, 28)
    assert b["counts"]["model_rows"] == 128
