"""The evaluation report: metrics checked by hand and against scikit-learn on independently
recomputed predictions; reports from a real checkpoint on a real catalog (Ray Data decode), from a
real backfill's Parquet (checked against DuckDB's accuracy), written locally and to a real S3 endpoint."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from catalog_vision import storage as st
from catalog_vision.evaluate import evaluate, multiclass_metrics, multilabel_metrics, reliability, top_confusions
from catalog_vision.backfill.tables import catalog_id
from conftest import BAD_INPUTS, BUCKET, make_cfg, write_hostile_manifest

FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

# A hand-checked multi-label example: 4 images, labels red/round/soft, thresholds 0.5/0.3/0.7.
ML_CLASSES = ["red", "round", "soft"]
ML_THRESHOLDS = [0.5, 0.3, 0.7]
ML_TRUE = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
ML_PROBS = np.array([[0.90, 0.25, 0.65], [0.45, 0.35, 0.15], [0.75, 0.10, 0.85], [0.15, 0.55, 0.30]])
# Predicted (prob >= threshold):       [1,0,0]            [0,1,0]            [1,0,1]            [0,1,0]
# red:   true 1,0,1,0 pred 1,0,1,0 -> tp 2 fp 0 fn 0 tn 2: P 1, R 1, F1 1, support 2
# round: true 0,1,1,0 pred 0,1,0,1 -> tp 1 fp 1 fn 1 tn 1: P .5, R .5, F1 .5, support 2
# soft:  true 1,0,0,0 pred 0,0,1,0 -> tp 0 fp 1 fn 1 tn 2: P 0, R 0, F1 0, support 1
# Hamming loss: 4 wrong cells (r0 soft, r2 round+soft, r3 round) of 12 = 1/3. Subset accuracy: only r1 = 1/4.
# Micro: tp 3, fp 2, fn 2 -> P = R = F1 = 3/5. Macro F1: (1 + .5 + 0) / 3 = .5.
# ROC-AUC (fraction of positive/negative pairs ranked right):
#   red   pos .9,.75 vs neg .45,.15            -> 4/4 = 1
#   round pos .35,.10 vs neg .25,.55           -> only .35 > .25: 1/4
#   soft  pos .65 vs neg .15,.85,.30           -> 2/3
# ECE, 5 bins, every (image, label) pair a forecast (prob, present):
#   [0,.2]   .15/0 .10/1 .15/0  n3 acc 1/3 conf .4/3    |gap| .2
#   (.2,.4]  .25/0 .35/1 .30/0  n3 acc 1/3 conf .3      |gap| 1/30
#   (.4,.6]  .45/0 .55/0        n2 acc 0   conf .5      |gap| .5
#   (.6,.8]  .65/1 .75/1        n2 acc 1   conf .7      |gap| .3
#   (.8,1]   .90/1 .85/0        n2 acc .5  conf .875    |gap| .375
#   ECE = 3/12*.2 + 3/12/30 + 2/12*(.5+.3+.375) = 61/240
ML_EXPECTED = {
    "hamming_loss": 1 / 3,
    "subset_accuracy": 1 / 4,
    "f1_micro": 3 / 5,
    "f1_macro": 1 / 2,
    "precision": [1.0, 0.5, 0.0],
    "recall": [1.0, 0.5, 0.0],
    "f1": [1.0, 0.5, 0.0],
    "support": [2, 2, 1],
    "roc_auc": [1.0, 0.25, 2 / 3],
    "ece_5_bins": 61 / 240,
}


def test_multilabel_metrics_by_hand():
    m = multilabel_metrics(ML_TRUE, ML_PROBS, ML_THRESHOLDS, ML_CLASSES, n_bins=5)
    for key in ("hamming_loss", "subset_accuracy", "f1_micro", "f1_macro"):
        assert m[key] == pytest.approx(ML_EXPECTED[key]), key
    for key in ("precision", "recall", "f1", "support", "roc_auc"):
        assert [r[key] for r in m["per_class"]] == pytest.approx(ML_EXPECTED[key]), key
    assert [(r["tp"], r["fp"], r["fn"], r["tn"]) for r in m["per_class"]] == [(2, 0, 0, 2), (1, 1, 1, 1), (0, 1, 1, 2)]
    assert m["roc_auc_macro"] == pytest.approx((1 + 0.25 + 2 / 3) / 3)
    assert m["ece"] == pytest.approx(ML_EXPECTED["ece_5_bins"])
    assert m["reliability"]["count"] == [3, 3, 2, 2, 2]
    assert m["thresholds"] == dict(zip(ML_CLASSES, ML_THRESHOLDS))
    # Given predictions (a backfill's `labels` column) win over the thresholds.
    m2 = multilabel_metrics(ML_TRUE, ML_PROBS, ML_THRESHOLDS, ML_CLASSES, y_pred_bin=ML_TRUE)
    assert m2["hamming_loss"] == 0 and m2["subset_accuracy"] == 1 and m2["roc_auc_macro"] == m["roc_auc_macro"]


def test_multiclass_metrics_by_hand():
    classes = ["a", "b", "c"]
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.5, 0.1, 0.4]])
    m = multiclass_metrics(y, probs, classes, n_bins=5)
    # argmax: a b b b c a -> right on rows 0, 2, 3, 4: top-1 4/6.
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # b: precision 2/3, recall 1 -> F1 .8; a: precision 1/2, recall 1/2; c: precision 1, recall 1/2 -> F1 2/3.
    assert [r["f1"] for r in m["per_class"]] == pytest.approx([0.5, 0.8, 2 / 3])
    assert m["top5"] is None  # 3 classes: top-5 is meaningless
    assert top_confusions(m["confusion_matrix"], classes) == [
        {"true": "c", "predicted": "a", "count": 1, "fraction_of_true": 0.5},
        {"true": "a", "predicted": "b", "count": 1, "fraction_of_true": 0.5},
    ]
    # Confidences .7 .6 .8 .5 .8 .5 (right: 1 0 1 1 1 0). Bins of .2: (.4,.6] holds .6 .5 .5 (acc 1/3, conf 8/15);
    # (.6,.8] holds .7 .8 .8 (acc 1, conf 23/30). ECE = 1/2*|1/3-8/15| + 1/2*|1-23/30| = 1/10 + 7/60 = 13/60.
    assert m["ece"] == pytest.approx(13 / 60)


def bins_by_hand(outcome, conf, n_bins: int) -> dict:
    """Equal-width calibration bins computed here with plain comparisons (no sklearn, no searchsorted):
    right-closed, (lo, hi], the first one [0, hi]; ECE = sum over non-empty bins of n_b / N * |acc_b - conf_b|."""
    edges = [k / n_bins for k in range(n_bins + 1)]
    count, acc, mean_conf = [], [], []
    for b in range(n_bins):
        inside = [i for i, c in enumerate(conf) if edges[b] < c <= edges[b + 1] or (b == 0 and c == 0.0)]
        count.append(len(inside))
        acc.append(sum(outcome[i] for i in inside) / len(inside) if inside else None)
        mean_conf.append(sum(conf[i] for i in inside) / len(inside) if inside else None)
    n = sum(count)
    ece = sum(k / n * abs(a - c) for k, a, c in zip(count, acc, mean_conf) if k)
    return {"count": count, "accuracy": acc, "confidence": mean_conf, "ece": ece}


@pytest.mark.parametrize("shape", ["uniform", "confident"])
def test_reliability_bins_and_ece_by_hand(shape):
    """reliability() against bins counted here, on random data plus confidences of exactly 0, 1 and
    every bin edge; "confident" (max-softmax-like, all above 0.5) leaves the lower bins empty."""
    n_bins = 15
    rng = np.random.default_rng(1)
    edges = [k / n_bins for k in range(n_bins + 1)]
    if shape == "uniform":
        conf = np.concatenate([rng.random(500), [0.0, 0.0, 1.0, 1.0], edges, edges[1:-1]])
    else:
        conf = np.concatenate([0.5 + 0.5 * rng.random(300) ** 0.3, [1.0, 1.0], [e for e in edges if e > 0.5]])
    outcome = (rng.random(len(conf)) < conf).astype(int)
    rel = reliability(outcome, conf, n_bins)
    want = bins_by_hand(outcome.tolist(), conf.tolist(), n_bins)
    assert rel["count"] == want["count"] and sum(rel["count"]) == len(conf)
    assert rel["edges"] == pytest.approx(edges)
    for key in ("accuracy", "confidence"):
        assert [v is None for v in rel[key]] == [v is None for v in want[key]], key
        assert [v for v in rel[key] if v is not None] == pytest.approx([v for v in want[key] if v is not None], abs=1e-12), key
    assert rel["ece"] == pytest.approx(want["ece"], abs=1e-12)
    if shape == "confident":
        assert want["count"][: n_bins // 2] == [0] * (n_bins // 2)


# --------------------------------------------------------------------------------------------
# A multi-label report from hand-made predictions (no Ray): the same 4 images as above.
# --------------------------------------------------------------------------------------------


@pytest.fixture
def multilabel_setup(tmp_path):
    """A 3-label checkpoint (task multilabel, thresholds), a manifest with a `labels` column and a
    predictions folder written by the real sink, holding the hand-checked example above."""
    import torch

    from catalog_vision import checkpoint as ckpt
    from catalog_vision.infer.predictions import predictions_schema
    from catalog_vision.models import build_model
    from catalog_vision.backfill.sink import commit_batch

    cfg = make_cfg("experiment=smoke", f"paths.root={tmp_path}")
    torch.manual_seed(0)
    model = build_model(cfg["model"], len(ML_CLASSES), cfg["data"]["preprocessing"])
    meta = {"model": cfg["model"], "classes": ML_CLASSES, "preprocessing": cfg["data"]["preprocessing"], "task": "multilabel", "thresholds": ML_THRESHOLDS, "embedding_dim": model.num_features, "epoch": 2, "metrics": {"val/loss": 0.4}}
    ckpt_dir = str(tmp_path / "model")
    ckpt.save(ckpt_dir, model, meta)
    model_id = ckpt.model_id_of(ckpt.read_meta(ckpt_dir))

    ids = [f"img-{i}" for i in range(4)]
    true_lists = [[c for c, v in zip(ML_CLASSES, row) if v] for row in ML_TRUE]
    manifest = pa.table(
        {
            "image_id": ids + ["img-broken", "img-unlabeled", "img-val"],
            "uri": [f"images/{i}.png" for i in ids] + ["images/broken.png", "images/u.png", "images/v.png"],
            "labels": pa.array(true_lists + [["red"], None, ["soft"]], pa.list_(pa.string())),
            "split": ["test"] * 6 + ["val"],
        }
    )
    pq.write_table(manifest, tmp_path / "manifest.parquet")

    rows = []
    for i, p in zip(ids, ML_PROBS):
        order = np.argsort(-p)
        rows.append(
            {
                "image_id": i,
                "uri": f"images/{i}.png",
                "label": ML_CLASSES[order[0]],
                "score": float(p[order[0]]),
                "topk_labels": [ML_CLASSES[j] for j in order],
                "topk_scores": [float(p[j]) for j in order],
                "labels": [c for c, v, t in zip(ML_CLASSES, p, ML_THRESHOLDS) if v >= t],
                "embedding": [0.0] * model.num_features,
                "low_confidence": False,
                "model_id": model_id,
                "run_id": "run-1",
                "error": None,
            }
        )
    rows.append({"image_id": "img-broken", "uri": "images/broken.png", "model_id": model_id, "run_id": "run-1", "error": "TruncatedImage: image file is truncated"})
    run_dir = str(tmp_path / "output" / "predictions" / model_id / catalog_id({"manifest": str(tmp_path / "manifest.parquet")}) / "run-1")
    commit_batch(pa.Table.from_pylist(rows, schema=predictions_schema(model.num_features)), run_dir)
    return {"cfg": cfg, "checkpoint": ckpt_dir, "manifest": str(tmp_path / "manifest.parquet"), "model_id": model_id, "run_dir": run_dir, "tmp": tmp_path}


def test_multilabel_report_from_predictions(multilabel_setup, capsys):
    s = multilabel_setup
    out = s["tmp"] / "report"
    cfg = make_cfg(
        "experiment=smoke",
        f"paths.root={s['tmp']}",
        f"data.manifest={s['manifest']}",
        "evaluate.source=predictions",
        f"evaluate.checkpoint={s['checkpoint']}",
        f"evaluate.output={out}",
        "evaluate.ece_bins=5",
    )
    # evaluate.predictions=null: the checkpoint's model table for data.manifest under paths.predictions.
    m = evaluate(cfg, command="python jobs/evaluate.py evaluate.source=predictions")
    assert m["predictions"] == s["run_dir"].rsplit("/", 1)[0]  # <predictions>/<model_id>/<catalog_id>
    assert m["task"] == "multilabel" and m["model_id"] == s["model_id"]
    assert m["counts"] == {"labeled": 5, "evaluated": 4, "errors": 1, "errors_by_class": {"TruncatedImage": 1}, "missing": 0, "unlabeled_skipped": 0, "unknown_class": 0, "unknown_classes": {}}
    assert m["error_rows"] == [{"image_id": "img-broken", "error": "TruncatedImage: image file is truncated"}]
    for key in ("hamming_loss", "subset_accuracy", "f1_micro", "f1_macro"):
        assert m["metrics"][key] == pytest.approx(ML_EXPECTED[key]), key
    assert m["metrics"]["ece"] == pytest.approx(ML_EXPECTED["ece_5_bins"])  # all 3 labels stored: exact
    assert m["thresholds"] == dict(zip(ML_CLASSES, ML_THRESHOLDS))
    assert m["approximate"] == {"per_class": False, "roc_auc": False, "ece": False}

    per_class = pq.read_table(out / "per_class.parquet").to_pylist()
    assert [r["class"] for r in per_class] == ML_CLASSES
    assert [r["roc_auc"] for r in per_class] == pytest.approx(ML_EXPECTED["roc_auc"])
    assert [r["support"] for r in per_class] == ML_EXPECTED["support"]
    assert not (out / "confusion_matrix.parquet").exists()  # multiclass only
    assert pq.read_table(out / "errors.parquet").column("image_id").to_pylist() == ["img-broken"]
    card = (out / "model_card.md").read_text()
    assert "multilabel" in card and "`soft` 0.700" in card and "python jobs/evaluate.py evaluate.source=predictions" in card
    assert "No training curves" in card and not (out / "training_curves.png").exists()
    assert json.loads((out / "metrics.json").read_text())["metrics"]["f1_micro"] == pytest.approx(0.6)
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("evaluate summary: ")]
    assert len(line) == 1 and json.loads(line[0].split(": ", 1)[1])["hamming_loss"] == round(1 / 3, 4)


def test_bad_config_names_the_choices(multilabel_setup):
    s = multilabel_setup
    base = ["experiment=smoke", f"paths.root={s['tmp']}", f"data.manifest={s['manifest']}", f"evaluate.checkpoint={s['checkpoint']}"]
    with pytest.raises(ValueError, match=r"evaluate.source='nope'.*\['checkpoint', 'predictions'\]"):
        evaluate(make_cfg(*base, "evaluate.source=nope"))
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        evaluate(make_cfg(*base[:-1], f"evaluate.checkpoint={s['tmp']}/missing"))
    with pytest.raises(ValueError, match=r"evaluate.split='train' is not in manifest .*\['test', 'val'\]"):
        evaluate(make_cfg(*base, "evaluate.split=train"))
    # A split whose rows carry no labels at all.
    unlabeled = pa.table({"image_id": ["x"], "uri": ["x.png"], "labels": pa.array([None], pa.list_(pa.string())), "split": ["new"]})
    pq.write_table(unlabeled, s["tmp"] / "unlabeled.parquet")
    with pytest.raises(ValueError, match=r"evaluate.split='new' has no labeled rows.*\[\]"):
        evaluate(make_cfg(*base[:2], f"data.manifest={s['tmp']}/unlabeled.parquet", base[3], "evaluate.split=new"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate(make_cfg(*base, "evaluate.source=predictions", f"evaluate.predictions={s['tmp']}/nowhere"))


# --------------------------------------------------------------------------------------------
# Real catalog, real Ray: a checkpoint report and a report from a real backfill.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(local_catalog, random_checkpoint, tmp_path_factory):
    """The smoke catalog's test split plus 4 corrupt inputs, and a copy of the random checkpoint
    with a per-epoch `history` in its meta (same weights, so the same model_id)."""
    from catalog_vision import checkpoint as ckpt

    tmp = tmp_path_factory.mktemp("evaluate")
    manifest, n_good = write_hostile_manifest(str(Path(local_catalog["root"]) / "catalog" / "manifest.parquet"), str(tmp), lambda u, b: st.write_bytes(u, b))
    loaded = ckpt.load(random_checkpoint)
    history = [{"epoch": e, "train/loss": 2.0 - 0.3 * e, "train/top1": 0.3 + 0.1 * e, "val/loss": 2.1 - 0.25 * e, "val/top1": 0.28 + 0.09 * e, "lr": 0.003 / (e + 1)} for e in range(3)]
    with_history = str(tmp / "model")
    ckpt.save(with_history, loaded.model, {**loaded.meta, "history": history})
    assert ckpt.model_id_of(ckpt.read_meta(with_history)) == loaded.model_id
    return {"tmp": tmp, "manifest": manifest, "n_good": n_good, "checkpoint": with_history, "model_id": loaded.model_id}


@pytest.fixture(scope="module")
def checkpoint_report(hostile):
    cfg = make_cfg("experiment=smoke", f"paths.root={hostile['tmp']}", f"data.manifest={hostile['manifest']}", f"evaluate.checkpoint={hostile['checkpoint']}", "evaluate.dtype=float32", "evaluate.batch_size=50")
    return cfg, evaluate(cfg, command="python jobs/evaluate.py evaluate.dtype=float32")


def check_report_files(read, y: np.ndarray, pred: np.ndarray) -> None:
    """A multiclass report's files (``read(name) -> bytes``) against sklearn on the true and predicted
    class indices: per_class.parquet, confusion_matrix.parquet, and the model card's lowest-F1 classes
    and most frequent confusion; the confusion PNG is not blank."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(FMNIST_CLASSES)))
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    per_class = pq.read_table(io.BytesIO(read("per_class.parquet"))).to_pylist()
    assert [r["class"] for r in per_class] == FMNIST_CLASSES and [r["support"] for r in per_class] == support.tolist()
    for key, want in (("precision", precision), ("recall", recall), ("f1", f1)):
        assert [r[key] for r in per_class] == pytest.approx(want.tolist()), key
    cm = confusion_matrix(y, pred, labels=labels)
    got = np.zeros_like(cm)
    for r in pq.read_table(io.BytesIO(read("confusion_matrix.parquet"))).to_pylist():
        got[FMNIST_CLASSES.index(r["true"]), FMNIST_CLASSES.index(r["predicted"])] = r["count"]
    assert got.tolist() == cm.tolist()

    section = read("model_card.md").decode().split("## Known failure classes", 1)[1].split("\n## ", 1)[0]
    worst = [ln.split("`")[1] for ln in section.splitlines() if ln.startswith("- `") and "`: F1 " in ln]
    lowest = sorted(f1[(support > 0) & (f1 < 1)])[:3]  # ties: any of the tied classes may be named
    assert [f1[FMNIST_CLASSES.index(c)] for c in worst] == pytest.approx(lowest), (worst, f1)
    first = next(ln for ln in section.splitlines() if ln.startswith("- `") and "` → `" in ln)
    true, predicted = first.split("`")[1], first.split("`")[3]
    assert cm[FMNIST_CLASSES.index(true), FMNIST_CLASSES.index(predicted)] == (cm - np.diag(np.diag(cm))).max(), first
    with Image.open(io.BytesIO(read("confusion_matrix.png"))) as im:
        assert im.format == "PNG" and np.asarray(im.convert("L")).std() > 0


