"""The Predictor against numbers computed without it (the other tests compare backfill, serving and
reports with the Predictor; this pins the Predictor itself): a checkpoint whose head is set by hand
gives exactly softmax(bias) / sigmoid(bias), and embeddings are the normalised features of the
pixels scaled by the stored mean and std, computed here with plain torch."""

import numpy as np
import torch

from catalog_vision import checkpoint as ckpt
from catalog_vision.infer.predictor import Predictor
from catalog_vision.models import build_model
from conftest import make_cfg


def hand_made(tmp_path, task: str):
    cfg = make_cfg("experiment=smoke")
    classes = cfg["data"]["classes"]
    torch.manual_seed(3)
    model = build_model(cfg["model"], len(classes), cfg["data"]["preprocessing"]).eval()
    bias = torch.linspace(-2.0, 1.5, len(classes))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(bias)
    meta = {"model": cfg["model"], "classes": classes, "preprocessing": cfg["data"]["preprocessing"], "task": task,
            "embedding_dim": model.num_features, "epoch": 0, "metrics": {}}
    if task == "multilabel":
        meta["thresholds"] = [0.5] * len(classes)
    return ckpt.save(str(tmp_path / task), model, meta), model, bias, cfg["data"]["preprocessing"]


def features_by_hand(model, pixels: np.ndarray, pre: dict) -> np.ndarray:
    x = torch.from_numpy(pixels).float() / 255.0
    mean = torch.tensor(pre["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(pre["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        f = model.backbone((x - mean) / std)  # the normalisation done here, from the stored mean and std
    return torch.nn.functional.normalize(f, dim=1).numpy()


def test_multiclass_scores_and_embeddings(tmp_path):
    path, model, bias, pre = hand_made(tmp_path, "multiclass")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 1, 28, 28), dtype=np.uint8)
    for fold_bn in (True, False):
        p = Predictor(path, device="cpu", dtype="float32", fold_bn=fold_bn)
        probs, emb = p.predict_pixels(pixels)
        expected = np.exp(bias.numpy()) / np.exp(bias.numpy()).sum()
        np.testing.assert_allclose(probs, np.tile(expected, (5, 1)), rtol=1e-6)
        np.testing.assert_allclose(emb, features_by_hand(model, pixels, pre), atol=2e-5)
        assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
        # The table's label and top-k follow the hand-set bias order.
        table = p.table_from_outputs(["a", "b", "c", "d", "e"], [None] * 5, (probs, emb), [None] * 5)
        order = np.argsort(-bias.numpy())
        assert set(table.column("label").to_pylist()) == {p.classes[order[0]]}
        assert table.column("topk_labels").to_pylist()[0] == [p.classes[i] for i in order[: len(table.column("topk_labels")[0])]]


def test_multilabel_scores_are_independent_sigmoids(tmp_path):
    path, model, bias, pre = hand_made(tmp_path, "multilabel")
    pixels = np.random.default_rng(1).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    probs, emb = Predictor(path, device="cpu", dtype="float32").predict_pixels(pixels)
    np.testing.assert_allclose(probs, np.tile(1 / (1 + np.exp(-bias.numpy())), (3, 1)), rtol=1e-6)
    np.testing.assert_allclose(emb, features_by_hand(model, pixels, pre), atol=2e-5)
