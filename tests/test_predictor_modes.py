"""Predictor settings beyond the CPU default: bfloat16, JPEG decode on the predictor's device,
decode in tasks vs actors, and the GPU config on a cluster without GPUs."""

import io
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import pytest
from PIL import Image

from catalog_vision.backfill.run import backfill
from catalog_vision.backfill.actors import check_predictor, effective_predictor
from catalog_vision.ingest.dataset import encoded_budget, fetch_and_decode
from catalog_vision.infer.predictor import Predictor
from conftest import make_cfg


def jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def test_bfloat16_agrees_with_float32(random_checkpoint, local_catalog):
    """bf16 autocast changes scores by a little and labels almost never (bench/precision.py measures
    it on a trained model: 99.95% agreement on 10,000 test images)."""
    table = pq.read_table(local_catalog["cfg"]["data"]["manifest"])
    base = Path(local_catalog["cfg"]["data"]["manifest"]).parent
    f32 = Predictor(random_checkpoint, dtype="float32")
    b16 = Predictor(random_checkpoint, dtype="bfloat16")
    from catalog_vision.ingest.images import Preprocessing, decode

    spec = Preprocessing.from_dict(f32.loaded.preprocessing)
    pixels = np.stack([decode((base / u).read_bytes(), spec) for u in table.column("uri").to_pylist()[:256]])
    p32, e32 = f32.predict_pixels(pixels)
    p16, e16 = b16.predict_pixels(pixels)
    assert np.abs(p32 - p16).max() < 0.02
    assert np.min(np.sum(e32 * e16, axis=1)) > 0.999  # embeddings: cosine similarity
    # Random weights make near-ties common; a trained model agrees far more often.
    assert np.mean(p32.argmax(1) == p16.argmax(1)) > 0.9


def catalog_batch(files: dict[str, bytes], folder) -> dict[str, np.ndarray]:
    """Write ``files`` (name -> bytes) into ``folder``; the catalog rows a predictor's batch carries."""
    uris = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        uris.append(str(folder / name))
    return {"image_id": np.array(list(files), dtype=object), "uri": np.array(uris, dtype=object), "label": np.array([None] * len(files), dtype=object)}


