"""A second, separate Ray cluster for tests that need one of their own (`ray start --head`).

It runs beside the in-process Ray the other tests use, so it has its own short temp dir (Unix
socket paths are limited to ~107 characters), its own ports, and is stopped by killing exactly the
processes whose command line names that temp dir (`ray stop` would kill every cluster here).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO, free_port

BIN = Path(sys.executable).parent


@dataclass
class Cluster:
    env: dict
    temp_dir: str
    gcs_address: str
    dashboard: str


def client_env() -> dict:
    """Token authentication, as a shared cluster would run it: the same token for cluster and clients."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # a job's `python` is this venv's
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    return env


def start_cluster(num_cpus: int = 4, env: dict | None = None) -> Cluster:
    env = env or client_env()
    temp_dir = tempfile.mkdtemp(prefix="cvray-", dir="/tmp")
    gcs, dash = free_port(), free_port()
    start = subprocess.run(
        [
            str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--num-cpus={num_cpus}",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            # Every agent port explicit: the defaults would collide with the in-process Ray's agents.
            *(f"--{name}={free_port()}" for name in (
                "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                "metrics-export-port", "node-manager-port", "object-manager-port", "ray-client-server-port",
            )),
        ],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    if start.returncode != 0:
        stop_cluster(temp_dir)
        raise RuntimeError(f"ray start failed:\n{start.stdout}\n{start.stderr}")
    return Cluster(env=env, temp_dir=temp_dir, gcs_address=f"127.0.0.1:{gcs}", dashboard=f"http://127.0.0.1:{dash}")


def cluster_processes(temp_dir: str) -> list:
    import psutil

    procs = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if temp_dir in " ".join(p.info["cmdline"] or []):
                procs += [p, *p.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return procs


def stop_cluster(temp_dir: str, kill: bool = False, remove: bool = True) -> None:
    """Stop only this cluster: SIGTERM (or SIGKILL with ``kill``) to every one of its processes."""
    import psutil

    procs = cluster_processes(temp_dir)
    for p in procs:
        try:
            p.kill() if kill else p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=20)
    for p in alive:
        p.kill()
    if remove:
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


AGENT_PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
               "node-manager-port", "object-manager-port")


@dataclass
class Node:
    proc: subprocess.Popen
    private: str | None


def add_node(cluster: Cluster, num_cpus: int = 1, private_mount: str | None = None, resources: str | None = None) -> Node:
    """A worker node (``ray start --address --block``) in its own process group. With
    ``private_mount``, the node runs in its own mount namespace with an empty tmpfs over that path:
    the node's own disk there, as on a cluster whose nodes do not share the folder."""
    cmd = [str(BIN / "ray"), "start", f"--address={cluster.gcs_address}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
           "--disable-usage-stats", "--block", *(f"--{name}={free_port()}" for name in AGENT_PORTS)]
    if resources:
        cmd.append(f"--resources={resources}")
    if private_mount:
        os.makedirs(private_mount, exist_ok=True)
        import shlex

        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               f"mount -t tmpfs cv-private {shlex.quote(private_mount)} && exec {shlex.join(cmd)}"]
    # `ray start`'s own output (why a node did not join) goes to a log in the cluster's temp dir.
    log = open(os.path.join(cluster.temp_dir, f"node-{secrets.token_hex(3)}.log"), "w")
    proc = subprocess.Popen(cmd, env=cluster.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return Node(proc, private_mount)


def remove_node(node: Node) -> None:
    """Kill every process of the node (its process group: ray start, raylet, workers)."""
    import signal

    try:
        os.killpg(node.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    node.proc.wait(timeout=30)


def alive_nodes(cluster: Cluster) -> int:
    r = subprocess.run([sys.executable, "-c", "import ray; ray.init(address='auto', log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"],
                       env={**cluster.env, "RAY_ADDRESS": cluster.gcs_address}, capture_output=True, text=True, timeout=120)
    return int(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else -1
