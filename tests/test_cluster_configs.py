"""The cluster configs under cluster/ run Ray with token authentication, keep the Jobs API and the Ray
Client port away from the network, and (on Kubernetes) ship a NetworkPolicy that admits only what the
job needs (README "On a cluster"). No cluster here: the files are parsed and the policies evaluated."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import REPO

CLUSTER = REPO / "cluster"
RAY_PORTS = {"gcs": 6379, "dashboard": 8265, "client": 10001, "serve": 8000}


def docs(name: str) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all((CLUSTER / name).read_text())}


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def admitted(policy: dict, source: dict, port: int, same_namespace: bool = True) -> bool:
    """Whether a NetworkPolicy admits a connection from a pod with labels ``source`` to ``port`` of
    the pods it selects (Kubernetes semantics: rules are ORed; a rule without ``from`` admits every
    source, one without ``ports`` every port; a bare podSelector means the policy's namespace)."""
    for rule in policy["spec"].get("ingress") or []:
        ports = [p["port"] for p in rule.get("ports") or []]
        if ports and port not in ports:
            continue
        peers = rule.get("from")
        if not peers:
            return True
        for peer in peers:
            ns_ok = "namespaceSelector" in peer or same_namespace
            if ns_ok and matches(peer.get("podSelector") or {}, source):
                return True
    return False


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def ray_pods(cluster_spec: dict) -> list[dict]:
    return [cluster_spec["headGroupSpec"]["template"], *(g["template"] for g in cluster_spec["workerGroupSpecs"])]


def secret_in_header(name: str) -> str:
    m = re.search(r"kubectl create secret generic (\S+) --from-literal=auth_token=", (CLUSTER / name).read_text())
    assert m, f"{name}: the header no longer says how to create the token Secret"
    return m.group(1)


@pytest.mark.parametrize("name, kind", [("rayjob.yaml", "RayJob"), ("rayservice.yaml", "RayService")])
def test_kuberay_clusters_use_token_auth_and_no_ray_client_port(name, kind):
    d = docs(name)
    cluster = d[kind]["spec"]["rayClusterSpec"]
    # The operator sets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN on every Ray container from this Secret.
    assert cluster["authOptions"] == {"mode": "token", "secretName": secret_in_header(name)}
    for pod in ray_pods(cluster):
        for c in containers(pod):
            assert all(p["containerPort"] != RAY_PORTS["client"] for p in c.get("ports") or []), (name, c["name"])
            assert not [e for e in c.get("env") or [] if e["name"].startswith("RAY_AUTH_TOKEN") and "value" in e], "a token inlined"


def test_rayjob_submitter_sends_the_token_from_the_secret():
    job = docs("rayjob.yaml")["RayJob"]["spec"]
    (submitter,) = containers(job["submitterPodTemplate"])
    env = {e["name"]: e for e in submitter["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": job["rayClusterSpec"]["authOptions"]["secretName"], "key": "auth_token"}
    assert job["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"


OPERATOR = {"app.kubernetes.io/name": "kuberay-operator"}
STRANGER = {"app": "some-other-workload"}


def test_rayjob_network_policy_admits_only_the_submitter_and_operator_to_the_jobs_api():
    d = docs("rayjob.yaml")
    job, policy = d["RayJob"]["spec"], d["NetworkPolicy"]
    pods = [p["metadata"]["labels"] for p in ray_pods(job["rayClusterSpec"])]
    assert all(matches(policy["spec"]["podSelector"], labels) for labels in pods)  # it covers head and workers
    submitter = job["submitterPodTemplate"]["metadata"]["labels"]
    assert not matches(policy["spec"]["podSelector"], submitter)
    dashboard, client, gcs = RAY_PORTS["dashboard"], RAY_PORTS["client"], RAY_PORTS["gcs"]
    assert admitted(policy, submitter, dashboard) and admitted(policy, OPERATOR, dashboard, same_namespace=False)
    assert not admitted(policy, submitter, client) and not admitted(policy, submitter, gcs)
    for port in RAY_PORTS.values():
        assert not admitted(policy, STRANGER, port), port
    assert all(admitted(policy, pods[1], port) for port in (gcs, dashboard, 8076, 12345))  # Ray's own traffic among its pods


def test_rayservice_network_policy_opens_serve_and_keeps_the_dashboard_for_the_operator():
    d = docs("rayservice.yaml")
    service, policy = d["RayService"]["spec"], d["NetworkPolicy"]
    pods = [p["metadata"]["labels"] for p in ray_pods(service["rayClusterSpec"])]
    assert all(matches(policy["spec"]["podSelector"], labels) for labels in pods)
    assert admitted(policy, STRANGER, RAY_PORTS["serve"])
    assert not admitted(policy, STRANGER, RAY_PORTS["dashboard"]) and not admitted(policy, STRANGER, RAY_PORTS["client"])
    assert admitted(policy, OPERATOR, RAY_PORTS["dashboard"], same_namespace=False)


def test_ray_up_cluster_starts_every_node_with_token_auth_and_a_loopback_dashboard():
    cfg = yaml.safe_load((CLUSTER / "gpu-cluster.yaml").read_text())
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in cfg[key] if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        before = command.split("ray start", 1)[0]
        assert re.search(r"\bexport RAY_AUTH_MODE=token\b", before), command
        assert "--dashboard-host" not in command and "--ray-client-server-port" not in command, command
    assert cfg["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    assert "security_group" not in cfg["provider"]
