"""The Markdown model card."""

from __future__ import annotations

from typing import Any, Mapping


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def _fmt(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def model_card(metrics: Mapping[str, Any], meta: Mapping[str, Any] | None, figures: Mapping[str, str], e: Mapping[str, Any]) -> str:
    """The Markdown model card: what the model is, what it was trained on, how it scores, where it fails."""
    lines: list[str] = [f"# Model card: {metrics['model_name']} (`{metrics['model_id']}`)", ""]
    for section in _SECTIONS:
        lines += section(metrics, dict(meta or {}), figures, e)
    return "\n".join(lines)


def _model(metrics: Mapping[str, Any], meta: dict, figures: Mapping[str, str], e: Mapping[str, Any]) -> list[str]:
    task, classes = metrics["task"], metrics["classes"]
    lines: list[str] = ["## Model", ""]
    pre = meta.get("preprocessing") or {}
    model_cfg = {k: v for k, v in (meta.get("model") or {}).items() if k != "name" and v is not None}
    lines += [
        f"- **Name:** {metrics['model_name']}" + (f" ({', '.join(f'{k}={v}' for k, v in model_cfg.items())})" if model_cfg else ""),
        f"- **model_id:** `{metrics['model_id']}` (model name + first 12 hex of the weights' SHA-256)",
        f"- **Checkpoint:** `{metrics['checkpoint']}`"
        if metrics["checkpoint"]
        else "- **Checkpoint:** not given (the report was built from predictions alone)",
        f"- **Task:** {task}" + (" (softmax over the classes)" if task == "multiclass" else " (independent sigmoid per label, per-label thresholds)"),
        f"- **Classes ({len(classes)}):** " + ", ".join(f"`{c}`" for c in classes),
        f"- **Embedding dim:** {meta.get('embedding_dim', 'n/a')}",
    ]
    if pre:
        lines.append(
            f"- **Preprocessing:** {pre.get('image_size')} pixels (height, width), {pre.get('channels')} channel(s), "
            f"{pre.get('resize', 'bilinear')} resize, normalised with mean {pre.get('mean')} and std {pre.get('std')} inside the model"
        )
    if task == "multilabel":
        lines.append("- **Thresholds:** " + ", ".join(f"`{c}` {t:.3f}" for c, t in metrics["thresholds"].items()))
    lines.append("")
    return lines


def _training_data(metrics: Mapping[str, Any], meta: dict, figures: Mapping[str, str], e: Mapping[str, Any]) -> list[str]:
    lines: list[str] = ["## Training data", ""]
    data = meta.get("data") or {}
    if not meta:
        lines.append("- Unknown: no checkpoint was given, so neither the training data nor the recipe is on record here.")
    elif data:
        lines.append(f"- **Manifest:** `{data.get('manifest')}`; {data.get('train_rows', 'n/a')} training rows, {data.get('val_rows', 'n/a')} validation rows")
        if data.get("train_support"):
            lines.append(
                "- **Training support** (images per class"
                + (", positives per label" if meta.get("task") == "multilabel" else "")
                + "): "
                + ", ".join(f"`{c}` {n}" for c, n in data["train_support"].items())
            )
    else:
        lines.append("- The checkpoint does not record its training data (no `data` in `model.json`).")
    t = meta.get("trainer") or {}
    if t:
        aug = t.get("augment") or {}
        workers = t.get("num_workers")
        lines += [
            f"- **Recipe:** {t.get('epochs')} epochs, batch size {t.get('batch_size')} per worker"
            + (f" × {workers} workers = {int(t['batch_size']) * int(workers)} global" if workers and t.get("batch_size") else "")
            + f", optimizer {t.get('optimizer')}, lr {t.get('lr')}, weight decay {t.get('weight_decay')}"
            + f", warmup {t.get('warmup_epochs')} epochs then {t.get('schedule', 'cosine')}, label smoothing {t.get('label_smoothing')}"
            + f", precision {t.get('precision', 'float32')}, imbalance {t.get('imbalance', 'none')}, seed {t.get('seed')}",
            "- **Augmentation:** " + (", ".join(f"{k}={v}" for k, v in aug.items()) if aug else "none"),
        ]
    elif meta:
        lines.append("- The checkpoint does not record its training recipe (no `trainer` in `model.json`).")
    best = meta.get("metrics") or {}
    if best:
        shown = {k: v for k, v in best.items() if k in ("train/loss", "train/top1", "val/loss", "val/top1", "val/f1_macro", "lr")}
        lines.append(f"- **Checkpoint epoch:** {int(meta.get('epoch', 0)) + 1}; " + ", ".join(f"{k} {_fmt(float(v))}" for k, v in shown.items()))
    lines.append("")
    return lines


def _evaluation(metrics: Mapping[str, Any], meta: dict, figures: Mapping[str, str], e: Mapping[str, Any]) -> list[str]:
    task, classes, m, counts, per_class = metrics["task"], metrics["classes"], metrics["metrics"], metrics["counts"], metrics["per_class"]
    lines: list[str] = ["## Evaluation", ""]
    where = f"backfill predictions `{metrics['predictions']}`" if metrics["source"] == "predictions" else "the checkpoint run on the decoded images"
    lines += [
        f"- **Split:** `{metrics['split']}` of `{metrics['ground_truth']}`; source: {where}",
        f"- **Images:** {counts['labeled']} labeled, **{counts['evaluated']} evaluated**, {counts['errors']} error rows (not evaluated)"
        + (
            f" (images that could not be read or decoded: {', '.join(f'{k} {v}' for k, v in counts['errors_by_class'].items())}; listed in `errors.parquet`)"
            if counts["errors"]
            else ""
        )
        + (f", {counts['missing']} without a prediction" if counts["missing"] else "")
        + (
            f"; {counts['unknown_class']} images of classes the model does not know, not evaluated "
            f"({', '.join(f'{k} {v}' for k, v in list(counts['unknown_classes'].items())[:10])})"
            if counts.get("unknown_class")
            else ""
        ),
        "",
    ]
    if task == "multiclass":
        heads = [
            ("Top-1 accuracy", m["top1"]),
            ("Top-5 accuracy", m["top5"]),
            ("Macro F1", m["f1_macro"]),
            ("Weighted F1", m["f1_weighted"]),
            ("ROC-AUC (one-vs-rest, macro)", m["roc_auc_macro"]),
            (f"ECE ({metrics['reliability']['n_bins']} bins)", m["ece"]),
        ]
    else:
        heads = [
            ("Hamming loss", m["hamming_loss"]),
            ("Subset accuracy", m["subset_accuracy"]),
            ("Micro F1", m["f1_micro"]),
            ("Macro F1", m["f1_macro"]),
            ("ROC-AUC (per label, macro)", m["roc_auc_macro"]),
            (f"ECE ({metrics['reliability']['n_bins']} bins, per label)", m["ece"]),
        ]
    lines += ["| metric | value |", "|---|---:|"] + [f"| {k} | {_fmt(v)} |" for k, v in heads] + [""]
    for note in metrics["notes"]:
        lines.append(f"> {note}")
    if metrics["notes"]:
        lines.append("")
    extra = " threshold |" if task == "multilabel" else ""
    lines += [f"| class | precision | recall | F1 | support | ROC-AUC |{extra}", "|---|---:|---:|---:|---:|---:|" + ("---:|" if extra else "")]
    for c in classes:
        r = per_class[c]
        lines.append(
            f"| {c} | {_fmt(r['precision'])} | {_fmt(r['recall'])} | {_fmt(r['f1'])} | {r['support']} | {_fmt(r['roc_auc'])} |"
            + (f" {_fmt(r['threshold'], 3)} |" if extra else "")
        )
    lines.append("")
    return lines


def _intended_use(metrics: Mapping[str, Any], meta: dict, figures: Mapping[str, str], e: Mapping[str, Any]) -> list[str]:
    task, classes = metrics["task"], metrics["classes"]
    lines: list[str] = ["## Intended use", ""]
    outside = "it always answers with one of them" if task == "multiclass" else "it can only tag the labels it knows"
    lines.append(
        e.get("intended_use")
        or (
            f"Labeling and embedding images of the kind it was trained on (the {len(classes)} {'classes' if task == 'multiclass' else 'labels'} above, "
            "preprocessed as above) in offline backfills and online serving, with low-confidence predictions sent to human review. "
            f"It is not meant for images outside these classes ({outside}), for decisions about people, "
            "or for any use where an error rate like the one measured here is unacceptable without review."
        )
    )
    lines.append("")
    return lines


def _failure_classes(metrics: Mapping[str, Any], meta: dict, figures: Mapping[str, str], e: Mapping[str, Any]) -> list[str]:
    task, classes, per_class = metrics["task"], metrics["classes"], metrics["per_class"]
    lines: list[str] = ["## Known failure classes", ""]
    n_worst = int(e.get("worst_classes") or 3)
    ranked = sorted(
        (c for c in classes if per_class[c]["support"] > 0 and per_class[c]["f1"] < 1.0), key=lambda c: (per_class[c]["f1"], -per_class[c]["support"], c)
    )[:n_worst]
    if ranked:
        lines.append("Lowest F1 on this split:")
        lines.append("")
        for c in ranked:
            r = per_class[c]
            lines.append(f"- `{c}`: F1 {r['f1']:.4f} (precision {r['precision']:.4f}, recall {r['recall']:.4f}, {_images(r['support'])})")
        lines.append("")
    if task == "multiclass":
        conf = metrics.get("top_confusions") or []
        if conf:
            lines.append("Most frequent confusions (true → predicted):")
            lines.append("")
            for x in conf:
                lines.append(f"- `{x['true']}` → `{x['predicted']}`: {_images(x['count'])} ({x['fraction_of_true']:.1%} of `{x['true']}`)")
        else:
            lines.append("No off-diagonal confusions on this split.")
    else:
        fn = [c for c in sorted(classes, key=lambda c: -per_class[c]["fn"]) if per_class[c]["fn"]][:n_worst]
        fp = [c for c in sorted(classes, key=lambda c: -per_class[c]["fp"]) if per_class[c]["fp"]][:n_worst]
        lines.append("Most missed labels (false negatives): " + (", ".join(f"`{c}` {_images(per_class[c]['fn'])}" for c in fn) or "none"))
        lines.append("")
        lines.append("Most over-predicted labels (false positives): " + (", ".join(f"`{c}` {_images(per_class[c]['fp'])}" for c in fp) or "none"))
    lines.append("")
    return lines


def _limitations(metrics: Mapping[str, Any], meta: dict, figures: Mapping[str, str], e: Mapping[str, Any]) -> list[str]:
    task, classes, m, counts, per_class = metrics["task"], metrics["classes"], metrics["metrics"], metrics["counts"], metrics["per_class"]
    lines: list[str] = ["## Limitations", ""]
    lim = [
        f"Measured on {counts['evaluated']} images of one split (`{metrics['split']}`) drawn from the same catalog as the training data; "
        "accuracy on a shifted distribution (new suppliers, new photo styles) will be lower and is not measured here.",
    ]
    small = [c for c in classes if 0 < per_class[c]["support"] < 30]
    if small:
        lim.append("Per-class figures rest on fewer than 30 images for " + ", ".join(f"`{c}`" for c in small) + ": treat them as rough.")
    absent = [c for c in classes if per_class[c]["support"] == 0]
    if absent:
        lim.append("No labeled images of " + ", ".join(f"`{c}`" for c in absent) + " in this split: nothing is known about them here.")
    if m.get("ece") is not None:
        lim.append(
            f"Confidence scores have an expected calibration error of {m['ece']:.4f}: read them as rankings more than as probabilities"
            + (" unless that is small for your use." if m["ece"] < 0.05 else ".")
        )
    if task == "multiclass":
        lim.append("The model always picks one of its classes: an image of something else gets a confident wrong label, not a refusal.")
    lim += [n for n in metrics["notes"] if "approximate" in n]
    lines += [f"- {x}" for x in lim] + [""]
    return lines


def _figures(metrics: Mapping[str, Any], meta: dict, figures: Mapping[str, str], e: Mapping[str, Any]) -> list[str]:
    lines: list[str] = ["## Figures", ""]
    for name, caption in figures.items():
        lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    return lines


def _provenance(metrics: Mapping[str, Any], meta: dict, figures: Mapping[str, str], e: Mapping[str, Any]) -> list[str]:
    lines: list[str] = ["## How this report was produced", "", "```bash", metrics["command"], "```", ""]
    lines.append(
        f"Source `{metrics['source']}`, split `{metrics['split']}`; written to `{metrics['output']}` "
        f"({', '.join(f'`{f}`' for f in metrics['files'])}). The resolved configuration (secrets redacted) is in `metrics.json` under `config`."
    )
    lines.append("")
    return lines


_SECTIONS = (_model, _training_data, _evaluation, _intended_use, _failure_classes, _limitations, _figures, _provenance)