@pytest.mark.parametrize("resize", ["nearest", "bilinear", "bicubic"])
def test_jpeg_decode_on_the_predictor_device_matches_cpu_decode(random_checkpoint, tmp_path, resize):
    """jpeg_decode_on_device runs torchvision.io.decode_jpeg on the predictor's device (nvJPEG on a
    GPU; libjpeg here, the same code path). It must give the CPU decoder's results for the
    checkpoint's preprocessing.resize, also for JPEGs at least twice the target (which the CPU decoder
    drafts at 1/2, 1/4 or 1/8 scale): same labels, pixels within JPEG rounding, the same error rows;
    CMYK goes to the CPU decoder."""
    from catalog_vision import checkpoint as ckpt

    loaded = ckpt.load(random_checkpoint)
    checkpoint = ckpt.save(str(tmp_path / "model"), loaded.model, {**loaded.meta, "preprocessing": {**loaded.preprocessing, "resize": resize}})
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(np.kron(rng.integers(0, 255, (7, 7, 3)), np.ones((4, 4, 1))).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°
    big = jpeg(rgb.resize((200, 200)))
    files = {
        "rgb": jpeg(rgb),
        "gray": jpeg(rgb.convert("L")),
        "resized": jpeg(rgb.resize((56, 40))),
        "exif": jpeg(rgb.resize((40, 28)), exif=exif.tobytes()),
        "big": big,  # 200x200 for 28x28: drafted at 1/4 on the CPU
        "big-exif": jpeg(rgb.resize((120, 90)), exif=exif.tobytes()),  # 1/2, then rotated
        "noise": jpeg(Image.fromarray(rng.integers(0, 255, (123, 250, 3)).astype(np.uint8))),  # 1/4, partial blocks at the edges
        "cmyk": jpeg(rgb.convert("CMYK")),
        "truncated": big[: len(big) // 2],
        "png": (lambda b: (rgb.save(b, format="PNG"), b.getvalue())[1])(io.BytesIO()),
    }
    batch = catalog_batch(files, tmp_path)
    predictor = Predictor(checkpoint, device="cpu", dtype="float32")
    spec = predictor.loaded.preprocessing
    assert spec["resize"] == resize

    on_cpu = fetch_and_decode(batch, spec)
    deferred = fetch_and_decode(batch, spec, defer_jpeg=True)
    sent = {n for n, b in zip(files, deferred["encoded"]) if len(b)}
    assert sent == set(files) - {"cmyk", "png"}  # CMYK and PNG decode on CPU
    pixels, errors = predictor.decode_jpegs([files[n] for n in sorted(sent)])
    for n, px, err in zip(sorted(sent), pixels.numpy(), errors):
        ref = on_cpu["pixels"][list(files).index(n)]
        if n == "truncated":
            assert err.startswith("TruncatedImage")
        else:
            delta = np.abs(px.astype(int) - ref.astype(int))
            # nearest: where a sample falls exactly between two source rows (here 2 of 28), PIL and
            # torch take different neighbours; elsewhere the decoders differ by JPEG rounding only.
            ties = 2 / 28 if resize == "nearest" else 0
            assert err is None and delta.mean() <= 1 + 28 * ties and (delta > 12).mean() <= ties, (n, delta.mean(), delta.max())
    a = predictor(on_cpu).to_pylist()
    b = predictor(deferred).to_pylist()
    assert [r["error"] is None for r in a] == [r["error"] is None for r in b]
    assert [r["error"].split(":")[0] for r in b if r["error"]] == ["TruncatedImage"]
    # Scores within a hair; labels agree wherever the top-2 margin exceeds that (this random
    # model's scores are all near 0.1, so near-ties are common).
    change = max(abs(x - y) for r, q in zip(a, b) if r["error"] is None for x, y in zip(r["topk_scores"], q["topk_scores"]))
    assert change < 1e-3
    assert [r["label"] for r, q in zip(a, b) if r["error"] is None and r["topk_scores"][0] - r["topk_scores"][1] > 2 * change] == [
        q["label"] for r, q in zip(a, b) if r["error"] is None and r["topk_scores"][0] - r["topk_scores"][1] > 2 * change]


def test_deferred_jpegs_ship_within_a_byte_budget_and_without_pixel_arrays(random_checkpoint, tmp_path):
    """With jpeg_decode_on_device a decode block passes on at most its byte budget of JPEGs (the
    rest of the block decodes on CPU), and a deferred row carries its JPEG bytes only, no pixel array."""
    rng = np.random.default_rng(1)
    files = {f"noise{i}": jpeg(Image.fromarray(rng.integers(0, 255, (384, 384, 3), dtype=np.uint8))) for i in range(8)}  # noise: big JPEGs
    batch = catalog_batch(files, tmp_path)
    predictor = Predictor(random_checkpoint, device="cpu", dtype="float32")
    spec = predictor.loaded.preprocessing
    shape = tuple(predictor.spec.shape)
    sizes = [len(b) for b in files.values()]
    budget = sum(sizes[:3]) + sizes[3] // 2  # room for three of them

    on_cpu = fetch_and_decode(batch, spec)
    deferred = fetch_and_decode(batch, spec, defer_jpeg=True, encoded_budget=budget)
    assert "pixels" not in deferred
    sent = [len(b) for b in deferred["encoded"]]
    assert sent == sizes[:3] + [0] * 5 and sum(sent) <= budget
    assert [len(b) for b in deferred["decoded"]] == [0] * 3 + [int(np.prod(shape))] * 5
    for i in range(3, 8):  # decoded on CPU: the CPU path's pixels, as bytes
        np.testing.assert_array_equal(np.frombuffer(deferred["decoded"][i], np.uint8).reshape(shape), on_cpu["pixels"][i])
    shipped = sum(sent) + sum(len(b) for b in deferred["decoded"])
    print(f"\n8 JPEGs of {sum(sizes)} bytes, budget {budget}: {shipped} bytes shipped (pixels column before: {on_cpu['pixels'].nbytes} + all JPEGs)")
    a, b = predictor(on_cpu).to_pylist(), predictor(deferred).to_pylist()
    assert all(r["error"] is None for r in a + b)
    assert [r["label"] for r in a[3:]] == [r["label"] for r in b[3:]]
    np.testing.assert_allclose([r["score"] for r in a[3:]], [r["score"] for r in b[3:]], atol=1e-5)
    with pytest.raises(ValueError, match="data.encoded_block_mb=0"):
        encoded_budget({"encoded_block_mb": 0})
    assert encoded_budget(make_cfg("experiment=smoke")["data"]) == 32 * 2**20


def test_deferred_decode_through_ray_data_gives_the_cpu_rows(ray_local, local_catalog, random_checkpoint, tmp_path):
    """A backfill of JPEGs with decode in tasks and jpeg_decode_on_device, with a budget small
    enough that each block defers some JPEGs and decodes the rest on CPU: the CPU path's rows."""
    manifest = pq.read_table(local_catalog["cfg"]["data"]["manifest"]).slice(0, 48)
    base = Path(local_catalog["cfg"]["data"]["manifest"]).parent
    (tmp_path / "jpg").mkdir()
    uris = []
    for i, u in enumerate(manifest.column("uri").to_pylist()):
        path = tmp_path / "jpg" / f"{i}.jpg"
        path.write_bytes(jpeg(Image.open(u if u.startswith("/") else base / u)))
        uris.append(str(path))
    manifest = manifest.set_column(manifest.column_names.index("uri"), "uri", pa.array(uris))
    pq.write_table(manifest, tmp_path / "manifest.parquet")
    common = ["experiment=smoke", f"data.manifest={tmp_path / 'manifest.parquet'}", "data.split=null", f"predictor.checkpoint={random_checkpoint}",
              "predictor.decode_in=tasks", "data.decode_batch_size=16"]
    budget_mb = 4 * np.mean([Path(u).stat().st_size for u in uris]) / 2**20  # about 4 of a block's 16 JPEGs deferred
    deferred = backfill(make_cfg(*common, "predictor.jpeg_decode_on_device=true", f"data.encoded_block_mb={budget_mb:.6f}", f"paths.output={tmp_path}/a"))
    cpu = backfill(make_cfg(*common, f"paths.output={tmp_path}/b"))
    ta, tb = (pq.read_table(r["output"]).sort_by("image_id") for r in (deferred, cpu))
    assert ta.num_rows == tb.num_rows == 48 and ta.column("error").null_count == 48
    assert ta.column("label").to_pylist() == tb.column("label").to_pylist()
    np.testing.assert_allclose(ta.column("score").to_numpy(), tb.column("score").to_numpy(), atol=1e-4)


def test_gpu_config_falls_back_to_cpu_without_gpus(ray_local, local_catalog, random_checkpoint, tmp_path):
    cfg = make_cfg("experiment=smoke", "predictor=gpu", f"data.manifest={local_catalog['cfg']['data']['manifest']}", f"predictor.checkpoint={random_checkpoint}", f"paths.output={tmp_path}")
    p = cfg["predictor"]
    assert (p["device"], p["num_gpus"], p["pin_memory"], p["jpeg_decode_on_device"], p["if_no_gpu"]) == ("cuda", 1, True, True, "auto")
    cfg["predictor"]["dtype"] = "float32"  # explicit: kept on the CPU fallback
    out = backfill(cfg)  # a local Ray without GPUs: auto means cpu, and the run says so
    assert out["predictor"]["device"] == "cpu" and out["predictor"]["num_gpus"] == 0 and out["predictor"]["resolved_dtype"] == "float32"
    fb = out["predictor"]["fallback"]
    assert fb["asked"]["device"] == "cuda" and fb["ran"]["device"] == "cpu" and fb["ran"]["dtype"] == "float32" and "no GPUs" in fb["why"]
    assert out["counts"]["predicted"] == 128 and out["counts"]["model_rows"] == 128

    with pytest.raises(RuntimeError, match="has none"):
        effective_predictor({**p, "if_no_gpu": "error"}, cluster_gpus=0)
    assert effective_predictor(p, cluster_gpus=4)["device"] == "cuda" and "fallback" not in effective_predictor(p, cluster_gpus=4)
    # On a cluster, auto waits: for GPU nodes that join (here after three polls)...
    polls = iter([0, 0, 0, 1])
    waited = effective_predictor({**p, "gpu_wait_s": 30}, cluster_gpus=0, on_cluster=True, gpus_now=lambda: next(polls))
    assert waited["device"] == "cuda" and waited["num_gpus"] == 1 and "fallback" not in waited
    # ...and stops with the setting's name when none come.
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="gpu_wait_s=1"):
        effective_predictor({**p, "gpu_wait_s": 1}, cluster_gpus=0, on_cluster=True, gpus_now=lambda: 0)
    assert 1 <= time.monotonic() - t0 < 10


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"if_no_gpu": "maybe"}, "auto.*cpu.*wait.*error"),
        ({"decode_in": "gpu"}, "auto.*tasks.*actors"),
        ({"device": "cuda", "num_gpus": 0}, "num_gpus > 0"),
        ({"min_actors": 3, "max_actors": 2}, "min_actors"),
        ({"dtype": "fp8"}, "bfloat16"),
    ],
)
def test_bad_predictor_settings_name_the_choices(bad, message):
    with pytest.raises(ValueError, match=message):
        check_predictor({**make_cfg()["predictor"], **bad})


