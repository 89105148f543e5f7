"""A multi-node Ray cluster on this machine: a `ray start --head` node plus worker nodes, each its
own `ray start` process group with its own resources (tests/raycluster.py). Jobs run as they would
under `ray job submit`: `python jobs/<job>.py` drivers with RAY_ADDRESS set to the cluster.

* a backfill whose predictor actors land one per worker node (each worker node offers one
  `cv_node` resource and each actor asks for one), shown by the node ids in `_run.json`;
* a worker node killed (SIGKILL of its whole process group) mid-backfill, the autoscaler's part
  played by adding a replacement node: the run ends with exactly one row per image;
* training with one Train worker per worker node, a node killed after the first checkpoint is
  registered: the elastic worker group (trainer.min_workers=1) restarts from that checkpoint on
  the surviving node and finishes.

One cluster for the module: each test starts from two live worker nodes (the fixture replaces
nodes a previous test killed), and each backfill writes to its own fresh output folder.

The cluster detects a dead node and gives up on an unplaceable worker group sooner than Ray's
defaults (FAST_FAILOVER): what the tests check does not change, only how long they wait for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import REPO, finish, make_cfg, output, start_logged
from raycluster import add_node, alive_nodes, remove_node, start_cluster, stop_cluster, wait_for

pytestmark = pytest.mark.slow

NODE = '{"cv_node": 1}'  # one per worker node: one predictor actor / Train worker per node
PER_ACTOR = "{cv_node:1}"  # the same, as a Hydra override
TEST_IMAGES = 1500  # a backfill of all of them still runs when the first files are committed and a node is killed
SPREAD_IMAGES = 384  # the placement test needs both actors started, not a long run: 12 batches of 32
FAST_FAILOVER = {
    # The GCS checks each raylet's health every 0.5 s and marks it dead after 4 failed checks in a
    # row (Ray's defaults: 3 s and 5). A SIGKILLed raylet refuses the check at once, so the node is
    # dead within ~2 s; a busy raylet still has the default 10 s per check to answer.
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_failure_threshold": "4",
    # Ray Train sizes the elastic group from the cluster's resources; a restart sized while the killed
    # node still counted waits this long for its placement group (default 60 s), then is sized again.
    # Startup timeouts are controller errors, retried without limit and not counted in max_failures.
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "15",
}


class Nodes:
    def __init__(self, cluster):
        self.cluster, self.workers = cluster, []

    def ensure(self, n: int = 2) -> None:
        """``n`` live worker nodes (plus the head) before a test starts; a `ray start` that exits
        (it gives up when its raylet is slow to come up on a loaded machine) is started again."""
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            self.workers = [w for w in self.workers if w.proc.poll() is None]
            while len(self.workers) < n:
                self.workers.append(add_node(self.cluster, num_cpus=2, resources=NODE))
            if wait_for(lambda: alive_nodes(self.cluster) == n + 1 or any(w.proc.poll() is not None for w in self.workers), timeout=120, interval=2) \
                    and all(w.proc.poll() is None for w in self.workers):
                return
        raise AssertionError(f"{n} worker nodes did not join; `ray start` logs: {self.cluster.temp_dir}/node-*.log")

    def kill(self, node) -> None:
        remove_node(node)
        self.workers.remove(node)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, fmnist):
    from raycluster import client_env

    c = start_cluster(num_cpus=1, env={**client_env(), **FAST_FAILOVER})  # the head: drivers, coordinators, a few small tasks
    nodes = Nodes(c)
    try:
        root = tmp_path_factory.mktemp("mn")
        out = driver(c, "jobs/make_catalog.py", "experiment=smoke", f"paths.root={root}", f"data.source={fmnist}", f"data.limit.test={TEST_IMAGES}")
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        manifest = root / "catalog" / "manifest.parquet"
        table = pq.read_table(manifest)
        pq.write_table(table.filter(pc.equal(table["split"], "test")).slice(0, SPREAD_IMAGES), root / "spread-manifest.parquet")
        yield {"cluster": c, "nodes": nodes, "root": root, "manifest": str(manifest), "spread_manifest": str(root / "spread-manifest.parquet"),
               "checkpoint": resnet_checkpoint(root / "ckpt")}
    finally:
        for w in nodes.workers:
            remove_node(w)
        stop_cluster(c.temp_dir)


def resnet_checkpoint(path: Path) -> str:
    """resnet18 with seeded random weights reading the catalog at 64x64: enough work per image that a
    backfill of the catalog is still running when a node is killed."""
    import torch

    from catalog_vision import checkpoint as ckpt
    from catalog_vision.models import build_model

    cfg = make_cfg("experiment=smoke", "model=resnet18")
    prep = {**cfg["data"]["preprocessing"], "image_size": [64, 64]}
    torch.manual_seed(0)
    model = build_model(cfg["model"], len(cfg["data"]["classes"]), prep)
    meta = {"model": cfg["model"], "classes": cfg["data"]["classes"], "preprocessing": prep, "task": "multiclass",
            "embedding_dim": model.num_features, "epoch": 0, "metrics": {}}
    ckpt.save(str(path), model, meta)
    return str(path)


def driver(c, script, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], env={**c.env, "RAY_ADDRESS": c.gcs_address}, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def start(c, log: Path, script, *args) -> subprocess.Popen:
    """A driver in the background, its output to the file ``log`` (a PIPE nobody reads while the test
    polls would fill up and block it)."""
    return start_logged([sys.executable, script, *args], log, env={**c.env, "RAY_ADDRESS": c.gcs_address}, cwd=REPO)


def backfill_args(env, out: Path, run_id: str, manifest: str | None = None) -> list[str]:
    return [
        "experiment=smoke", f"data.manifest={manifest or env['manifest']}", f"predictor.checkpoint={env['checkpoint']}", f"paths.output={out}",
        f"run_id={run_id}",
        "predictor.dtype=float32", "predictor.min_actors=2", "predictor.max_actors=2", "predictor.batch_size=32", "output.rows_per_file=64",
        f"predictor.resources={PER_ACTOR}", "ray.progress_bars=false",
    ]


def table_counts(out: Path) -> tuple[int, int]:
    """Rows and distinct image ids in the whole table, read back with DuckDB."""
    return duckdb.connect().execute(f"SELECT count(*), count(DISTINCT image_id) FROM read_parquet('{out}/predictions/*/*/*/*.parquet')").fetchone()


def catalog_size(env, manifest: str | None = None) -> int:
    return duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{manifest or env['manifest']}') WHERE split = 'test'").fetchone()[0]


def run_manifest(out: Path, run_id: str) -> dict:
    (path,) = (out / "predictions").glob(f"*/*/{run_id}/_run.json")
    return json.loads(path.read_text())


def test_backfill_actors_spread_over_worker_nodes(cluster):
    c, nodes = cluster["cluster"], cluster["nodes"]
    nodes.ensure(2)
    out = cluster["root"] / "spread"
    r = driver(c, "jobs/backfill.py", *backfill_args(cluster, out, "spread", cluster["spread_manifest"]))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    hosts = run_manifest(out, "spread")["predictor"]["hosts"]
    ran_on = sorted({h["node_id"] for h in hosts})
    print("predictor actors ran on nodes:", ran_on)
    assert len(ran_on) == 2 and None not in ran_on
    assert catalog_size(cluster, cluster["spread_manifest"]) == SPREAD_IMAGES
    assert table_counts(out) == (SPREAD_IMAGES, SPREAD_IMAGES)


def test_node_killed_mid_backfill_leaves_one_row_per_image(cluster):
    """A worker node (raylet, its predictor actor and any task on it) is SIGKILLed once the first
    files are committed; a replacement node joins, as the autoscaler would bring one.

    Same run: Ray recreates the dead actor on the new node (predictor.max_restarts=-1) and sends
    the batch it was running again (max_task_retries=-1); a batch whose output block was lost with
    the node is recomputed from lineage. Retried batches commit under the same file name (a hash
    of their image ids), so nothing is written twice. If the run does not succeed, a rerun labels
    only the ids not committed; the test prints which of the two happened."""
    c, nodes = cluster["cluster"], cluster["nodes"]
    nodes.ensure(2)
    out = cluster["root"] / "loss"
    n = catalog_size(cluster)
    proc = start(c, cluster["root"] / "loss.log", "jobs/backfill.py", *backfill_args(cluster, out, "loss"))
    try:
        assert wait_for(lambda: any((out / "predictions").glob("*/*/loss/part-*.parquet")) or proc.poll() is not None, timeout=300, interval=0.2)
        assert proc.poll() is None, "the backfill finished before a node could be killed:\n" + output(proc)[-3000:]
        committed_before = len(list((out / "predictions").glob("*/*/loss/part-*.parquet")))
        nodes.kill(nodes.workers[0])
        print(f"killed a worker node with {committed_before} files committed")
        nodes.ensure(2)  # the replacement node
        stdout = finish(proc, 600)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(stdout[-2500:])
    rows, distinct = table_counts(out)
    if proc.returncode == 0:
        print(f"same run: rc 0, {rows} rows, {distinct} distinct ids, catalog {n}")
        hosts = run_manifest(out, "loss")["predictor"]["hosts"]
        print("predictor actors ran on nodes:", sorted({h["node_id"] for h in hosts}))
    else:
        print(f"first run: rc {proc.returncode}, {rows} rows committed; rerunning")
        assert rows == distinct < n
        r = driver(c, "jobs/backfill.py", *backfill_args(cluster, out, "loss-rerun"))
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert f"{n} inputs = {rows} already labeled" in r.stdout
        rows, distinct = table_counts(out)
        print(f"after the rerun: {rows} rows, {distinct} distinct ids, catalog {n}")
    assert rows == distinct == n


def registered(storage: Path, run_name: str) -> list[int]:
    snap = storage / run_name / "checkpoint_manager_snapshot.json"
    try:
        return sorted(r["metrics"]["epoch"] for r in json.loads(snap.read_text())["checkpoint_results"])
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or mid-write; a changed format raises
        return []


def test_node_killed_mid_training_resumes_on_surviving_node(cluster):
    c, nodes = cluster["cluster"], cluster["nodes"]
    nodes.ensure(2)
    out = cluster["root"] / "train"
    epochs = 4
    proc = start(c, cluster["root"] / "train.log", "jobs/train.py", "experiment=smoke", f"data.manifest={cluster['manifest']}", f"paths.output={out}",
                 f"trainer.epochs={epochs}", "trainer.run_name=mn", f"trainer.checkpoints_to_keep={epochs}", "trainer.num_workers=2", "trainer.min_workers=1",
                 f"trainer.resources={PER_ACTOR}", "trainer.max_failures=2", "trainer.precision=float32", "ray.progress_bars=false")
    try:
        assert wait_for(lambda: registered(out / "train", "mn") or proc.poll() is not None, timeout=400, interval=0.5)
        assert proc.poll() is None and registered(out / "train", "mn")[-1] < epochs - 1, "training ended before a node could be killed"
        at_kill = registered(out / "train", "mn")
        nodes.kill(nodes.workers[0])
        print("killed a worker node; registered checkpoints at that moment:", at_kill)
        stdout = finish(proc, 600)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(stdout[-4000:])
    assert proc.returncode == 0, stdout[-4000:]
    # Worker lines reach the driver behind a "(RayTrainWorker pid=...)" prefix.
    groups = ["train workers:" + line.split("train workers:", 1)[1] for line in stdout.splitlines() if "train workers:" in line]
    print("worker groups:", groups)
    assert groups[0].startswith("train workers: 2 on 2 nodes")  # one Train worker per worker node
    assert any(line.startswith("train workers: 1 on 1 nodes") for line in groups[1:])  # the elastic group shrank
    resumed = [int(line.split("resuming from epoch ")[1].split()[0]) for line in stdout.splitlines() if "resuming from epoch " in line]
    assert resumed and resumed[0] >= at_kill[-1] + 1, (resumed, at_kill)
    from catalog_vision import checkpoint as ckpt

    history = ckpt.read_meta(str(out / "model"))["history"]
    assert [h["epoch"] for h in history] == list(range(epochs))
    print("epoch, workers, nodes, resumed_from_epoch:", [(h["epoch"], h["workers"], h["nodes"], h["resumed_from_epoch"]) for h in history])
    assert history[0]["workers"] == 2 and history[-1]["workers"] == 1 and history[-1]["resumed_from_epoch"] == resumed[-1]
