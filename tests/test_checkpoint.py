"""The checkpoint format: safe loading, content-addressed model_id, tamper detection."""

import json
from pathlib import Path

import pytest
import torch

from catalog_vision import checkpoint as ckpt
from conftest import make_cfg


def test_roundtrip_gives_identical_predictions(tmp_path):
    """The loaded model equals the one that was saved: every tensor, and its outputs."""
    from catalog_vision.models import build_model

    cfg = make_cfg("experiment=smoke")
    torch.manual_seed(1)
    model = build_model(cfg["model"], len(cfg["data"]["classes"]), cfg["data"]["preprocessing"]).eval()
    with torch.no_grad():  # non-default BN statistics, so a loader that dropped buffers would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    meta = {"model": cfg["model"], "classes": cfg["data"]["classes"], "preprocessing": cfg["data"]["preprocessing"], "task": "multiclass",
            "embedding_dim": model.num_features, "epoch": 0, "metrics": {}}
    path = ckpt.save(str(tmp_path / "model"), model, meta)
    loaded = ckpt.load(path)
    saved, back = model.state_dict(), loaded.model.state_dict()
    assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved)
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval()(x), model(x), rtol=0, atol=0)
    assert loaded.model_id.startswith("small_cnn-") and loaded.classes == cfg["data"]["classes"]
    assert loaded.meta["preprocessing"]["channels"] == 1


def test_model_id_follows_the_weights(random_checkpoint, tmp_path):
    loaded = ckpt.load(random_checkpoint)
    with torch.no_grad():
        loaded.model.head.bias.add_(1.0)
    other = ckpt.save(str(tmp_path / "other"), loaded.model, {k: v for k, v in loaded.meta.items() if k not in ("format", "weights_sha256")})
    assert ckpt.load(other).model_id != loaded.model_id
    copied = ckpt.copy(random_checkpoint, str(tmp_path / "copy"))
    assert ckpt.load(copied).model_id == loaded.model_id


def test_tampered_weights_are_refused(random_checkpoint, tmp_path):
    bad = Path(ckpt.copy(random_checkpoint, str(tmp_path / "bad")))
    data = bytearray((bad / ckpt.WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (bad / ckpt.WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match"):
        ckpt.load(str(bad))


def test_missing_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="jobs/train.py"):
        ckpt.load(str(tmp_path / "nothing"))


def test_no_pickle_in_the_checkpoint(random_checkpoint, monkeypatch):
    files = sorted(p.name for p in Path(random_checkpoint).iterdir())
    assert files == ["model.json", "model.safetensors"]
    meta = json.loads((Path(random_checkpoint) / "model.json").read_text())
    assert meta["format"] == ckpt.FORMAT
    # Loading never unpickles: with pickle and torch.load unusable it still works.
    import pickle

    def boom(*a, **k):
        raise AssertionError("a checkpoint load unpickled something")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, boom)
    monkeypatch.setattr(torch, "load", boom)
    assert ckpt.load(random_checkpoint).model_id == ckpt.model_id_of(meta)


def _second_checkpoint(tmp_path) -> str:
    from catalog_vision.models import build_model

    cfg = make_cfg("experiment=smoke")
    torch.manual_seed(1)
    model = build_model(cfg["model"], len(cfg["data"]["classes"]), cfg["data"]["preprocessing"])
    meta = {"model": cfg["model"], "classes": cfg["data"]["classes"], "preprocessing": cfg["data"]["preprocessing"], "task": "multiclass",
            "embedding_dim": model.num_features, "epoch": 3, "metrics": {}}
    return ckpt.save(str(tmp_path / "second"), model, meta)


def test_export_writes_the_metadata_once_and_a_torn_export_is_refused(random_checkpoint, tmp_path, monkeypatch):
    """Training exports the best checkpoint with the run's history: weights first, then the
    metadata, once. An export that dies between the two leaves the new weights beside the old
    metadata; loading that pair stops with an error instead of mixing two models."""
    from catalog_vision import storage as st

    dst = str(tmp_path / "model")
    ckpt.copy(random_checkpoint, dst)
    old = ckpt.load(dst).model_id
    new_src = _second_checkpoint(tmp_path)
    meta = {**ckpt.read_meta(new_src), "history": [{"epoch": 1}, {"epoch": 2}]}
    writes = []
    real = st.write_bytes
    monkeypatch.setattr(st, "write_bytes", lambda uri, data, storage=None: writes.append(uri.rsplit("/", 1)[-1]) or real(uri, data, storage))
    ckpt.export(new_src, meta, dst)
    assert writes == [ckpt.WEIGHTS, ckpt.META]
    got = ckpt.load(dst)
    assert got.meta["history"] == meta["history"] and got.model_id == ckpt.model_id_of(meta) != old

    # Dies after the weights: the old metadata no longer matches them.
    ckpt.copy(random_checkpoint, dst)

    def dies_after_weights(uri, data, storage=None):
        if uri.endswith(ckpt.META):
            raise OSError("killed")
        return real(uri, data, storage)

    monkeypatch.setattr(st, "write_bytes", dies_after_weights)
    with pytest.raises(OSError, match="killed"):
        ckpt.export(new_src, meta, dst)
    with pytest.raises(ValueError, match="does not match"):
        ckpt.load(dst)
    # Metadata that does not describe the source's weights is never exported.
    monkeypatch.setattr(st, "write_bytes", real)
    with pytest.raises(ValueError, match="does not match"):
        ckpt.export(random_checkpoint, meta, str(tmp_path / "other"))
