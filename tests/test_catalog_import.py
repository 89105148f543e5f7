"""Catalog import: class folders nested at any depth (local and a real S3 endpoint), product tables,
splits without leakage that stay put as the catalog grows, classes from the data, and unknown
classes in a later evaluation."""

from __future__ import annotations

import io
import math
import os
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from catalog_vision import storage as st
from catalog_vision.catalogs import make_catalog, read_folders, read_product_table, read_table_file
from catalog_vision.catalogs.splits import assign_splits, check_fractions
from catalog_vision.ingest.catalog import catalog_table
from catalog_vision.ingest.labels import resolve_classes
from catalog_vision.backfill.tables import catalog_id
from conftest import BUCKET, make_cfg

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def synthetic_catalog(classes: int, groups_per_class: int, seed: int = 0, start: int = 0) -> pa.Table:
    """``image_id, label, group``: each group (product) has 1-4 images of one class."""
    rng = np.random.default_rng(seed)
    ids, labels, groups = [], [], []
    for c in range(classes):
        for g in range(start, start + groups_per_class):
            for k in range(int(rng.integers(1, 5))):
                ids.append(f"c{c}/p{g:06d}-{k}.jpg")
                labels.append(f"class{c}")
                groups.append(f"c{c}/p{g:06d}")
    return pa.table({"image_id": ids, "uri": ids, "label": labels, "group": groups})


def group_splits(table: pa.Table) -> dict[str, set]:
    out = defaultdict(set)
    for g, s in zip(table.column("group").to_pylist(), table.column("split").to_pylist()):
        out[g].add(s)
    return out


def test_per_class_fractions_within_binomial_tolerance_and_no_group_spans_splits():
    table, report = assign_splits(synthetic_catalog(classes=6, groups_per_class=1500), FRACTIONS, seed=0)
    assert report["assigned_by_hash"] == table.num_rows and report["groups_spanning_splits_in_input"] == 0
    where = group_splits(table)
    assert all(len(s) == 1 for s in where.values())  # no group in two splits
    # Each group's split is an independent draw with the configured probabilities, so a class's share
    # of groups in a split is binomial: sd = sqrt(f(1-f)/n). Tolerance 4 sd: a correct hash passes
    # with probability > 0.9999 per check, a biased or class-blind-broken assignment does not.
    by_class = defaultdict(Counter)
    for g, s in where.items():
        by_class[g.split("/")[0]][next(iter(s))] += 1
    for cls, counts in by_class.items():
        n = sum(counts.values())
        for split, f in FRACTIONS.items():
            tol = 4 * math.sqrt(f * (1 - f) / n)
            assert abs(counts[split] / n - f) <= tol, (cls, split, counts[split] / n, f, tol)


def test_a_grown_catalog_keeps_every_old_split():
    old, _ = assign_splits(synthetic_catalog(classes=3, groups_per_class=400), FRACTIONS, seed=7)
    # Grow it: new products, and new photos of old products (same group, new image ids).
    new_products = synthetic_catalog(classes=3, groups_per_class=200, seed=1, start=400)
    extra_photos = old.select(["image_id", "uri", "label", "group"]).slice(0, 300)
    extra_photos = extra_photos.set_column(0, "image_id", pa.array([i.replace(".jpg", "-new.jpg") for i in extra_photos.column("image_id").to_pylist()]))
    grown = pa.concat_tables([old.select(["image_id", "uri", "label", "group"]), new_products, extra_photos])
    grown, _ = assign_splits(grown, FRACTIONS, seed=7)
    before = dict(zip(old.column("image_id").to_pylist(), old.column("split").to_pylist()))
    after = dict(zip(grown.column("image_id").to_pylist(), grown.column("split").to_pylist()))
    assert all(after[i] == s for i, s in before.items())
    assert all(len(s) == 1 for s in group_splits(grown).values())
    # A different seed is a different (reshuffled) assignment.
    other, _ = assign_splits(old.select(["image_id", "uri", "label", "group"]), FRACTIONS, seed=8)
    assert other.column("split").to_pylist() != old.column("split").to_pylist()


