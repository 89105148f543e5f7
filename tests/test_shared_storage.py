"""On a multi-node cluster a local output path must be one shared mount: a node with its own disk
at that path (here: a worker node in its own mount namespace, a tmpfs over the folder) stops the
job before it writes, naming the node (README "On a cluster")."""

import subprocess
import sys

import pytest

from conftest import REPO
from raycluster import add_node, alive_nodes, remove_node, start_cluster, stop_cluster, wait_for

pytestmark = pytest.mark.slow

CHECK = """
import ray, sys
from catalog_vision.storage.shared import check_shared, NotShared
ray.init(address="auto", log_to_driver=False)
try:
    print("checked", check_shared(sys.argv[1:]))
except NotShared as e:
    print("NotShared:", e)
"""


def driver(cluster, *paths):
    r = subprocess.run([sys.executable, "-c", CHECK, *paths], env={**cluster.env, "RAY_ADDRESS": cluster.gcs_address},
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip().splitlines()[-1]


def test_local_paths_must_be_shared_by_every_node(tmp_path):
    out = tmp_path / "root"
    cluster = start_cluster(num_cpus=1)
    nodes = []
    try:
        assert driver(cluster, str(out)) == "checked []"  # one node: nothing to check
        nodes.append(add_node(cluster))
        assert wait_for(lambda: alive_nodes(cluster) == 2, timeout=120, interval=1)
        assert driver(cluster, str(out), "s3://bucket/prefix") == f"checked ['{out}']"  # the same disk: it sees the marker
        nodes.append(add_node(cluster, private_mount=str(out)))
        assert wait_for(lambda: alive_nodes(cluster) == 3, timeout=120, interval=1)
        msg = driver(cluster, str(out))
        assert msg.startswith(f"NotShared: {out} is a local path, and 1 of the cluster's 3 nodes do not see it") and " (node " in msg
        assert driver(cluster, "s3://bucket/prefix") == "checked []"  # object storage needs no check
        assert not list(out.glob(".catalog-vision-shared-*"))  # markers removed
        # The real job stops there, before planning or writing (no checkpoint needed to get that far).
        job = subprocess.run([sys.executable, "jobs/backfill.py", f"paths.root={out}", "predictor.checkpoint=/nonexistent"],
                             env={**cluster.env, "RAY_ADDRESS": cluster.gcs_address}, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert job.returncode != 0 and "do not see it as the driver's node does" in job.stdout + job.stderr
        assert not [p for p in out.rglob("*") if p.is_file()]  # nothing written (the check made only the folders)
    finally:
        for n in nodes:
            remove_node(n)
        stop_cluster(cluster.temp_dir)
