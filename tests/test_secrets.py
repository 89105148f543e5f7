"""No credential reaches anything a job writes: a secret passed as an override, a password in a URL,
presigned-URL signatures in the manifest. The jobs run as users run them (``python jobs/...``, Hydra
outputs included) and every file they leave is searched, Parquet by its decoded contents."""

import functools
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog_vision.storage.secrets import redact, redact_command, redact_text, redact_url
from conftest import REPO

pytestmark = pytest.mark.slow

PLANTED = ("PLANTED-OVERRIDE-SECRET", "PLANTED-PASSWORD", "PLANTED-SIGNATURE", "PLANTED-CREDENTIAL", "PLANTED-TOKEN")


def test_redact_url_and_text():
    url = "https://u:pw@cdn.test/a/b.jpg?v=2&X-Amz-Signature=s1&X-Amz-Credential=c1&X-Amz-Date=20261123T000000Z"
    assert redact_url(url) == "https://***@cdn.test/a/b.jpg?v=2&X-Amz-Signature=***&X-Amz-Credential=***&X-Amz-Date=20261123T000000Z"
    assert redact_url("s3://AKIA:SECRET@bucket/k.png") == "s3://***@bucket/k.png"
    assert redact_url("https://cdn.test/x.jpg?v=3") == "https://cdn.test/x.jpg?v=3"  # nothing secret: unchanged, byte for byte
    assert redact_text("ReadError: GET https://a:b@h/x?sig=zz failed, then s3://b/k") == "ReadError: GET https://***@h/x?sig=*** failed, then s3://b/k"
    cfg = {"storage": {"endpoint_url": "http://minio:pw@m:9000", "key": "AKIA", "client_kwargs": {"aws_session_token": "t"}}, "n": 3}
    assert redact(cfg) == {"storage": {"endpoint_url": "http://***@m:9000", "key": "***", "client_kwargs": {"aws_session_token": "***"}}, "n": 3}
    assert redact_command(["+storage.aws_secret_access_key=x", "data.manifest=https://h/m.csv?token=t", "storage=s3"]) == [
        "+storage.aws_secret_access_key=***", "data.manifest=https://h/m.csv?token=***", "storage=s3"]


def written_text(root: Path) -> dict[str, str]:
    """Every file under ``root`` as text; Parquet decoded (its compressed bytes would hide strings)."""
    out = {}
    for f in root.rglob("*"):
        if not f.is_file() or f.suffix == ".png":
            continue
        out[str(f)] = str(pq.read_table(f).to_pylist()) if f.suffix == ".parquet" else f.read_bytes().decode("utf-8", "replace")
    return out


def test_no_secrets_in_job_outputs(local_catalog, random_checkpoint, tmp_path):
    rows = pq.read_table(local_catalog["cfg"]["data"]["manifest"]).filter(pa.compute.equal(pa.compute.field("split"), "test")).slice(0, 24)
    # An HTTP server with nothing to serve: 404, so these rows become (final) MissingObject error rows with their URIs in the tables.
    empty = tmp_path / "www"
    empty.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(empty)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dead = f"127.0.0.1:{server.server_address[1]}"
    hostile = [
        f"http://buyer:PLANTED-PASSWORD@{dead}/p/1.jpg?X-Amz-Signature=PLANTED-SIGNATURE&X-Amz-Credential=PLANTED-CREDENTIAL&v=2",
        f"http://{dead}/p/2.jpg?token=PLANTED-TOKEN",
    ]
    label = rows.column("label")[0].as_py()
    extra = pa.table({c: pa.array([f"hostile-{i}" if c == "image_id" else hostile[i] if c == "uri" else label if c == "label" else "test"
                                   for i in range(2)], rows.schema.field(c).type) for c in rows.column_names})
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.concat_tables([rows, extra]), manifest)
    common = ["experiment=smoke", f"paths.root={tmp_path / 'run'}", f"data.manifest={manifest}", "+storage.aws_secret_access_key=PLANTED-OVERRIDE-SECRET",
              "storage.http.retries=0",
              "storage.http.allow_private_hosts=true", f"predictor.checkpoint={random_checkpoint}", f"evaluate.checkpoint={random_checkpoint}"]
    jobs = [
        ["jobs/backfill.py", *common, "data.split=null", f"hydra.run.dir={tmp_path / 'run' / 'hydra-backfill'}"],
        ["jobs/evaluate.py", *common, "evaluate.source=predictions", f"hydra.run.dir={tmp_path / 'run' / 'hydra-evaluate'}"],
    ]
    for job in jobs:
        try:
            done = subprocess.run([sys.executable, *job], cwd=REPO, capture_output=True, text=True, timeout=600)
        finally:
            if job is jobs[-1]:
                server.shutdown()
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        printed = done.stdout + done.stderr
        assert not [s for s in PLANTED if s in printed], printed[-3000:]
    texts = written_text(tmp_path / "run")
    assert any(f.endswith("_run.json") for f in texts) and any(f.endswith("metrics.json") for f in texts) and any(f.endswith("model_card.md") for f in texts)
    assert not any("/.hydra/" in f for f in texts)  # Hydra's overrides.yaml would store the override verbatim
    leaks = {f: [s for s in PLANTED if s in t] for f, t in texts.items() if any(s in t for s in PLANTED)}
    assert not leaks, leaks
    # The hostile rows are still accounted for: error rows whose uri keeps everything but the credentials.
    table = pq.read_table(next(Path(f) for f in texts if f.endswith(".parquet") and "/predictions/" in f and "hostile" in texts[f]))
    got = {r["image_id"]: r for r in table.to_pylist() if r["image_id"].startswith("hostile-")}
    assert got["hostile-0"]["uri"] == f"http://***@{dead}/p/1.jpg?X-Amz-Signature=***&X-Amz-Credential=***&v=2"
    assert got["hostile-1"]["uri"] == f"http://{dead}/p/2.jpg?token=***"
    assert all(r["error"].startswith("MissingObject") and r["label"] is None for r in got.values())
    card = next(t for f, t in texts.items() if f.endswith("model_card.md"))
    assert "+storage.aws_secret_access_key=***" in card  # the command is recorded, with the value masked