def test_existing_splits_are_respected_and_pull_their_group():
    table = pa.table(
        {
            "image_id": ["a1", "a2", "b1", "b2", "c1", "c2"],
            "label": ["x"] * 6,
            "group": ["A", "A", "B", "B", "C", "C"],
            "split": ["test", None, "val", "train", None, ""],
        }
    )
    out, report = assign_splits(table, FRACTIONS)
    s = dict(zip(out.column("image_id").to_pylist(), out.column("split").to_pylist()))
    assert s["a1"] == "test" and s["a2"] == "test"  # joined its group's given split
    assert s["b1"] == "val" and s["b2"] == "train"  # given splits are kept, even when they disagree...
    assert report["groups_spanning_splits_in_input"] == 1 and report["spanning_examples"] == {"B": ["train", "val"]}  # ...and reported
    assert s["c1"] == s["c2"] and report["assigned_by_hash"] == 2 and report["joined_their_group"] == 1


def test_bad_fractions_say_what_is_wanted():
    with pytest.raises(ValueError, match="summing to 1"):
        check_fractions({"train": 0.8, "val": 0.3})
    with pytest.raises(ValueError, match="val"):
        check_fractions({"train": 0.9, "test": 0.1}, ["train", "val"])


def write_tree(write, root: str) -> dict[str, str]:
    """Nested class folders at depths 1-3, two photos per product, plus files an export carries."""
    rng = np.random.default_rng(0)
    tree = {"apparel/tops/shirt": 6, "apparel/tops/t-shirt": 6, "apparel/dress": 5, "bag": 4, "footwear/shoes/sneaker": 2}
    labels = {}
    for folder, products in tree.items():
        for p in range(products):
            for k in range(2):
                buf = io.BytesIO()
                Image.fromarray((rng.random((24, 36, 3)) * 255).astype(np.uint8)).save(buf, format="JPEG")
                key = f"{folder}/{folder.split('/')[-1]}{p:03d}-{k}.jpg"
                write(f"{root}/{key}", buf.getvalue())
                labels[key] = folder
    for extra in ("README.txt", "apparel/.DS_Store", "bag/Thumbs.db", "bag/IMG_0001.heic"):
        write(f"{root}/{extra}", b"not an image")
    write(f"{root}/loose.png", encode_png())
    return labels


def encode_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def s3_tree(s3_endpoint):
    root = f"s3://{BUCKET}/import-test/photos"
    storage = {"endpoint_url": s3_endpoint}
    labels = write_tree(lambda u, b: st.write_bytes(u, b, storage), root)
    return root, storage, labels


@pytest.mark.parametrize("level,expected", [("leaf", lambda f: f.split("/")[-1]), ("top", lambda f: f.split("/")[0]), ("path", lambda f: f), (2, lambda f: "/".join(f.split("/")[:2]))])
def test_nested_class_folders_on_s3(s3_tree, level, expected):
    root, storage, labels = s3_tree
    table, report = read_folders(root, storage, label_level=level, group_pattern="^(.+)-[0-9]+$")
    got = dict(zip(table.column("image_id").to_pylist(), table.column("label").to_pylist()))
    assert {k: v for k, v in got.items() if k != "loose.png"} == {k: expected(f) for k, f in labels.items()}
    assert got["loose.png"] is None and report["unlabeled"] == 1
    assert report["skipped_by_extension"] == {".DS_Store": 1, ".db": 1, ".heic": 1, ".txt": 1}
    assert report["files"] == len(labels) + 5 and report["images"] == len(labels) + 1
    assert table.column("uri")[0].as_py().startswith(root + "/")
    groups = Counter(g for g in table.column("group").to_pylist() if g)
    assert len(groups) == len(labels) // 2 and set(groups.values()) == {2} and "shirt000" in groups


