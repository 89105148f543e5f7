"""A predictor actor's start-up figures (``catalog_vision.infer.startup``): the process start time
read from /proc is when the process was started, and the summary the run manifest keeps follows its reports."""

import os
import subprocess
import sys
import time

import psutil
import pytest

from catalog_vision.infer import startup

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")


def test_process_start_time_is_when_the_process_was_started():
    tick = 1 / os.sysconf("SC_CLK_TCK")  # /proc counts the start in clock ticks
    before = time.time()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    after = time.time()
    try:
        time.sleep(0.3)
        ours = startup.process_started_at(child.pid)
        assert before - 2 * tick <= ours <= after + 2 * tick, (before, ours, after)
        # psutil agrees to its own precision (it counts from the boot time in whole seconds)
        assert abs(ours - psutil.Process(child.pid).create_time()) < 1.0
        assert startup.process_started_at() < before  # this process started earlier
    finally:
        child.kill()
        child.wait()
    assert startup.process_started_at(child.pid) is None  # gone: no figure rather than an error


def test_summary_of_actor_reports():
    called = 1000.0
    reports = [{"kind": "actor", "ready": 1004.0, "startup_s": 3.5, "init_s": 0.2},
               {"kind": "actor", "ready": 1003.0, "startup_s": 2.5, "init_s": 0.4},
               {"kind": "actor", "ready": 1009.0, "startup_s": None, "init_s": 0.3}]  # a restart off Linux, say
    first, summary = startup.summarize(reports, called)
    assert first == 3.0 and summary == {"started": 3, "startup_s": 3.0, "init_s": 0.3}
    assert startup.summarize([], called) == (None, None)


def test_an_actor_report_is_taken_at_the_end_of_init():
    before = time.time()
    r = startup.actor_report("node-1", init_started=before - 0.25)
    assert r["kind"] == "actor" and r["node_id"] == "node-1" and r["init_s"] >= 0.25
    assert r["process_started"] <= r["init_started"] <= r["ready"] and r["startup_s"] >= r["init_s"]