def test_decode_in_tasks_gives_the_same_rows(ray_local, local_catalog, random_checkpoint, tmp_path):
    """decode_in=tasks (the GPU layout: CPU tasks decode, actors predict) and decode_in=actors (the
    CPU default) write the same predictions."""
    base = ["experiment=smoke", f"data.manifest={local_catalog['cfg']['data']['manifest']}", f"predictor.checkpoint={random_checkpoint}"]
    a = backfill(make_cfg(*base, "predictor.decode_in=tasks", f"paths.output={tmp_path}/a"))
    b = backfill(make_cfg(*base, "predictor.decode_in=actors", f"paths.output={tmp_path}/b"))
    assert (a["predictor"]["decode_in"], b["predictor"]["decode_in"]) == ("tasks", "actors")
    ta = pq.read_table(a["output"]).sort_by("image_id")
    tb = pq.read_table(b["output"]).sort_by("image_id")
    assert ta.num_rows == tb.num_rows == 128
    assert ta.column("label").to_pylist() == tb.column("label").to_pylist()
    np.testing.assert_allclose(ta.column("score").to_numpy(), tb.column("score").to_numpy(), atol=1e-5)


def test_stale_temp_files_are_removed(ray_local, local_catalog, random_checkpoint, tmp_path):
    import os
    import time

    from catalog_vision.checkpoint import load

    from catalog_vision.backfill.tables import catalog_id

    model_dir = tmp_path / "predictions" / load(random_checkpoint).model_id / catalog_id(local_catalog["cfg"]["data"]) / "old-run"
    model_dir.mkdir(parents=True)
    stale, fresh = model_dir / ".part-aaaa.parquet.1.tmp", model_dir / ".part-bbbb.parquet.2.tmp"
    stale.write_bytes(b"half a file")
    fresh.write_bytes(b"a writer may still be busy with this one")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    out = backfill(make_cfg("experiment=smoke", f"data.manifest={local_catalog['cfg']['data']['manifest']}", f"predictor.checkpoint={random_checkpoint}", f"paths.output={tmp_path}"))
    assert out["stale_temp_files_removed"] == 1 and not stale.exists() and fresh.exists()