def test_a_product_filed_under_two_classes_is_one_group_in_one_split(tmp_path):
    for key in ("apparel/dress/SKU7-1.jpg", "accessories/bag/SKU7-2.jpg", "apparel/dress/SKU8-1.jpg"):
        os.makedirs(tmp_path / os.path.dirname(key), exist_ok=True)
        (tmp_path / key).write_bytes(encode_png())
    table, _ = read_folders(str(tmp_path), group_pattern="^(.+)-[0-9]+$")
    by_id = dict(zip(table.column("image_id").to_pylist(), table.column("group").to_pylist()))
    assert by_id == {"accessories/bag/SKU7-2.jpg": "SKU7", "apparel/dress/SKU7-1.jpg": "SKU7", "apparel/dress/SKU8-1.jpg": "SKU8"}
    split, _ = assign_splits(table, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=3)
    s = dict(zip(table.column("image_id").to_pylist(), split.column("split").to_pylist()))
    assert s["accessories/bag/SKU7-2.jpg"] == s["apparel/dress/SKU7-1.jpg"]


def test_bad_label_level_and_pattern_name_the_choices(tmp_path):
    write_tree(lambda u, b: (os.makedirs(os.path.dirname(u), exist_ok=True), open(u, "wb").write(b)), str(tmp_path))
    with pytest.raises(ValueError, match="leaf"):
        read_folders(str(tmp_path), label_level="bottom")
    with pytest.raises(ValueError, match="capture group"):
        read_folders(str(tmp_path), group_pattern="-[0-9]+$")


def test_import_folders_writes_manifest_and_summary(s3_tree, tmp_path):
    root, storage, labels = s3_tree
    cfg = make_cfg("storage=s3", "source=folders", f"source.prefix={root}", "source.group_pattern='^(.+)-[0-9]+$'", f"paths.root=s3://{BUCKET}/import-test/cv", "data.classes=auto", "data.min_images_per_class=5", "data.small_classes=drop")
    summary = make_catalog(cfg)
    manifest = read_table_file(cfg["data"]["manifest"], cfg["storage"])
    assert manifest.column_names == ["image_id", "uri", "label", "group", "split"]
    # sneaker has 4 images (< 5): dropped and listed; the unlabeled top-level file stays (for backfills).
    assert "sneaker" not in set(manifest.column("label").to_pylist())
    assert summary["small_classes"] == {"action": "drop", "classes": {"sneaker": 4}}
    assert manifest.num_rows == len(labels) - 4 + 1 and summary["unlabeled"] == 1
    assert summary["groups"]["spanning_splits"] == 0 and summary["read"]["skipped_by_extension"][".heic"] == 1
    on_disk = st.read_json(summary["summary"], cfg["storage"])
    assert on_disk["per_class"]["shirt"]["images"] == 12 and sum(on_disk["splits"].values()) == manifest.num_rows
    # Classes from the data, sorted; training reads the same manifest.
    assert resolve_classes(cfg["data"], cfg["storage"]) == ["bag", "dress", "shirt", "t-shirt"]
    train = catalog_table(cfg["data"], cfg["storage"], split="train")
    val = catalog_table(cfg["data"], cfg["storage"], split="val")
    assert train.num_rows + val.num_rows + catalog_table(cfg["data"], cfg["storage"], split="test").num_rows == manifest.num_rows
    assert not set(train.column("image_id").to_pylist()) & set(val.column("image_id").to_pylist())


