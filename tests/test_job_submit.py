"""`ray job submit` against a real local cluster started with `ray start --head`."""

import subprocess
import time

import pytest

from catalog_vision.query import read_predictions
from conftest import REPO
from raycluster import BIN, start_cluster, stop_cluster

pytestmark = pytest.mark.slow


def run(*args, env, timeout=300, check=True):
    return subprocess.run([str(a) for a in args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=check)


def test_backfill_via_ray_job_submit(local_catalog, random_checkpoint, tmp_path):
    cluster = start_cluster(num_cpus=4)
    try:
        out_root = tmp_path / "out"
        submit_args = (
            BIN / "ray", "job", "submit", "--address", cluster.dashboard,
            "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml", "--",
            "python", "jobs/backfill.py", "experiment=smoke", "ray=cluster",
            f"data.manifest={local_catalog['cfg']['data']['manifest']}",
            f"predictor.checkpoint={random_checkpoint}",
            f"paths.output={out_root}",
            "run_id=submitted",
        )
        # The job agent comes up a few seconds after `ray start` returns.
        deadline = time.monotonic() + 120
        while True:
            submit = run(*submit_args, env=cluster.env, timeout=600, check=False)
            if "No available agent" not in submit.stderr + submit.stdout or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
        assert "backfill summary: 128 inputs = 0 already labeled + 128 predicted + 0 errors" in submit.stdout
        runs = list((out_root / "predictions").glob("*/*/submitted"))
        assert len(runs) == 1
        table = read_predictions(str(runs[0]))
        assert table.num_rows == 128 and len(table.column("image_id").unique()) == 128
        assert set(table.column("run_id").to_pylist()) == {"submitted"}
    finally:
        stop_cluster(cluster.temp_dir)
