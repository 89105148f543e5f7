"""Manifests are input from outside: URIs a manifest may not name become RefusedURI error rows, never
fetches, and the rest of the catalog runs (README "Manifests from outside")."""

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from catalog_vision import storage as st
from catalog_vision.backfill.run import backfill
from catalog_vision.backfill.query import read_predictions
from catalog_vision.ingest.catalog import _resolve_uri
from catalog_vision.storage.policy import normalised, refusals, refusals_column, resolve_column
from conftest import BUCKET, make_cfg


def test_policy_rules():
    m_local, m_s3 = "/data/cat/manifest.parquet", "s3://shop/cat/manifest.parquet"

    def why(raw, manifest=m_local, schemes=None, prefixes=None):
        resolved = raw if ("://" in raw or raw.startswith("/")) else manifest.rsplit("/", 1)[0] + "/" + raw
        return refusals([raw], [resolved], manifest, schemes, prefixes)[0]

    assert why("images/a.png") is None and why("/elsewhere/b.png") is None  # a local manifest may name local files
    assert "leaves the manifest's folder" in why("../../etc/passwd")
    assert "leaves the manifest's folder" in why("images/../../secret.png")
    assert why("images/../images/a.png") is None
    assert "scheme 'ftp'" in why("ftp://host/x.png") and "scheme 'gs'" in why("gs://b/x.png")
    assert "local path in a manifest in object storage" in why("/root/.aws/credentials", m_s3)
    assert why("s3://shop/cat/images/a.jpg", m_s3) is None
    # data.uri_prefixes unset: a manifest in object storage names objects in its own bucket only; [] lifts that.
    assert "outside the manifest's bucket s3://shop/" in why("s3://other-bucket/a.jpg", m_s3) and why("s3://shop/elsewhere/a.jpg", m_s3) is None
    assert why("s3://other-bucket/a.jpg", m_s3, prefixes=[]) is None and why("https://cdn.shop.test/p.jpg", m_s3) is None
    assert why("s3://other-bucket/a.jpg") is None  # a local manifest: no bucket of its own to default to
    assert "instance-metadata" in why("http://169.254.169.254/latest/meta-data/iam/security-credentials/role")
    assert "instance-metadata" in why("http://[fd00:ec2::254]/latest/meta-data/") and "instance-metadata" in why("http://metadata.google.internal/x")
    shop = ["s3://shop/cat/", "https://cdn.shop.test/"]
    assert why("s3://shop/cat/a.jpg", m_s3, prefixes=shop) is None and why("https://cdn.shop.test/p/1.jpg?v=2", m_s3, prefixes=shop) is None
    assert "not under data.uri_prefixes" in why("s3://other-bucket/a.jpg", m_s3, prefixes=shop)
    assert "not under data.uri_prefixes" in why("s3://shop/cat/../private/a.jpg", m_s3, prefixes=shop)  # .. resolved before the check
    assert "https" in why("https://cdn.shop.test/x.jpg", schemes=["s3", "file"])
    assert "***" in why("ftp://u:pw@host/x.png") and "pw" not in why("ftp://u:pw@host/x.png")  # reasons are stored: no credentials
    assert normalised("s3://b/a/./c/../d.jpg") == "s3://b/a/d.jpg"


# URIs for the column screen: plain ones it clears, and every shape it must leave to the per-row rules.
SCREEN_CASES = [
    "images/a.png", "images/sub/b.jpg", "/elsewhere/b.png", "../../etc/passwd", "images/../../secret.png", "images/../images/a.png",
    "./images/a.png", "images//a.png", "images/a.png/", "", "ftp://host/x.png", "gs://b/x.png", "FTP://host/x.png", "S3://shop/cat/a.jpg",
    "/root/.aws/credentials", "s3://shop/cat/images/a.jpg", "s3://shop/cat/../private/a.jpg", "s3://shop/cat/./a.jpg", "s3://shop",
    "s3://other-bucket/a.jpg", "s3://shop/catalogue/a.jpg", "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/latest/",
    "http://metadata.google.internal/x", "http://metadata/x", "http://instance-data/latest", "http://2852039166/", "http://0xA9FEA9FE/",
    "https://cdn.shop.test/p/1.jpg?v=2", "https://CDN.Shop.Test/p/1.jpg", "https://cdn.shop.test", "https://cdn.shop.test:8443/p.jpg",
    "https://u:pw@cdn.shop.test/p.jpg", "https://cdn.shop.test/a/../../x.jpg", "https://cdn.shop.test/p.jpg?next=/../x", "https://evil.test/p.jpg",
    "https://cdn.shop.test.evil.test/p.jpg", "file:///etc/passwd", "C:\\images\\a.png", "images/%2e%2e/a.png", "s3://shop/cat/a b [1]*?.jpg",
]