def test_listed_prefix_is_split_not_trained_and_validated_on_the_same_images(tmp_path):
    labels = write_tree(lambda u, b: (os.makedirs(os.path.dirname(u), exist_ok=True), open(u, "wb").write(b)), str(tmp_path / "photos"))
    cfg = make_cfg(f"data.images_prefix={tmp_path / 'photos'}", "data.layout=class_folders", "data.classes=auto", "data.splits={train: 0.5, val: 0.25, test: 0.25}")
    with pytest.raises(ValueError, match="top level"):
        catalog_table(cfg["data"], cfg["storage"], split="train")  # loose.png: not a class-folder tree
    os.remove(tmp_path / "photos" / "loose.png")
    parts = {s: set(catalog_table(cfg["data"], cfg["storage"], split=s).column("image_id").to_pylist()) for s in ("train", "val", "test")}
    assert sum(map(len, parts.values())) == len(labels) and all(parts.values())
    assert not (parts["train"] & parts["val"]) and not (parts["train"] & parts["test"]) and not (parts["val"] & parts["test"])
    assert resolve_classes(cfg["data"], cfg["storage"]) == ["bag", "dress", "shirt", "sneaker", "t-shirt"]  # leaf folders at any depth
    # A backfill of the whole prefix (data.split=null) still sees every image.
    assert catalog_table({**cfg["data"], "split": None}, cfg["storage"]).num_rows == len(labels)


def test_product_table_csv_with_column_mapping(tmp_path):
    csv = (
        "sku,image_key,image_url,category,tags,set\n"
        "00042,00042-a,images/00042-a.jpg,shirt,red|cotton,\n"
        "00042,00042-b,images/00042-b.jpg,shirt,red,\n"
        "00107,00107-a,https://cdn.example.com/p/00107-a.jpg?v=3,dress,,test\n"
        "00107,00107-b,s3://bucket/p/00107-b.jpg,dress,blue,\n"
    )
    (tmp_path / "export.csv").write_text(csv)
    columns = {"id": "image_key", "uri": "image_url", "label": "category", "labels": "tags", "group": "sku", "split": "set"}
    table, report = read_product_table(str(tmp_path / "export.csv"), columns=columns)
    assert table.column("image_id").to_pylist() == ["00042-a", "00042-b", "00107-a", "00107-b"]  # zero padding survives
    assert table.column("group").to_pylist() == ["00042", "00042", "00107", "00107"]
    assert table.column("uri").to_pylist() == [str(tmp_path / "images/00042-a.jpg"), str(tmp_path / "images/00042-b.jpg"), "https://cdn.example.com/p/00107-a.jpg?v=3", "s3://bucket/p/00107-b.jpg"]
    assert table.column("labels").to_pylist() == [["red", "cotton"], ["red"], None, ["blue"]]
    overrides = [f"source.columns.{k}={v}" for k, v in columns.items() if k != "labels"]  # the way a user types them
    cfg = make_cfg("source=table", f"source.path={tmp_path / 'export.csv'}", *overrides, f"paths.root={tmp_path}")
    summary = make_catalog(cfg)
    manifest = read_table_file(cfg["data"]["manifest"])
    split = dict(zip(manifest.column("image_id").to_pylist(), manifest.column("split").to_pylist()))
    assert split["00107-a"] == "test" and split["00107-b"] == "test"  # the given split pulls its product along
    assert split["00042-a"] == split["00042-b"] and summary["groups"]["spanning_splits"] == 0
    with pytest.raises(ValueError, match="image_url"):
        read_product_table(str(tmp_path / "export.csv"), columns={**columns, "uri": "url"})  # names the columns it has


