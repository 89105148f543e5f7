"""`ray job submit` against a real local cluster started with `ray start --head`, with token
authentication set up exactly as the README's "On a cluster" section says."""

import os
import re
import shutil
import subprocess
import time

import pytest

from catalog_vision.backfill.query import read_predictions
from conftest import REPO
from raycluster import BIN, start_cluster, stop_cluster

pytestmark = pytest.mark.slow


def run(*args, env, timeout=300, check=True):
    return subprocess.run([str(a) for a in args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=check)


def readme_submit_flags() -> list[str]:
    """The README's `ray job submit` flags, up to the job's `python jobs/backfill.py ray=cluster`."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"export RAY_AUTH_MODE=token\nray job submit (.*?)\n```", readme, re.S)
    assert block, "README: the `ray job submit` block after `export RAY_AUTH_MODE=token` is gone"
    words = block.group(1).replace("\\\n", " ").split()
    head = words[: words.index("ray=cluster") + 1]
    assert head[:2] == ["--address", "http://<head>:8265"] and head[-4:] == ["--", "python", "jobs/backfill.py", "ray=cluster"], head
    return head


def home_env(home) -> dict:
    """A shell's environment on its own machine: no Ray variables, its own home (~/.ray/auth_token)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # a job's `python` is this venv's
    env["HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    return env


def test_backfill_via_ray_job_submit(local_catalog, random_checkpoint, tmp_path):
    # Head node, as the README says: `ray get-auth-token --generate`, then `ray start --head`.
    head_env = home_env(tmp_path / "head-home")
    run(BIN / "ray", "get-auth-token", "--generate", env=head_env)
    token_file = tmp_path / "head-home" / ".ray" / "auth_token"
    assert token_file.stat().st_size >= 32
    cluster = start_cluster(num_cpus=4, env=head_env)
    try:
        flags = readme_submit_flags()
        flags[1] = cluster.dashboard
        out_root = tmp_path / "out"
        job = [f"data.manifest={local_catalog['cfg']['data']['manifest']}", "experiment=smoke", f"predictor.checkpoint={random_checkpoint}",
               f"paths.output={out_root}", "run_id=submitted"]
        client_env = home_env(tmp_path / "client-home")
        (tmp_path / "client-home" / ".ray").mkdir()
        shutil.copy(token_file, tmp_path / "client-home" / ".ray" / "auth_token")  # the README's `scp`

        # Without RAY_AUTH_MODE=token the client sends no token: refused, as the README warns.
        refused = run(BIN / "ray", "job", "submit", *flags, *job, env=client_env, timeout=600, check=False)
        assert refused.returncode != 0 and "authentication token" in (refused.stdout + refused.stderr).lower(), refused.stdout[-2000:] + refused.stderr[-2000:]

        client_env["RAY_AUTH_MODE"] = "token"  # the README's `export RAY_AUTH_MODE=token`
        deadline = time.monotonic() + 120  # the job agent comes up a few seconds after `ray start` returns
        while True:
            submit = run(BIN / "ray", "job", "submit", *flags, *job, env=client_env, timeout=600, check=False)
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
