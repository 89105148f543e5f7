"""Classes and training targets: ``data.classes`` (or every label in the catalog), and the map that
turns decoded rows into ``pixels, y`` for Ray Train (multi-class indices or multi-label multi-hot)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from .catalog import catalog_table
from .errors import is_error


def resolve_classes(data: Mapping[str, Any], storage: Mapping[str, Any] | None = None, table: pa.Table | None = None) -> list[str]:
    """``data.classes``, or with ``auto`` (or null) the sorted labels of the whole catalog (every
    split: a class seen only in val or test still gets an output, and a later catalog's new labels
    are reported by the evaluation as unknown classes, not errors)."""
    classes = data.get("classes")
    if classes not in (None, "auto"):
        if isinstance(classes, str):
            raise ValueError(f"data.classes={classes!r}; give a list of class names or auto")
        return [str(c) for c in classes]
    from ..catalogs.summary import class_counts

    names = sorted(class_counts(table if table is not None else catalog_table(data, storage)))
    if not names:
        raise ValueError("data.classes=auto but the catalog has no labels (no 'label'/'labels' values, or no class folders); label it or list data.classes")
    return names


TASKS = ("multiclass", "multilabel")


def to_training(batch: dict[str, np.ndarray], classes: Sequence[str], task: str = "multiclass") -> dict[str, np.ndarray]:
    """Drop error rows and unlabeled rows. Multi-class: class names → indices (``y`` int64);
    multi-label: the ``labels`` lists → multi-hot ``y`` (float32, one column per class)."""
    index = {c: i for i, c in enumerate(classes)}
    ok = [not is_error(e) for e in batch["error"]]
    if task == "multilabel":
        if "labels" not in batch:
            raise ValueError("data.task=multilabel needs a 'labels' column (list of class names) in the manifest")
        lists = [list(v) if v is not None and o else None for v, o in zip(batch["labels"], ok)]
        unknown = {c for v in lists if v for c in v if c not in index}
        if unknown:
            raise ValueError(f"manifest labels {sorted(unknown)[:10]} are not in data.classes={list(classes)}")
        keep = np.array([v is not None for v in lists], dtype=bool)
        y = np.zeros((int(keep.sum()), len(classes)), dtype=np.float32)
        for r, v in enumerate(v for v in lists if v is not None):
            y[r, [index[c] for c in v]] = 1.0
        return {"pixels": batch["pixels"][keep], "y": y}
    if task != "multiclass":
        raise ValueError(f"data.task={task!r}; choose one of {list(TASKS)}")
    keep = np.array([o and lbl in index for o, lbl in zip(ok, batch["label"])], dtype=bool)
    unknown = {lbl for o, lbl in zip(ok, batch["label"]) if o and isinstance(lbl, str) and lbl not in index}
    if unknown:
        raise ValueError(f"manifest labels {sorted(unknown)[:10]} are not in data.classes={list(classes)}")
    return {
        "pixels": batch["pixels"][keep],
        "y": np.array([index[lbl] for lbl in batch["label"][keep]], dtype=np.int64),
    }
