"""`ray job submit` against a real local cluster started with `ray start --head`."""

import os
import secrets
import subprocess
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from catalog_vision.query import read_predictions
from conftest import REPO, free_port

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def run(*args, env, timeout=300, check=True):
    return subprocess.run([str(a) for a in args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=check)


def test_backfill_via_ray_job_submit(local_catalog, random_checkpoint, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # Token authentication, as a shared cluster would run it: the same token for cluster and client.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the job's `python` is this venv's
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    # A short temp dir of its own (Unix socket paths are limited to ~107 characters) tells this
    # cluster's processes apart from the in-process Ray other tests use.
    ray_tmp = tempfile.mkdtemp(prefix="cvray-", dir="/tmp")
    gcs, dash = free_port(), free_port()
    start = run(
        BIN / "ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=4",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats",
        f"--temp-dir={ray_tmp}",
        # Every agent port explicit: the defaults would collide with the in-process Ray's agents.
        *(f"--{name}={free_port()}" for name in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
            "metrics-export-port", "node-manager-port", "object-manager-port", "ray-client-server-port",
        )),
        env=env, check=False,
    )
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        out_root = tmp_path / "out"
        submit_args = (
            BIN / "ray", "job", "submit", "--address", f"http://127.0.0.1:{dash}",
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
            submit = run(*submit_args, env=env, timeout=600, check=False)
            if "No available agent" not in submit.stderr + submit.stdout or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
        assert "backfill summary: 128 inputs = 0 already labeled + 128 predicted + 0 errors" in submit.stdout
        runs = list((out_root / "predictions").glob("*/submitted"))
        assert len(runs) == 1
        table = read_predictions(str(runs[0]))
        assert table.num_rows == 128 and len(table.column("image_id").unique()) == 128
        assert set(table.column("run_id").to_pylist()) == {"submitted"}
    finally:
        stop_cluster(ray_tmp)


def stop_cluster(ray_tmp: str) -> None:
    """Stop only this cluster: `ray stop` would also kill the in-process Ray of the other tests."""
    import psutil

    procs = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if ray_tmp in " ".join(p.info["cmdline"] or []):
                procs += [p, *p.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=20)
    for p in alive:
        p.kill()
    shutil.rmtree(ray_tmp, ignore_errors=True)
