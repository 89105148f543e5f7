"""``model.pretrained=imagenet`` without internet: a seeded hub cache, an s3:// weights_cache, the
missing-weights message, and the normalisation a real training run stores in its checkpoint.

The "published" weights are a seeded random resnet18 state_dict saved under torchvision's real file
name, so a test can tell them apart from any fresh initialisation. Every test points the HTTP(S)
proxy at a closed port on 127.0.0.1: a download attempt fails at once, whatever the network.
"""

import http.server
import threading
import time

import boto3
import pytest
import torch
import torchvision

from catalog_vision import checkpoint as ckpt
from catalog_vision.models import WeightsNotFound, adapt_preprocessing, build_model
from catalog_vision.models import pretrained as pw
from conftest import BUCKET, free_port, make_cfg

FILE = "resnet18-f37072fd.pth"  # torchvision's published resnet18 weights (ResNet18_Weights.IMAGENET1K_V1)
RGB = {"channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3, "image_size": [32, 32]}
GRAY = {"channels": 1, "mean": [0.5], "std": [0.5], "image_size": [32, 32]}


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch home (hub cache) and no way out: downloads go to a closed port on 127.0.0.1."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    closed = f"http://127.0.0.1:{free_port()}"
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(var, closed)
    for var in ("NO_PROXY", "no_proxy"):  # loopback stays direct: the moto S3 endpoint
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    for var in ("ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return home


def fake_imagenet_state(seed: int = 123) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).state_dict()


def seed_hub(home, state) -> str:
    path = home / "hub" / "checkpoints" / FILE
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return str(path)


def assert_backbone_is(model, state: dict[str, torch.Tensor]) -> None:
    got = model.backbone.state_dict()
    backbone_keys = [k for k in state if not k.startswith("fc.")]
    assert set(got) == set(backbone_keys)  # the 1000-way classifier was replaced by our head
    for k in backbone_keys:
        torch.testing.assert_close(got[k], state[k], rtol=0, atol=0, msg=k)


def test_imagenet_loads_from_the_hub_cache(torch_home, caplog):
    state = fake_imagenet_state()
    path = seed_hub(torch_home, state)
    assert pw.hub_path(FILE) == path  # torch's own hub location under $TORCH_HOME
    with caplog.at_level("INFO", logger="catalog_vision"):
        model = build_model({"name": "resnet18", "pretrained": "imagenet"}, 5, RGB)
    assert_backbone_is(model, state)
    # Used as found (as torch does), but a file that is not the published one is pointed out.
    assert f"does not start with the f37072fd in its name: not the file published at https://download.pytorch.org/models/{FILE}" in caplog.text
    # A grayscale model gets the RGB stem summed over its input channels, everything else as is.
    gray = build_model({"name": "resnet18", "pretrained": "imagenet:IMAGENET1K_V1"}, 5, GRAY)
    torch.testing.assert_close(gray.backbone.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(gray.backbone.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_imagenet_loads_from_an_s3_weights_cache(torch_home, s3_endpoint):
    state = fake_imagenet_state(seed=7)
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    boto3.client("s3").put_object(Bucket=BUCKET, Key=f"weights-cache/{FILE}", Body=buf.getvalue())
    cfg = {"name": "resnet18", "pretrained": "imagenet", "weights_cache": f"s3://{BUCKET}/weights-cache/"}
    weights = pw.resolve(cfg, {"endpoint_url": s3_endpoint})
    assert weights.source == f"s3://{BUCKET}/weights-cache/{FILE}"
    assert weights.describe()["url"] == torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    model = build_model(cfg, 5, RGB, storage={"endpoint_url": s3_endpoint})
    assert_backbone_is(model, state)
    assert not (torch_home / "hub" / "checkpoints" / FILE).exists()  # read from the shared cache, never downloaded


def test_missing_weights_name_the_file_and_where_to_put_it(torch_home, tmp_path):
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    started = time.perf_counter()
    with pytest.raises(WeightsNotFound) as e:
        build_model({"name": "resnet18", "pretrained": "imagenet", "weights_cache": str(cache)}, 5, RGB)
    assert time.perf_counter() - started < 10
    msg = str(e.value)
    hub = torch_home / "hub" / "checkpoints" / FILE
    assert f"Place the file {FILE}" in msg
    assert str(hub) in msg and str(cache / FILE) in msg
    assert "https://download.pytorch.org/models/" + FILE in msg
    assert not list(hub.parent.glob("*"))  # no partial download left behind


def test_models_without_published_weights_name_those_with(torch_home):
    with pytest.raises(ValueError) as e:
        build_model({"name": "small_cnn", "pretrained": "imagenet"}, 5, GRAY)
    msg = str(e.value)
    assert "small_cnn has no published ImageNet weights" in msg
    for name in ("resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "vit_b_16"):
        assert name in msg
    with pytest.raises(ValueError, match=r"imagenet:IMAGENET1K_V2"):
        build_model({"name": "resnet50", "pretrained": "imagenet:IMAGENET1K_V9"}, 5, RGB)


def test_normalisation_comes_from_the_weights(caplog):
    published = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.transforms()
    with caplog.at_level("INFO", logger="catalog_vision"):
        rgb = adapt_preprocessing({"name": "resnet50", "pretrained": "imagenet"}, {**RGB, "fit": "squash"})
    assert rgb["mean"] == list(published.mean) and rgb["std"] == list(published.std)
    assert rgb["fit"] == "squash" and rgb["image_size"] == [32, 32]  # only the normalisation is replaced
    assert "replaces data.preprocessing mean=[0.5, 0.5, 0.5]" in caplog.text
    assert "trained at 224x224 (shorter side 232" in caplog.text
    gray = adapt_preprocessing({"name": "resnet50", "pretrained": "imagenet"}, GRAY)
    assert gray["mean"] == pytest.approx([sum(published.mean) / 3]) and gray["std"] == pytest.approx([sum(published.std) / 3])
    assert adapt_preprocessing({"name": "resnet50", "pretrained": None}, GRAY) == GRAY


class _Files(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_download_checks_the_hash_in_the_file_name(torch_home, tmp_path):
    import hashlib

    _Files.body = b"weights" * 1000
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/m.pth"
        good = tmp_path / f"m-{hashlib.sha256(_Files.body).hexdigest()[:8]}.pth"
        pw.download(url, str(good))
        assert good.read_bytes() == _Files.body
        bad = tmp_path / "m-00000000.pth"
        with pytest.raises(ValueError, match="does not match the 00000000"):
            pw.download(url, str(bad))
        assert sorted(p.name for p in tmp_path.iterdir()) == [good.name]  # nothing partial left
    finally:
        server.shutdown()


def test_weights_for_another_architecture_are_refused(torch_home, tmp_path):
    """resnet18 weights given to a resnet50 fit almost none of its tensors: an error naming the file,
    before Ray starts, rather than training from random weights with a log line (review 3.14)."""
    from catalog_vision.models.loading import WeightsMismatch
    from catalog_vision.train.trainer import train

    path = tmp_path / "resnet18.pth"
    torch.save(fake_imagenet_state(), path)
    with pytest.raises(WeightsMismatch, match="resnet18.pth") as e:
        build_model({"name": "resnet50", "pretrained": str(path)}, 5, RGB)
    assert "of the 265 backbone tensors" in str(e.value)  # resnet50's learned tensors, counted independently below
    learned = [k for k in torchvision.models.resnet50().state_dict() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    assert len(learned) == 265
    cfg = make_cfg("experiment=smoke", "model=resnet50", f"model.pretrained={path}", f"paths.root={tmp_path}/nothing-here",
                   "data.preprocessing.channels=3", "data.preprocessing.mean=[0.5,0.5,0.5]", "data.preprocessing.std=[0.5,0.5,0.5]")
    started = time.perf_counter()
    with pytest.raises(WeightsMismatch):
        train(cfg)
    assert time.perf_counter() - started < 30
    # The right architecture still loads exactly.
    model = build_model({"name": "resnet18", "pretrained": str(path)}, 5, RGB)
    assert_backbone_is(model, torch.load(path))


def test_train_stops_before_decoding_when_weights_are_missing(torch_home, tmp_path):
    # No catalog under paths.root at all: reaching the decode would fail on the manifest instead.
    cfg = make_cfg("experiment=smoke", "model=resnet18", "model.pretrained=imagenet", f"paths.root={tmp_path}/nothing-here", "data.preprocessing.channels=3", "data.preprocessing.mean=[0.5,0.5,0.5]", "data.preprocessing.std=[0.5,0.5,0.5]")
    from catalog_vision.train.trainer import train

    started = time.perf_counter()
    with pytest.raises(WeightsNotFound, match=FILE):
        train(cfg)
    assert time.perf_counter() - started < 15


@pytest.mark.slow
def test_train_from_cached_imagenet_weights_stores_their_normalisation(local_catalog, torch_home, tmp_path, monkeypatch):
    from catalog_vision.train.trainer import train

    state = fake_imagenet_state(seed=11)
    path = seed_hub(torch_home, state)
    cfg = make_cfg(
        "experiment=smoke",
        "model=resnet18",
        "model.pretrained=imagenet",
        f"paths.root={local_catalog['root']}",
        f"paths.output={tmp_path}/out",
        "data.preprocessing.channels=3",
        "data.preprocessing.image_size=[32,32]",
        "data.preprocessing.mean=[0.5,0.5,0.5]",
        "data.preprocessing.std=[0.5,0.5,0.5]",
        "trainer.batch_size=32",
        "trainer.epochs=1",
        "trainer.freeze_backbone_epochs=1",  # the backbone must come out exactly as it went in
    )
    summary = train(cfg)
    published = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    meta = ckpt.read_meta(summary["checkpoint"])
    assert meta["preprocessing"]["mean"] == list(published.mean) and meta["preprocessing"]["std"] == list(published.std)
    assert meta["preprocessing"]["channels"] == 3 and meta["preprocessing"]["image_size"] == [32, 32]
    assert meta["pretrained_weights"]["source"] == path and meta["pretrained_weights"]["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    # Backfill and serving load the trained checkpoint, never the hub weights: gone, it still loads.
    (torch_home / "hub" / "checkpoints" / FILE).unlink()
    loaded = ckpt.load(summary["checkpoint"])
    torch.testing.assert_close(loaded.model.mean.flatten(), torch.tensor(published.mean) * 255)
    torch.testing.assert_close(loaded.model.std.flatten(), torch.tensor(published.std) * 255)
    assert_backbone_is(loaded.model, state)
    assert [h["frozen_backbone"] for h in meta["history"]] == [True]


def test_vit_position_embeddings_follow_the_input_size():
    # Published ViT weights are for 224x224 (14x14 patches + class token); a 32x32 model has 2x2.
    from catalog_vision.models import load_backbone_state

    torch.manual_seed(3)
    donor = torchvision.models.vit_b_16(weights=None).state_dict()
    model = build_model({"name": "vit_b_16"}, 5, {**RGB, "image_size": [32, 32]})
    unused = load_backbone_state(model, donor)
    assert unused == ["heads.head.bias", "heads.head.weight"]
    pos = model.backbone.encoder.pos_embedding
    assert pos.shape == (1, 1 + 2 * 2, 768)
    torch.testing.assert_close(pos[:, :1], donor["encoder.pos_embedding"][:, :1])  # the class token's, as published
    torch.testing.assert_close(model.backbone.encoder.layers[11].mlp[3].weight, donor["encoder.layers.encoder_layer_11.mlp.3.weight"])
