"""A local Ray that catalog-vision starts runs its workers at the driver's priority (Ray's default
puts them 15 nice levels below it, where the driver and Ray's daemons take the cores from them)."""

import os
import subprocess
import sys

CODE = """
import os, ray
from catalog_vision.runtime import init_ray
init_ray({"num_cpus": 1})

@ray.remote
def nice():
    return os.nice(0)

print(os.nice(0), ray.get(nice.remote()))
"""


def run(env: dict) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    driver, worker = map(int, out.stdout.split()[-2:])
    return driver, worker


def test_workers_run_at_the_drivers_priority():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_worker_niceness", "RAY_ADDRESS")}
    driver, worker = run(env)
    assert worker == driver
    # An explicit setting wins (here: Ray's own default of 15 above the driver).
    driver, worker = run({**env, "RAY_worker_niceness": "15"})
    assert worker == min(19, driver + 15)
