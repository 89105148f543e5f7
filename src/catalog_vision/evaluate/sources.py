"""Where the evaluated predictions come from: the checkpoint run on the images, or a backfill's Parquet."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .truth import class_index


def from_checkpoint(cfg: Mapping[str, Any], e: Mapping[str, Any], checkpoint: str, split: str | None, gt_ids: dict[str, int]) -> dict:
    """Run the checkpoint over the decoded split on the driver; full probability vectors."""
    from ..ingest.dataset import decoded_catalog
    from ..ingest.errors import is_error
    from ..infer.predictor import Predictor
    from ..runtime import init_ray

    storage = cfg["storage"]
    init_ray(cfg["ray"])
    p = cfg.get("predictor", {})
    predictor = Predictor(
        checkpoint,
        storage,
        device=e.get("device") or "auto",
        dtype=e.get("dtype") or "auto",
        topk=1,
        channels_last=True,
        tta=e.get("tta") or "none",
        batch_size=int(e.get("batch_size") or 512),
        dtype_cache_dir=p.get("dtype_cache_dir"),
        fold_bn=bool(p.get("fold_bn", True)),
    )
    ds = decoded_catalog(cfg["data"], predictor.loaded.preprocessing, storage, split=split)
    rows, prob_parts, errors, unlabeled = [], [], [], 0
    for batch in ds.iter_batches(batch_format="numpy", batch_size=int(e.get("batch_size") or 512)):
        ids = [str(i) for i in batch["image_id"]]
        bad = np.array([is_error(x) for x in batch["error"]], dtype=bool)
        labeled = np.array([i in gt_ids for i in ids], dtype=bool)
        for i, err in zip(ids, batch["error"]):
            if is_error(err) and i in gt_ids:
                errors.append({"image_id": i, "error": str(err)})
        unlabeled += int((~labeled).sum())
        keep = labeled & ~bad
        if keep.any():
            probs, _ = predictor.predict_pixels(batch["pixels"][keep])
            prob_parts.append(probs.astype(np.float64))
            rows.extend(np.asarray(ids, dtype=object)[keep].tolist())
    k = len(predictor.classes)
    probs = np.concatenate(prob_parts) if prob_parts else np.zeros((0, k))
    return {
        "image_ids": rows,
        "probs": probs,
        "errors": errors,
        "unlabeled": unlabeled,
        "missing": [],
        "topk": k,
        "y_pred": None,
        "rank_scores": None,
        "pred_labels": None,
    }


def from_predictions(cfg: Mapping[str, Any], uri: str, classes: Sequence[str], task: str, gt_ids: dict[str, int]) -> dict:
    """A backfill's Parquet: probabilities rebuilt from ``topk_labels``/``topk_scores`` (zeros elsewhere)."""
    from ..backfill.query import read_predictions

    storage = cfg["storage"]
    table = read_predictions(uri, storage, columns=["image_id", "label", "score", "topk_labels", "topk_scores", "labels", "model_id", "error"])
    model_ids = sorted(set(table.column("model_id").drop_null().to_pylist()))
    if len(model_ids) > 1:
        raise ValueError(
            f"predictions under {uri!r} come from several models {model_ids}; point evaluate.predictions at one model folder (<predictions>/<model_id>)"
        )
    ids = table.column("image_id")
    if len(pc.unique(ids)) != len(ids):
        raise ValueError(f"predictions under {uri!r} hold some image_id more than once; point evaluate.predictions at one model folder")
    table = table.filter(pc.is_in(ids, value_set=pa.array(list(gt_ids), pa.string())))
    seen = set(table.column("image_id").to_pylist())
    missing = [i for i in gt_ids if i not in seen]
    err = table.column("error")
    errors = [{"image_id": i, "error": x} for i, x in zip(table.column("image_id").to_pylist(), err.to_pylist()) if x]
    good = table.filter(pc.is_null(err))
    n, kk = good.num_rows, len(classes)
    lengths = pc.list_value_length(good.column("topk_labels")).to_numpy(zero_copy_only=False) if n else np.zeros(0, int)
    topk = int(lengths.min()) if n else 0
    flat_idx = class_index(pc.list_flatten(good.column("topk_labels")), classes, "predicted labels") if n else np.zeros(0, np.int64)
    flat_scores = pc.list_flatten(good.column("topk_scores")).to_numpy(zero_copy_only=False).astype(np.float64) if n else np.zeros(0)
    row_of = np.repeat(np.arange(n), lengths)
    rank = np.concatenate([np.arange(m) for m in lengths]) if n else np.zeros(0, np.int64)
    probs = np.zeros((n, kk))
    probs[row_of, flat_idx] = flat_scores
    # Rank scores for top-k accuracy: position in the stored top-k list, unknown classes below all.
    rank_scores = np.zeros((n, kk))
    rank_scores[row_of, flat_idx] = kk + 1 - rank
    out = {
        "image_ids": good.column("image_id").to_pylist(),
        "probs": probs,
        "errors": errors,
        "unlabeled": 0,
        "missing": missing,
        "topk": topk,
        "rank_scores": rank_scores,
        "model_ids": model_ids,
    }
    if task == "multiclass":
        out["y_pred"] = class_index(good.column("label"), classes, "predicted labels") if n else np.zeros(0, np.int64)
        out["pred_labels"] = None
    else:
        out["y_pred"] = None
        labels = good.column("labels").to_pylist()
        out["pred_labels"] = None if any(v is None for v in labels) else labels
    return out