def test_hflip_tta_averages_the_image_and_its_mirror(random_checkpoint):
    from catalog_vision.infer.predictor import Predictor

    x = np.random.default_rng(0).integers(0, 256, (6, 1, 28, 28), dtype=np.uint8)
    plain = Predictor(random_checkpoint, dtype="float32")
    tta = Predictor(random_checkpoint, dtype="float32", tta="hflip")
    p, f = plain.predict_pixels(x)
    pm, fm = plain.predict_pixels(np.ascontiguousarray(x[..., ::-1]))
    pt, et = tta.predict_pixels(x)
    np.testing.assert_allclose(pt, (p + pm) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(p, pm)  # the mirror image really is a different input
    # The embedding: the normalised mean of the raw features of both views, from the checkpoint's
    # model here (no Predictor, no BN folding); not the mean of the two normalised embeddings.
    import torch

    from catalog_vision import checkpoint as ckpt

    model = ckpt.load(random_checkpoint).model.eval()
    with torch.no_grad():
        raw = [model.forward_features(v).numpy() for v in (torch.from_numpy(x), torch.from_numpy(x).flip(-1))]
    mean = (raw[0] + raw[1]) / 2
    np.testing.assert_allclose(et, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=2e-5)
    unit = [r / np.linalg.norm(r, axis=1, keepdims=True) for r in raw]
    assert not np.allclose(et, unit[0], atol=1e-3) and not np.allclose(f, fm, atol=1e-3)
    with pytest.raises(ValueError, match="predictor.tta"):
        Predictor(random_checkpoint, tta="rotate")