def test_unknown_class_in_a_later_catalog_is_reported_not_an_error(tmp_path, capsys):
    """A model trained on 3 classes evaluated on a catalog that has grown a 4th."""
    import torch

    from catalog_vision import checkpoint as ckpt
    from catalog_vision.evaluate import evaluate
    from catalog_vision.infer.predictions import predictions_schema
    from catalog_vision.models import build_model
    from catalog_vision.backfill.sink import commit_batch

    classes = ["bag", "dress", "shirt"]
    cfg = make_cfg("experiment=smoke", f"paths.root={tmp_path}")
    torch.manual_seed(0)
    model = build_model(cfg["model"], len(classes), cfg["data"]["preprocessing"])
    ckpt_dir = str(tmp_path / "model")
    ckpt.save(ckpt_dir, model, {"model": cfg["model"], "classes": classes, "preprocessing": cfg["data"]["preprocessing"], "task": "multiclass", "embedding_dim": model.num_features, "epoch": 0, "metrics": {}})
    model_id = ckpt.model_id_of(ckpt.read_meta(ckpt_dir))
    truth = ["bag", "dress", "shirt", "shirt", "hat", "hat", "scarf"]
    predicted = ["bag", "dress", "shirt", "dress", "bag", "shirt", "dress"]
    ids = [f"img-{i}" for i in range(len(truth))]
    pq.write_table(pa.table({"image_id": ids, "uri": [f"{i}.png" for i in ids], "label": truth, "split": ["test"] * len(ids)}), tmp_path / "manifest.parquet")
    rows = []
    for i, p in zip(ids, predicted):
        others = [c for c in classes if c != p]
        rows.append({"image_id": i, "uri": f"{i}.png", "label": p, "score": 0.8, "topk_labels": [p, *others], "topk_scores": [0.8, 0.15, 0.05], "labels": [p], "embedding": [0.0] * model.num_features, "low_confidence": False, "model_id": model_id, "run_id": "run-1", "error": None})
    commit_batch(pa.Table.from_pylist(rows, schema=predictions_schema(model.num_features)), str(tmp_path / "output" / "predictions" / model_id / catalog_id({"manifest": str(tmp_path / "manifest.parquet")}) / "run-1"))
    cfg = make_cfg("experiment=smoke", f"paths.root={tmp_path}", f"data.manifest={tmp_path / 'manifest.parquet'}", f"evaluate.checkpoint={ckpt_dir}", "evaluate.source=predictions")
    m = evaluate(cfg, command="python jobs/evaluate.py evaluate.source=predictions")
    assert m["counts"]["unknown_class"] == 3 and m["counts"]["unknown_classes"] == {"hat": 2, "scarf": 1}
    assert m["counts"]["evaluated"] == 4 and abs(m["metrics"]["top1"] - 0.75) < 1e-9  # 3 of the 4 known-class images
    card = (tmp_path / "output" / "report" / model_id / "test-predictions" / "model_card.md").read_text()
    assert "3 images of classes the model does not know" in card and "hat 2" in card
    assert '"unknown_class": 3' in capsys.readouterr().out


def test_reimport_after_the_catalog_grew_keeps_old_splits(tmp_path):
    def write(u, b):
        os.makedirs(os.path.dirname(u), exist_ok=True)
        open(u, "wb").write(b)

    write_tree(write, str(tmp_path / "photos"))
    cfg = make_cfg("source=folders", f"source.prefix={tmp_path / 'photos'}", "source.group_pattern='^(.+)-[0-9]+$'", f"paths.root={tmp_path}", "data.splits={train: 0.5, val: 0.25, test: 0.25}")
    make_catalog(cfg)
    before = read_table_file(cfg["data"]["manifest"])
    # New products in a new class, and a third photo of every old shirt.
    for p in range(6):
        write(str(tmp_path / "photos" / "apparel" / "tops" / "shirt" / f"shirt{p:03d}-2.jpg"), encode_png())
        write(str(tmp_path / "photos" / "accessories" / "hat" / f"hat{p:03d}-0.jpg"), encode_png())
    summary = make_catalog(cfg)
    after = read_table_file(cfg["data"]["manifest"])
    old = dict(zip(before.column("image_id").to_pylist(), before.column("split").to_pylist()))
    new = dict(zip(after.column("image_id").to_pylist(), after.column("split").to_pylist()))
    assert after.num_rows == before.num_rows + 12 and all(new[i] == s for i, s in old.items())
    assert all(new[f"apparel/tops/shirt/shirt{p:03d}-2.jpg"] == old[f"apparel/tops/shirt/shirt{p:03d}-0.jpg"] for p in range(6))
    assert summary["groups"]["spanning_splits"] == 0 and summary["per_class"]["hat"]["images"] == 6
