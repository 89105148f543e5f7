"""Fault-tolerant training on a real local Ray: a Train worker SIGKILLed mid-run, and a training
job killed and submitted again under the same run name. Both must resume from the latest
checkpoint, not start over, and end with one history entry per epoch."""

import json
import signal
import sys
from pathlib import Path

import pytest

from catalog_vision import checkpoint as ckpt
from conftest import REPO, finish, output, start_logged
from raycluster import wait_for

pytestmark = pytest.mark.slow

EPOCHS = 6


def overrides(local_catalog, tmp_path, run_name):
    return [
        "experiment=smoke",
        f"data.manifest={local_catalog['cfg']['data']['manifest']}",
        f"paths.output={tmp_path}",
        f"trainer.epochs={EPOCHS}",
        f"trainer.run_name={run_name}",
        f"trainer.checkpoints_to_keep={EPOCHS}",
        "trainer.max_failures=2",
    ]


def start_driver(ray_local, args, log):
    # The driver connects to the running local cluster, as a `ray job submit` driver would.
    return start_logged([sys.executable, "jobs/train.py", *args, f"ray.address={ray_local.get_runtime_context().gcs_address}"], log, cwd=REPO)


def checkpoints(tmp_path, run_name) -> list[str]:
    return sorted(p.name for p in (Path(tmp_path) / "train" / run_name).glob("epoch_*") if (p / ckpt.META).exists())


def registered(tmp_path, run_name) -> list[int]:
    """Epochs whose checkpoint Ray Train has registered (every worker reported it): what a restart restores from.
    Files on storage can be ahead of this: rank 0 uploads before the controller has heard from every worker."""
    snap = Path(tmp_path) / "train" / run_name / "checkpoint_manager_snapshot.json"
    try:
        return sorted(r["metrics"]["epoch"] for r in json.loads(snap.read_text())["checkpoint_results"])
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or mid-write
        return []


def check_history(history):
    assert [h["epoch"] for h in history] == list(range(EPOCHS)), [h["epoch"] for h in history]


def test_worker_killed_mid_run_restores_from_latest_checkpoint(ray_local, local_catalog, tmp_path):
    import psutil
    from ray.util.state import list_actors

    driver = start_driver(ray_local, overrides(local_catalog, tmp_path, "worker-kill"), tmp_path / "worker-kill.log")

    def workers():
        address = ray_local.get_runtime_context().gcs_address  # this cluster: others may run on the machine
        return [a.pid for a in list_actors(address=address, filters=[("state", "=", "ALIVE")], detail=True) if "TrainWorker" in (a.class_name or "") and a.pid]

    assert wait_for(lambda: driver.poll() is not None or registered(tmp_path, "worker-kill"), timeout=300)
    pids = workers()
    assert driver.poll() is None and pids, "training ended before a worker could be killed:\n" + output(driver)[-3000:]
    at_kill = registered(tmp_path, "worker-kill")
    psutil.Process(pids[-1]).kill()  # SIGKILL, like an OOM kill or a preempted node
    log = finish(driver, 600)
    (tmp_path / "driver.log").write_text(log)
    assert driver.returncode == 0, log[-4000:]
    print(f"killed Train worker pid {pids[-1]} with checkpoints of epochs {at_kill} registered")
    meta = ckpt.read_meta(str(tmp_path / "model"))
    check_history(meta["history"])
    resumed = sorted({h["resumed_from_epoch"] for h in meta["history"]})
    print("resumed_from_epoch per epoch:", [h["resumed_from_epoch"] for h in meta["history"]])
    # The restarted workers picked up the latest registered checkpoint (at least the one seen at the kill).
    assert resumed[-1] >= max(at_kill) + 1, (resumed, at_kill)
    assert "resuming from epoch" in log


def test_job_killed_and_resubmitted_with_the_same_name_resumes(ray_local, local_catalog, tmp_path):
    args = overrides(local_catalog, tmp_path, "resubmit")
    first = start_driver(ray_local, args, tmp_path / "first.log")
    assert wait_for(lambda: first.poll() is not None or registered(tmp_path, "resubmit"), timeout=300)
    assert first.poll() is None, "training ended before it could be killed:\n" + output(first)[-3000:]
    first.send_signal(signal.SIGKILL)  # the driver dies: Ray tears down its Train controller and workers
    first.wait(timeout=60)
    at_kill = registered(tmp_path, "resubmit")
    early = json.loads((tmp_path / "train" / "resubmit" / f"epoch_{at_kill[0]:04d}" / ckpt.META).read_text())["metrics"]
    assert max(at_kill) < EPOCHS - 1, at_kill

    second = start_driver(ray_local, args, tmp_path / "second.log")
    log = finish(second, 600)
    assert second.returncode == 0, log[-4000:]
    print(f"driver killed with checkpoints of epochs {at_kill} registered; resubmitted run: " + next(line for line in log.splitlines() if "resuming from epoch" in line))
    history = ckpt.read_meta(str(tmp_path / "model"))["history"]
    check_history(history)
    # The epochs done before the kill were not trained again: their metrics are the first run's.
    assert history[0] == early
    first_new = min(h["epoch"] for h in history if h["resumed_from_epoch"] > 0)
    assert first_new >= max(at_kill) + 1, (first_new, at_kill)
    assert sorted(checkpoints(tmp_path, "resubmit")) == [f"epoch_{e:04d}" for e in range(EPOCHS)]
