"""The photo-like demo catalog (make_demo_photos) on the moto S3 endpoint and on local disk."""

from __future__ import annotations

import collections
import csv
import io
import re
import statistics

import pytest
from PIL import Image

from catalog_vision import storage as st
from catalog_vision.catalogs import load_fashion_mnist, make_catalog, make_demo_photos
from catalog_vision.catalogs.photos import TAXONOMY

from conftest import make_cfg

NAME = re.compile(r"^(SKU\d{6})-(\d+)\.jpg$")


def listing(prefix: str, storage) -> dict[str, bytes]:
    """Every object under ``prefix``: key relative to it -> bytes."""
    fs, root = st.resolve(prefix, storage)
    return {p[len(root.rstrip("/")) + 1 :]: fs.cat_file(p) for p in fs.find(root)}


def read_csv(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode())))


@pytest.fixture(scope="module")
def photos(photo_catalog):
    files = listing(photo_catalog["prefix"], photo_catalog["cfg"]["storage"])
    return {**photo_catalog, "files": files, "jpegs": {k: v for k, v in files.items() if k.endswith(".jpg")}}


def test_photos_are_rgb_jpegs_of_varied_size_and_aspect(photos):
    corrupt = {u[len(photos["prefix"]) + 1 :] for u in photos["summary"]["corrupt"]}
    assert len(corrupt) == 2 and corrupt <= set(photos["jpegs"])
    sizes = []
    for key, data in photos["jpegs"].items():
        im = Image.open(io.BytesIO(data))
        assert im.format == "JPEG" and im.mode == "RGB", key
        if key in corrupt:
            with pytest.raises(OSError):  # truncated: the header reads, the pixels do not
                im.load()
            continue
        im.load()
        assert 100 <= im.width <= 800 and 100 <= im.height <= 800, (key, im.size)
        sizes.append(im.size)
    assert len(photos["jpegs"]) == photos["summary"]["photos"]
    aspects = [w / h for w, h in sizes]
    assert min(aspects) < 0.8 and max(aspects) > 1.4, (min(aspects), max(aspects))
    assert all(0.6 - 0.01 <= a <= 1.8 + 0.01 for a in aspects)
    assert len(set(sizes)) > 0.9 * len(sizes)  # sizes drawn per photo, not a few presets
    assert 200 < statistics.median(w * h for w, h in sizes) ** 0.5 < 600


def test_products_have_several_photos_in_one_nested_class_folder(photos):
    by_sku = collections.defaultdict(list)
    depths = set()
    for key in photos["jpegs"]:
        folder, name = key.rsplit("/", 1)
        sku, _ = NAME.match(name).groups()
        by_sku[sku].append((folder, key))
        depths.add(folder.count("/") + 1)
    assert len(by_sku) == 40 and depths == {2, 3}
    assert all(2 <= len(v) <= 4 for v in by_sku.values())
    assert 2.5 <= statistics.mean(len(v) for v in by_sku.values()) <= 3.5
    valid = {path for _, path in TAXONOMY}
    for sku, shots in by_sku.items():
        assert len({folder for folder, _ in shots}) == 1 and shots[0][0] in valid, (sku, shots)
        good = [k for _, k in shots if photos["prefix"] + "/" + k not in photos["summary"]["corrupt"]]
        ims = [Image.open(io.BytesIO(photos["jpegs"][k])) for k in good]
        # The photos of one product differ in size and JPEG quality (its quantisation tables).
        assert len({im.size for im in ims}) == len(ims), sku
        assert len({str(im.quantization) for im in ims}) == len(ims), sku


def test_product_table_matches_the_files(photos, fmnist):
    prefix, files = photos["prefix"], photos["files"]
    rows = read_csv(files["products.csv"])
    assert list(rows[0]) == ["sku", "image_url", "category_path", "title"]
    assert sorted(r["image_url"] for r in rows) == sorted(f"{prefix}/{k}" for k in photos["jpegs"])
    names = dict(TAXONOMY[i][::-1] for i in range(len(TAXONOMY)))  # folder path -> class name
    for r in rows:
        key = r["image_url"][len(prefix) + 1 :]
        assert key.startswith(r["category_path"] + "/" + r["sku"] + "-")
        assert r["title"].lower().endswith(names[r["category_path"]].lower()), r
    # The source splits sit in a separate file, and name the very Fashion-MNIST item of each SKU.
    sources = read_csv(files["_source_splits.csv"])
    assert {s["sku"] for s in sources} == {r["sku"] for r in rows}
    assert "source_split" not in rows[0] and {s["source_split"] for s in sources} <= {"train", "test"}
    labels = {split: y for split, (_, y) in load_fashion_mnist(str(fmnist)).items()}
    category = {r["sku"]: r["category_path"] for r in rows}
    for s in sources:
        label = int(labels[s["source_split"]][int(s["source_index"])])
        assert TAXONOMY[label] == (s["label"], category[s["sku"]]), s


