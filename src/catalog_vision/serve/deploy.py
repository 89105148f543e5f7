"""The ``serve deploy`` config (and a KubeRay RayService's ``serveConfigV2``) generated from the
project config, so a cluster runs exactly what ``jobs/serve.py`` runs locally.

    python jobs/serve_config.py --out cluster/serve-deploy.yaml --rayservice cluster/rayservice.yaml [overrides...]

The application's ``import_path`` is :func:`catalog_vision.serve.build_app`; its ``args`` are the
checked ``predictor``, ``serve`` and ``storage`` sections (checkpoint and predictions root made
absolute, the served rows' catalog named), and ``deployments`` repeats the deployment options the
builder sets, where an operator edits them for a lightweight update (replicas, autoscaling,
``max_ongoing_requests``) without restarting replicas. A new checkpoint changes ``args``: Serve
starts new replicas and retires the old ones as ``serve.max_surge_percent`` and the graceful
shutdown settings say.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import yaml

from ..storage.secrets import redact
from .builder import app_config
from .config import deployment_options

IMPORT_PATH = "catalog_vision.serve:build_app"
DEPLOYMENT = "ImageClassifier"


def deploy_config(cfg: Mapping[str, Any]) -> dict:
    """A ``ServeDeploySchema`` document for one application built from ``cfg`` (raises ``ValueError``
    for a config ``build_app`` would refuse, or one carrying credentials)."""
    args = app_config(cfg)
    if redact(args) != args:
        raise ValueError(
            "the serve config carries a credential (a secret-looking key or a URL with one); a Serve config is stored by the "
            "cluster and shown in its dashboard: give credentials to the nodes through their environment instead"
        )
    s = args["serve"]
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": s["host"], "port": int(s["port"])},
        "applications": [
            {
                "name": s["model_name"],
                "route_prefix": s.get("route_prefix") or "/",
                "import_path": IMPORT_PATH,
                "args": args,
                "deployments": [{"name": DEPLOYMENT, **deployment_options(s)}],
            }
        ],
    }


def validate(config: Mapping[str, Any]):
    """Serve's own schema for ``serve deploy`` and RayService ``serveConfigV2`` (pydantic)."""
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(config)


def to_yaml(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False, width=1000)


def render(config: Mapping[str, Any], command: str, ingress: str = "proxy") -> str:
    """The ``serve deploy`` file: a header naming the command that generated it, then the config."""
    from .config import INGRESS_ENV

    env = " ".join(f"{k}={v}" for k, v in INGRESS_ENV[ingress].items())
    header = (
        "# Ray Serve config for `serve deploy` (and RayService serveConfigV2). GENERATED: do not edit by hand.\n"
        f"# Regenerate (tests/test_serve_deploy.py fails while this file differs from the output of):\n#   {command}\n"
        "#\n"
        "# Deploy or roll out a new checkpoint on a running cluster (dashboard at :8265; token auth: the\n"
        "# cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN, README \"On a cluster\"):\n"
        "#   export RAY_AUTH_MODE=token\n"
        "#   serve deploy cluster/serve-deploy.yaml -a http://<head>:8265\n"
        "#   serve status -a http://<head>:8265\n"
        f"# serve.ingress={ingress}: every node's `ray start` runs with {env} in its environment\n"
        "# (cluster/gpu-cluster.yaml and rayservice.yaml set it; README \"Serving\").\n"
    )
    return header + to_yaml(config)


_BLOCK = re.compile(r"^(?P<indent>[ \t]*)serveConfigV2: \|[ \t]*\n(?P<body>(?:(?:(?P=indent)[ \t]+.*)?\n)*)", re.MULTILINE)


def with_serve_config(manifest: str, config: Mapping[str, Any]) -> str:
    """A RayService manifest's text with its ``serveConfigV2: |`` block replaced by ``config``
    (everything else, comments included, kept)."""
    m = _BLOCK.search(manifest)
    if not m:
        raise ValueError("the manifest has no 'serveConfigV2: |' block to fill")
    pad = m.group("indent") + "  "
    body = "".join(pad + line + "\n" if line else "\n" for line in to_yaml(config).splitlines())
    trailing = m.group("body")[len(m.group("body").rstrip("\n")) :]  # blank lines after the block stay
    return manifest[: m.start("body")] + body + trailing[1:] + manifest[m.end() :]


def command_line(overrides: list[str], out: str, rayservice: str | None) -> str:
    parts = ["python jobs/serve_config.py", f"--out {out}"] + ([f"--rayservice {rayservice}"] if rayservice else []) + list(overrides)
    return " ".join(parts)


def generate(cfg: Mapping[str, Any], overrides: list[str], out: str, rayservice: str | None = None) -> dict[str, str]:
    """``{path: text}`` of the files to write: the ``serve deploy`` config and, when given, the
    RayService manifest with that same config as its ``serveConfigV2``. Validated with Serve's schema."""
    config = deploy_config(cfg)
    validate(config)
    files = {out: render(config, command_line(overrides, out, rayservice), cfg["serve"].get("ingress", "proxy"))}
    if rayservice:
        with open(rayservice) as f:
            files[rayservice] = with_serve_config(f.read(), config)
    return files