@pytest.mark.slow
def test_checkpoint_report(hostile, checkpoint_report):
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    from catalog_vision.ingest.images import Preprocessing, decode
    from catalog_vision.infer.predictor import Predictor
    from catalog_vision.backfill.query import read_manifest

    cfg, m = checkpoint_report
    n = hostile["n_good"]
    out = Path(m["output"])
    assert out == hostile["tmp"] / "output" / "report" / hostile["model_id"] / "test"  # the default location
    assert m["source"] == "checkpoint" and m["task"] == "multiclass" and m["classes"] == FMNIST_CLASSES
    assert m["counts"]["evaluated"] == n and m["counts"]["labeled"] == n + len(BAD_INPUTS)
    assert m["counts"]["errors_by_class"] == {cls: 1 for _, _, cls in BAD_INPUTS.values()}
    assert sorted(r["image_id"] for r in m["error_rows"]) == sorted(BAD_INPUTS)

    # Independently: decode the same files, run the Predictor here, score with sklearn.
    table = read_manifest(hostile["manifest"])
    good = [r for r in table.to_pylist() if r["image_id"] not in BAD_INPUTS]
    predictor = Predictor(hostile["checkpoint"], device="cpu", dtype="float32")
    spec = Preprocessing.from_dict(predictor.loaded.preprocessing)
    probs, _ = predictor.predict_pixels(np.stack([decode(Path(r["uri"]).read_bytes(), spec) for r in good]))
    y = np.array([FMNIST_CLASSES.index(r["label"]) for r in good])
    pred = probs.argmax(1)
    assert m["metrics"]["top1"] == pytest.approx(accuracy_score(y, pred))
    assert m["metrics"]["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert m["metrics"]["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted", zero_division=0))
    assert m["metrics"]["top5"] == pytest.approx(np.mean([yy in np.argsort(-p)[:5] for yy, p in zip(y, probs)]))
    present = [c for c in range(10) if 0 < (y == c).sum() < n]
    assert m["metrics"]["roc_auc_macro"] == pytest.approx(np.mean([roc_auc_score(y == c, probs[:, c]) for c in present]), abs=1e-6)
    assert m["metrics"]["roc_auc_classes"] == len(present)
    assert m["approximate"] == {}
    # ECE over 15 bins of the top-1 probability, counted here (bins_by_hand) from the same probabilities.
    assert m["metrics"]["ece"] == pytest.approx(bins_by_hand((pred == y).astype(int).tolist(), probs.max(1).tolist(), 15)["ece"], abs=1e-5)

    # The files: per class and the confusion matrix as sklearn has them.
    check_report_files(lambda name: (out / name).read_bytes(), y, pred)
    # Figures: real PNGs of sensible size; training curves from the meta's history.
    for name in ("confusion_matrix.png", "reliability.png", "roc.png", "training_curves.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width >= 500 and im.height >= 400, (name, im.size)
    card = (out / "model_card.md").read_text()
    for text in ("## Model", "## Training data", "## Evaluation", "## Intended use", "## Known failure classes", "## Limitations", "## How this report was produced"):
        assert text in card, text
    assert "T-shirt/top" in card and "Ankle boot" in card and hostile["model_id"] in card
    assert "python jobs/evaluate.py evaluate.dtype=float32" in card
    assert "](confusion_matrix.png)" in card and "](training_curves.png)" in card
    assert json.loads((out / "metrics.json").read_text())["counts"] == m["counts"]


@pytest.mark.slow
def test_report_from_a_backfill_matches_duckdb_and_the_checkpoint(hostile, checkpoint_report, s3_endpoint):
    """Backfill (float32) → report from its Parquet, written to S3: DuckDB's accuracy, and the
    checkpoint report's confusion matrix, exactly; ROC-AUC flagged approximate (top-5 of 10)."""
    from catalog_vision.backfill.run import backfill
    from catalog_vision.backfill.query import read_manifest, read_predictions, summarize

    _, from_ckpt = checkpoint_report
    base = ["experiment=smoke", "storage=s3", f"paths.root={hostile['tmp']}", f"data.manifest={hostile['manifest']}"]
    cfg = make_cfg(*base, f"predictor.checkpoint={hostile['checkpoint']}", "predictor.dtype=float32")
    bf = backfill(cfg)
    s = summarize(bf["output"], hostile["manifest"], cfg["storage"])

    report_uri = f"s3://{BUCKET}/reports/{hostile['model_id']}"
    ecfg = make_cfg(*base, "evaluate.source=predictions", f"evaluate.predictions={bf['output']}", f"evaluate.checkpoint={hostile['checkpoint']}", f"evaluate.output={report_uri}")
    m = evaluate(ecfg)
    assert m["output"] == report_uri and m["predictions"] == bf["output"]
    # DuckDB's accuracy (query.summarize) is over the same rows: labeled, without an error.
    assert m["counts"]["evaluated"] == s["labeled_rows"] == hostile["n_good"]
    assert m["counts"]["errors"] == len(BAD_INPUTS) == s["errors"]
    assert m["metrics"]["top1"] == pytest.approx(s["accuracy"], abs=1e-12)
    assert m["metrics"]["top1"] == pytest.approx(from_ckpt["metrics"]["top1"])
    assert m["confusion_matrix"] == from_ckpt["confusion_matrix"]
    assert m["approximate"]["roc_auc"] is True and m["approximate"]["top1"] is False
    assert any("approximate" in note for note in m["notes"])

    # Top-5 and ECE recomputed here from the backfill's rows (top-k labels, top-1 score) and the manifest.
    storage = ecfg["storage"]
    truth = {r["image_id"]: r["label"] for r in read_manifest(hostile["manifest"]).to_pylist()}
    rows = [r for r in read_predictions(bf["output"], storage, columns=["image_id", "label", "score", "topk_labels", "error"]).to_pylist() if r["error"] is None]
    assert len(rows) == hostile["n_good"]
    assert m["metrics"]["top5"] == pytest.approx(np.mean([truth[r["image_id"]] in r["topk_labels"] for r in rows]))
    right = [int(r["label"] == truth[r["image_id"]]) for r in rows]
    assert m["metrics"]["ece"] == pytest.approx(bins_by_hand(right, [r["score"] for r in rows], 15)["ece"], abs=1e-6)

    # The files in the bucket: what sklearn says of the same rows; metrics.json is the returned report.
    def read(name: str) -> bytes:
        return st.read_bytes(f"{report_uri}/{name}", storage)

    y = np.array([FMNIST_CLASSES.index(truth[r["image_id"]]) for r in rows])
    check_report_files(read, y, np.array([FMNIST_CLASSES.index(r["label"]) for r in rows]))
    saved = json.loads(read("metrics.json"))
    assert saved["metrics"] == pytest.approx(m["metrics"]) and saved["counts"] == m["counts"]
    with Image.open(io.BytesIO(read("reliability.png"))) as im:
        assert im.format == "PNG" and np.asarray(im.convert("L")).std() > 0
    card = read("model_card.md").decode()
    assert "approximate" in card and bf["output"] in card


@pytest.mark.slow
def test_multilabel_report_from_checkpoint(multilabel_setup, local_catalog):
    """A multi-label checkpoint run on real images: sigmoid scores, the checkpoint's thresholds."""
    from sklearn.metrics import f1_score, hamming_loss

    from catalog_vision.ingest.images import Preprocessing, decode
    from catalog_vision.infer.predictor import Predictor
    from catalog_vision.backfill.query import read_manifest

    s = multilabel_setup
    catalog = read_manifest(str(Path(local_catalog["root"]) / "catalog" / "manifest.parquet"))
    rows = [r for r in catalog.to_pylist() if r["split"] == "test"][:60]
    rng = np.random.default_rng(3)
    truth = rng.random((len(rows), 3)) < 0.4
    manifest = pa.table(
        {
            "image_id": [r["image_id"] for r in rows],
            "uri": [str(Path(local_catalog["root"]) / "catalog" / r["uri"]) if not r["uri"].startswith("/") else r["uri"] for r in rows],
            "labels": pa.array([[c for c, v in zip(ML_CLASSES, t) if v] for t in truth], pa.list_(pa.string())),
            "split": ["test"] * len(rows),
        }
    )
    pq.write_table(manifest, s["tmp"] / "ml-images.parquet")
    cfg = make_cfg("experiment=smoke", f"paths.root={s['tmp']}", f"data.manifest={s['tmp']}/ml-images.parquet", f"evaluate.checkpoint={s['checkpoint']}", "evaluate.dtype=float32")
    m = evaluate(cfg)
    assert m["task"] == "multilabel" and m["counts"]["evaluated"] == len(rows) and m["thresholds"] == dict(zip(ML_CLASSES, ML_THRESHOLDS))

    predictor = Predictor(s["checkpoint"], device="cpu", dtype="float32")
    spec = Preprocessing.from_dict(predictor.loaded.preprocessing)
    probs, _ = predictor.predict_pixels(np.stack([decode(Path(u).read_bytes(), spec) for u in manifest.column("uri").to_pylist()]))
    assert probs.min() >= 0 and probs.max() <= 1 and not np.allclose(probs.sum(1), 1)  # sigmoids, not a softmax
    pred = probs >= np.array(ML_THRESHOLDS)
    assert m["metrics"]["hamming_loss"] == pytest.approx(hamming_loss(truth, pred))
    assert m["metrics"]["f1_micro"] == pytest.approx(f1_score(truth, pred, average="micro", zero_division=0))
    assert [r["support"] for r in pq.read_table(Path(m["output"]) / "per_class.parquet").to_pylist()] == truth.sum(0).tolist()
