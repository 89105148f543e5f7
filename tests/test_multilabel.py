"""A multi-label catalog (Fashion-MNIST items tiled 2x2) through train -> backfill -> report:
thresholds chosen on validation, stored in the checkpoint, applied by the backfill."""

import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from catalog_vision import checkpoint as ckpt, make_catalog
from catalog_vision.backfill.run import backfill
from catalog_vision.train.trainer import train
from catalog_vision.ingest.dataset import decoded_catalog
from catalog_vision.evaluate import evaluate
from catalog_vision.infer.predictor import Predictor
from catalog_vision.backfill.query import read_predictions
from conftest import make_cfg

pytestmark = pytest.mark.slow


def test_multilabel_tiles_train_backfill_report(ray_local, fmnist, tmp_path):
    cfg = make_cfg(
        "experiment=smoke", "data=fashion_mnist_tiles", f"paths.root={tmp_path}", f"data.source={fmnist}",
        "data.limit.train=384", "data.limit.val=128", "data.limit.test=64", "trainer.epochs=3", "trainer.checkpoints_to_keep=1",
        "trainer.precision=float32",  # validation scores as the float32 Predictor gives them: the thresholds can be checked below
    )
    cat = make_catalog(cfg)
    assert cat["task"] == "multilabel" and cat["splits"] == {"test": 64, "train": 384, "val": 128}
    manifest = pq.read_table(cfg["data"]["manifest"])
    assert manifest.schema.field("labels").type.value_type == "string"
    assert pc.all(pc.greater(pc.list_value_length(manifest.column("labels")), 0)).as_py()

    summary = train(cfg)
    meta = ckpt.read_meta(summary["checkpoint"])
    assert meta["task"] == "multilabel" and len(meta["thresholds"]) == 10
    assert [h["epoch"] for h in meta["history"]] == [0, 1, 2]
    # It learned: validation loss falls, and macro F1 at the chosen thresholds beats "every label on
    # every tile" (the best a model that ignores the image can do on F1: 2p / (1 + p) per class).
    # Hamming loss is not the yardstick: best-F1 thresholds trade false positives for recall.
    hist = meta["history"]
    val_rows = manifest.filter(pc.equal(manifest.column("split"), "val")).column("labels").to_pylist()
    prevalence = np.array([np.mean([c in labels for labels in val_rows]) for c in meta["classes"]])
    all_on = float(np.mean(2 * prevalence / (1 + prevalence)))
    print("multilabel val loss, f1_macro, hamming:", [(round(h["val/loss"], 4), round(h["val/f1_macro"], 4), round(h["val/hamming_loss"], 4)) for h in hist])
    print("all-labels baseline f1_macro:", round(all_on, 4))
    assert hist[-1]["val/loss"] < hist[0]["val/loss"] and meta["metrics"]["val/f1_macro"] > all_on + 0.05, (hist, all_on)

    # The stored thresholds are, per class, ones with the best F1 on the validation split: scores
    # recomputed here with the exported model, every candidate threshold tried by brute force.
    pred = Predictor(summary["checkpoint"], dtype="float32")
    val = decoded_catalog(cfg["data"], meta["preprocessing"], cfg["storage"], split="val").take_all()
    val_scores, _ = pred.predict_pixels(np.stack([r["pixels"] for r in val]))
    truth = {r["image_id"]: r["labels"] for r in manifest.to_pylist()}
    val_truth = np.array([[c in truth[r["image_id"]] for c in meta["classes"]] for r in val])

    def f1_at(k: int, t: float) -> float:
        hit = val_scores[:, k] >= t
        tp = np.sum(hit & val_truth[:, k])
        return 2 * tp / max(1, hit.sum() + val_truth[:, k].sum())

    for k, t in enumerate(meta["thresholds"]):
        best = max(f1_at(k, c) for c in val_scores[:, k])
        assert f1_at(k, t - 1e-5) == pytest.approx(best), (meta["classes"][k], t, f1_at(k, t - 1e-5), best)

    # The backfill's `labels` are exactly the classes whose sigmoid score clears their threshold.
    bf = backfill({**cfg, "predictor": {**cfg["predictor"], "checkpoint": summary["checkpoint"], "dtype": "float32"}})
    assert bf["counts"]["predicted"] == 64
    got = {r["image_id"]: r["labels"] for r in read_predictions(bf["output"], columns=["image_id", "labels"]).to_pylist()}
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
    ids = sorted(got)
    mlb = MultiLabelBinarizer(classes=meta["classes"])
    yt, yp = mlb.fit_transform([truth[i] for i in ids]), mlb.transform([got[i] for i in ids])
    assert report["metrics"]["hamming_loss"] == pytest.approx(hamming_loss(yt, yp))
    f1 = f1_score(yt, yp, average=None, zero_division=0)
    assert [report["per_class"][c]["f1"] for c in meta["classes"]] == pytest.approx(f1.tolist())
    print("multilabel report:", json.dumps({"hamming_loss": round(report["metrics"]["hamming_loss"], 4), "f1_macro": round(report["metrics"]["f1_macro"], 4)}))
    assert report["thresholds"] == dict(zip(meta["classes"], meta["thresholds"]))
