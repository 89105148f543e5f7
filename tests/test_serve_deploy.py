"""The `serve deploy` config and the RayService manifest under cluster/: generated from conf/ by
jobs/serve_config.py, valid under Serve's own schema, and not stale."""

from __future__ import annotations

import shlex

import pytest
import yaml

from conftest import REPO, make_cfg

from catalog_vision.serve import build_app
from catalog_vision.serve.deploy import IMPORT_PATH, deploy_config, generate, validate

DEPLOY = REPO / "cluster" / "serve-deploy.yaml"
RAYSERVICE = REPO / "cluster" / "rayservice.yaml"


def header_command() -> tuple[list[str], str, str | None]:
    """The overrides and output paths of the command in serve-deploy.yaml's header."""
    line = next(ln for ln in DEPLOY.read_text().splitlines() if ln.startswith("#   python jobs/serve_config.py"))
    argv = shlex.split(line[1:])[2:]
    out = argv[argv.index("--out") + 1]
    rayservice = argv[argv.index("--rayservice") + 1] if "--rayservice" in argv else None
    overrides = [a for i, a in enumerate(argv) if not a.startswith("--") and (i == 0 or argv[i - 1] not in ("--out", "--rayservice"))]
    return overrides, out, rayservice


@pytest.fixture
def clean_env(monkeypatch):
    """The environment the header's command promises not to depend on."""
    for var in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "CATALOG_VISION_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(REPO)


def test_regenerating_gives_the_committed_files(clean_env):
    overrides, out, rayservice = header_command()
    assert (out, rayservice) == ("cluster/serve-deploy.yaml", "cluster/rayservice.yaml")
    files = generate(make_cfg(*overrides), overrides, out, rayservice)
    assert set(files) == {out, rayservice}
    for path, text in files.items():
        assert (REPO / path).read_text() == text, f"{path} is stale: run the command in the header of {DEPLOY.name}"


def test_deploy_config_is_valid_for_serve_and_names_the_package_builder(clean_env):
    overrides, _, _ = header_command()
    config = yaml.safe_load(DEPLOY.read_text())
    schema = validate(config)  # pydantic: raises on an unknown or ill-typed field
    (app,) = schema.applications
    assert app.import_path == IMPORT_PATH == "catalog_vision.serve:build_app"
    cfg = make_cfg(*overrides)
    # The args are the project config's sections, as build_app checks them...
    assert app.args["predictor"]["checkpoint"] == cfg["predictor"]["checkpoint"] == "s3://my-bucket/cv/output/model"
    resolved = ("predictions", "similar_index")  # made absolute, with the catalog id
    assert {k: v for k, v in app.args["serve"].items() if k not in resolved} == {k: v for k, v in cfg["serve"].items() if k not in resolved}
    assert cfg["serve"]["similar_index"] == "auto" and app.args["serve"]["similar_index"]["root"] == "s3://my-bucket/cv/output/index"
    # ...and the builder accepts them as a cluster would pass them (no I/O: nothing loads until a replica starts).
    bound = build_app(app.args)
    assert bound._bound_deployment.init_args[0]["serve"]["similar_index"] == app.args["serve"]["similar_index"]
    deployment = bound._bound_deployment
    (d,) = app.deployments
    assert d.name == deployment.name == "ImageClassifier"
    assert d.num_replicas == deployment.num_replicas == cfg["serve"]["num_replicas"]
    assert d.max_ongoing_requests == deployment.max_ongoing_requests == cfg["serve"]["max_ongoing_requests"]
    assert d.max_queued_requests == deployment.max_queued_requests == cfg["serve"]["max_queued_requests"]
    assert d.backpressure_config.retry_after_s == cfg["serve"]["retry_after_s"] and d.backpressure_config.status_code == cfg["serve"]["overload_status"]
    assert d.max_surge_percent == cfg["serve"]["max_surge_percent"] == 100  # old replicas serve until new ones are ready
    assert schema.http_options.host == "0.0.0.0" and schema.http_options.port == cfg["serve"]["port"]


def test_rayservice_carries_the_same_serve_config(clean_env):
    manifest, policy = yaml.safe_load_all(RAYSERVICE.read_text())
    assert policy["kind"] == "NetworkPolicy"
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    validate(serve_config)
    overrides, _, _ = header_command()
    assert serve_config == deploy_config(make_cfg(*overrides)) == yaml.safe_load(DEPLOY.read_text())
    head = manifest["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "serve", "containerPort": 8000} in head["ports"]


def test_credentials_are_refused_in_a_serve_config():
    cfg = make_cfg("predictor.checkpoint=s3://b/model", "+storage.secret_access_key=abc123")
    with pytest.raises(ValueError, match="carries a credential"):
        deploy_config(cfg)


def test_a_config_build_app_would_refuse_is_refused_before_writing():
    cfg = make_cfg("predictor.checkpoint=s3://b/model", "serve.admission_limit=100")  # not below max_ongoing_requests=64
    with pytest.raises(ValueError, match="serve.admission_limit=100"):
        deploy_config(cfg)
