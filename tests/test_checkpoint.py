"""The checkpoint format: safe loading, content-addressed model_id, tamper detection."""

import json
from pathlib import Path

import pytest
import torch

from catalog_vision import checkpoint as ckpt


def test_roundtrip_gives_identical_predictions(random_checkpoint):
    a = ckpt.load(random_checkpoint)
    b = ckpt.load(random_checkpoint)
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    torch.testing.assert_close(a.model(x), b.model(x))
    assert a.model_id == b.model_id and a.model_id.startswith("small_cnn-")
    assert a.meta["preprocessing"]["channels"] == 1 and len(a.classes) == 10


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


def test_no_pickle_in_the_checkpoint(random_checkpoint):
    files = sorted(p.name for p in Path(random_checkpoint).iterdir())
    assert files == ["model.json", "model.safetensors"]
    meta = json.loads((Path(random_checkpoint) / "model.json").read_text())
    assert meta["format"] == ckpt.FORMAT