def test_export_clutter_is_there(photos):
    others = sorted(k for k in photos["files"] if not k.endswith(".jpg") and k not in ("products.csv", "_source_splits.csv"))
    assert others == photos["summary"]["other_files"]
    assert "README.txt" in others and ".DS_Store" in others
    assert sum(k.endswith("/.DS_Store") for k in others) >= 1 and sum(k.endswith("/Thumbs.db") for k in others) >= 1
    heic = [k for k in others if k.endswith(".heic")]
    assert len(heic) == 1 and photos["files"][heic[0]][4:12] == b"ftypheic"
    assert NAME.match(heic[0].rsplit("/", 1)[1].replace(".heic", ".jpg"))  # named like the product's photos


def test_importer_counts_the_clutter_and_keeps_products_together(photos, tmp_path):
    """source=folders reads the catalog as a team's would be read: every JPEG a row, the rest counted."""
    cfg = make_cfg("storage=s3", "data=photos", "source=folders", f"source.prefix={photos['prefix']}", 'source.group_pattern="^(.+)-[0-9]+$"', f"paths.root={tmp_path}")
    summary = make_catalog(cfg)
    assert summary["images"] == len(photos["jpegs"])
    skipped = summary["read"]["skipped_by_extension"]
    assert skipped[".heic"] == 1 and skipped[".csv"] == 2 and skipped[".txt"] == 1
    assert skipped[".DS_Store"] >= 2 and skipped[".db"] >= 1  # Thumbs.db
    assert summary["groups"]["groups"] == 40 and summary["groups"]["spanning_splits"] == 0


def test_same_seed_same_bytes_local_or_s3(photos, tmp_path, ray_local, fmnist):
    """Rendered again to local disk, in different Ray task chunks: byte-identical to the S3 copy."""
    out = tmp_path / "again"
    cfg = make_cfg(f"demo_photos.out={out}", "demo_photos.products=40", "demo_photos.products_per_task=7", f"demo_photos.source={fmnist}", config_name="demo_photos")
    make_demo_photos(cfg)
    local = listing(str(out), {})
    assert set(local) == set(photos["files"])
    prefix = photos["prefix"]
    for key, data in photos["files"].items():
        if key != "products.csv":  # it holds full URIs, which differ between the two places
            assert local[key] == data, key
    assert [r["image_url"][len(prefix) :] for r in read_csv(photos["files"]["products.csv"])] == [r["image_url"][len(str(out)) :] for r in read_csv(local["products.csv"])]


def test_another_seed_other_photos(tmp_path, ray_local, fmnist):
    outs = []
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        make_demo_photos(make_cfg(f"demo_photos.out={out}", "demo_photos.products=3", f"demo_photos.seed={seed}", "demo_photos.corrupt=0", "demo_photos.extras=false", f"demo_photos.source={fmnist}", config_name="demo_photos"))
        outs.append({k: v for k, v in listing(str(out), {}).items() if k.endswith(".jpg")})
    assert outs[0] and outs[1] and not set(outs[0].values()) & set(outs[1].values())


def test_rewrites_only_with_overwrite_and_only_a_demo_catalog(tmp_path, ray_local, fmnist):
    out = tmp_path / "demo"
    args = [f"demo_photos.out={out}", f"demo_photos.source={fmnist}", "demo_photos.corrupt=0"]
    make_demo_photos(make_cfg(*args, "demo_photos.products=4", config_name="demo_photos"))
    with pytest.raises(FileExistsError, match="demo_photos.overwrite=true"):
        make_demo_photos(make_cfg(*args, "demo_photos.products=2", config_name="demo_photos"))
    summary = make_demo_photos(make_cfg(*args, "demo_photos.products=2", "demo_photos.overwrite=true", config_name="demo_photos"))
    # The smaller catalog leaves no photo of the bigger one behind.
    assert sum(p.suffix == ".jpg" for p in out.rglob("*")) == summary["photos"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="other files"):
        make_demo_photos(make_cfg(f"demo_photos.out={other}", f"demo_photos.source={fmnist}", "demo_photos.overwrite=true", config_name="demo_photos"))
    assert (other / "holiday.jpg").read_bytes() == b"not ours"


def test_a_run_that_died_is_replaced_with_overwrite(tmp_path, ray_local, fmnist):
    """A run that died leaves the marker (written first) and photos, but no products.csv (written last)."""
    out = tmp_path / "died"
    args = [f"demo_photos.out={out}", f"demo_photos.source={fmnist}", "demo_photos.products=3"]
    make_demo_photos(make_cfg(*args, config_name="demo_photos"))
    (out / "products.csv").unlink()
    with pytest.raises(FileExistsError, match="a run that died"):
        make_demo_photos(make_cfg(*args, config_name="demo_photos"))
    make_demo_photos(make_cfg(*args, "demo_photos.overwrite=true", config_name="demo_photos"))
    assert (out / "products.csv").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("demo_photos.size=[900,50]", r"demo_photos.size=\[900, 50\]; give \[min, max\]"),
        ("demo_photos.size=[100,120]", "cannot fit"),
        ("demo_photos.photos_per_product=[3,2]", "photos_per_product"),
        ("demo_photos.products=0", "products=0"),
        ("demo_photos.products=80000", "Fashion-MNIST has 70000 items"),
    ],
)
def test_bad_config_names_the_valid_choices(override, message, tmp_path, fmnist):
    cfg = make_cfg(f"demo_photos.out={tmp_path / 'x'}", f"demo_photos.source={fmnist}", override, config_name="demo_photos")
    with pytest.raises(ValueError, match=message):
        make_demo_photos(cfg)
