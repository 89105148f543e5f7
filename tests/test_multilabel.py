"""A multi-label catalog (Fashion-MNIST items tiled 2x2) through train -> backfill -> report:
thresholds chosen on validation, stored in the checkpoint, applied by the backfill."""

import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from catalog_vision import checkpoint as ckpt, make_catalog
from catalog_vision.backfill import backfill
from catalog_vision.train import train
from catalog_vision.data import decoded_catalog
from catalog_vision.evaluate import evaluate
from catalog_vision.infer import Predictor
from catalog_vision.query import read_predictions
from conftest import make_cfg

pytestmark = pytest.mark.slow


def test_multilabel_tiles_train_backfill_report(ray_local, fmnist, tmp_path):
    cfg = make_cfg(
        "experiment=smoke", "data=fashion_mnist_tiles", f"paths.root={tmp_path}", f"data.source={fmnist}",
        "data.limit.train=384", "data.limit.val=128", "data.limit.test=64", "trainer.epochs=3", "trainer.checkpoints_to_keep=1",
    )
    cat = make_catalog(cfg)
    assert cat["task"] == "multilabel" and cat["splits"] == {"test": 64, "train": 384, "val": 128}
    manifest = pq.read_table(cfg["data"]["manifest"])
    assert manifest.schema.field("labels").type.value_type == "string"
    assert pc.all(pc.greater(pc.list_value_length(manifest.column("labels")), 0)).as_py()

    summary = train(cfg)
    meta = ckpt.read_meta(summary["checkpoint"])
    assert meta["task"] == "multilabel" and len(meta["thresholds"]) == 10
    assert all(0.0 < t < 1.0 for t in meta["thresholds"])
    assert [h["epoch"] for h in meta["history"]] == [0, 1, 2]
    assert 0.0 <= summary["val/hamming_loss"] < 0.5 and "val/f1_macro" in summary

    # The backfill's `labels` are exactly the classes whose sigmoid score clears their threshold.
    bf = backfill({**cfg, "predictor": {**cfg["predictor"], "checkpoint": summary["checkpoint"], "dtype": "float32"}})
    assert bf["counts"]["predicted"] == 64
    got = {r["image_id"]: r["labels"] for r in read_predictions(bf["output"], columns=["image_id", "labels"]).to_pylist()}
    pred = Predictor(summary["checkpoint"], dtype="float32")
    rows = decoded_catalog(cfg["data"], meta["preprocessing"], cfg["storage"], split="test").take_all()
    probs, _ = pred.predict_pixels(np.stack([r["pixels"] for r in rows]))
    assert probs.min() >= 0 and probs.max() <= 1 and not np.allclose(probs.sum(1), 1.0)  # sigmoids, not a softmax
    thr = np.array(meta["thresholds"])
    for r, p in zip(rows, probs):
        assert got[r["image_id"]] == [c for c, s, t in zip(meta["classes"], p, thr) if s >= t]

    # The report's Hamming loss and per-label F1 agree with sklearn on the backfill's labels.
    from sklearn.metrics import f1_score, hamming_loss
    from sklearn.preprocessing import MultiLabelBinarizer

    report = evaluate({**cfg, "evaluate": {**cfg["evaluate"], "checkpoint": summary["checkpoint"], "source": "predictions", "predictions": bf["output"]}})
    truth = {r["image_id"]: r["labels"] for r in manifest.to_pylist()}
    ids = sorted(got)
    mlb = MultiLabelBinarizer(classes=meta["classes"])
    yt, yp = mlb.fit_transform([truth[i] for i in ids]), mlb.transform([got[i] for i in ids])
    assert report["metrics"]["hamming_loss"] == pytest.approx(hamming_loss(yt, yp))
    f1 = f1_score(yt, yp, average=None, zero_division=0)
    assert [report["per_class"][c]["f1"] for c in meta["classes"]] == pytest.approx(f1.tolist())
    print("multilabel report:", json.dumps({"hamming_loss": round(report["metrics"]["hamming_loss"], 4), "f1_macro": round(report["metrics"]["f1_macro"], 4)}))
    torch.testing.assert_close(torch.tensor(sorted(report["thresholds"].values())), torch.tensor(sorted(meta["thresholds"])))