def test_column_screen_equals_the_per_row_rules():
    """The vectorised screen (clears plain rows, leaves the rest to the per-row rules) gives exactly
    the per-row answers, for each manifest location, scheme list and prefix list."""
    raw = pa.array(SCREEN_CASES * 3)
    mixed = 0
    for manifest in ["/data/cat/manifest.parquet", "s3://shop/cat/manifest.parquet", "/data/../cat/m.csv"]:
        base = manifest.rsplit("/", 1)[0]
        resolved = resolve_column(raw, base)
        assert resolved.to_pylist() == [_resolve_uri(u, base) for u in raw.to_pylist()]
        for schemes, prefixes in [(None, None), (["s3", "file"], None), (None, ["s3://shop/cat/", "https://cdn.shop.test/"]),
                                  (["https"], ["https://cdn.shop.test/p/../"]), (None, ["/data/cat"])]:
            expected = refusals(raw.to_pylist(), resolved.to_pylist(), manifest, schemes, prefixes)
            got = refusals_column(raw, resolved, manifest, schemes, prefixes)
            assert (got.to_pylist() if got is not None else [None] * len(raw)) == expected, (manifest, schemes, prefixes)
            mixed += any(expected) and not all(expected)
    assert mixed >= 12  # most combinations have rows of both kinds


def hostile_manifest(local_catalog, where: Path, extra: dict[str, str]) -> tuple[dict, int]:
    good = pq.read_table(local_catalog["cfg"]["data"]["manifest"]).slice(0, 16)
    base = str(Path(local_catalog["cfg"]["data"]["manifest"]).parent)
    absolute = [u if u.startswith("/") else str(Path(base) / u) for u in good.column("uri").to_pylist()]
    good = good.set_column(good.column_names.index("uri"), "uri", pa.array(absolute))
    rows = {c: good.column(c).to_pylist() for c in ["image_id", "uri", "label"]}
    for i, uri in extra.items():
        rows["image_id"].append(i)
        rows["uri"].append(uri)
        rows["label"].append(rows["label"][0])
    return rows, good.num_rows


def test_backfill_refuses_hostile_rows_and_runs_the_rest(local_catalog, random_checkpoint, tmp_path, s3_endpoint):
    secret = tmp_path / "not-an-image-for-you.png"
    secret.write_bytes(b"private")
    hostile = {
        "escape": "../" * 12 + str(secret).lstrip("/"),
        "ftp": "ftp://files.test/x.png",
        "metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/worker-role",
        "local-from-s3": str(secret),
        "other-bucket": f"s3://{BUCKET}-other/x.png",
    }
    rows, n_good = hostile_manifest(local_catalog, tmp_path, hostile)
    # The manifest and its good images in the S3 endpoint: local paths are then refused too.
    keys = []
    for i, u in enumerate(rows["uri"][:n_good]):
        key = f"s3://{BUCKET}/policy/images/{i}.png"
        st.write_bytes(key, Path(u).read_bytes())
        keys.append(key)
    rows["uri"][:n_good] = keys
    manifest = f"s3://{BUCKET}/policy/manifest.parquet"
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table(rows), buf)
    st.write_bytes(manifest, buf.getvalue().to_pybytes())
    cfg = make_cfg("experiment=smoke", "storage=s3", f"paths.root=s3://{BUCKET}/policy-run", f"data.manifest={manifest}", "data.split=null",
                   f"predictor.checkpoint={random_checkpoint}", f"+data.uri_prefixes=[s3://{BUCKET}/policy/]")
    out = backfill(cfg)
    c = out["counts"]
    assert (c["inputs"], c["predicted"], c["errors"]) == (n_good + len(hostile), n_good, len(hostile))
    assert c["errors_by_class"] == {"RefusedURI": len(hostile)}
    table = read_predictions(out["output"], cfg["storage"])
    errs = {r["image_id"]: r["error"] for r in table.filter(pc.is_valid(table.column("error"))).to_pylist()}
    assert set(errs) == set(hostile)
    assert "leaves the manifest's folder" in errs["escape"] and "scheme 'ftp'" in errs["ftp"]
    assert "instance-metadata" in errs["metadata"] and "local path in a manifest in object storage" in errs["local-from-s3"]
    assert "not under data.uri_prefixes" in errs["other-bucket"]
