"""The catalog summary written beside every manifest: what a team checks before training on it.

Images per class and split, groups (products) per split, classes below ``min_images_per_class``,
classes with no validation or test images, and the leakage check: groups found in two splits.
"""

from __future__ import annotations

import collections
import statistics
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


def class_lists(table: pa.Table) -> list[list[str]]:
    """Each row's classes: ``labels`` (multi-label) where set, else ``[label]``, else ``[]``."""
    single = table.column("label").to_pylist() if "label" in table.column_names else [None] * table.num_rows
    multi = table.column("labels").to_pylist() if "labels" in table.column_names else [None] * table.num_rows
    return [list(m) if m is not None else ([s] if s is not None else []) for s, m in zip(single, multi)]


def class_counts(table: pa.Table) -> dict[str, int]:
    counts: collections.Counter = collections.Counter(c for cs in class_lists(table) for c in cs)
    return dict(sorted(counts.items()))


def catalog_summary(table: pa.Table, *, min_images_per_class: int = 1, small_classes: dict[str, int] | None = None, small_action: str = "keep") -> dict[str, Any]:
    """A JSON-able summary of a manifest table (``image_id, label[s], split``, optional ``group``)."""
    splits = table.column("split").to_pylist() if "split" in table.column_names else [None] * table.num_rows
    lists = class_lists(table)
    per_class: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for cs, s in zip(lists, splits):
        for c in cs:
            per_class[c][s or "(none)"] += 1
    split_names = sorted({s or "(none)" for s in splits})
    out: dict[str, Any] = {
        "images": table.num_rows,
        "labeled": sum(bool(cs) for cs in lists),
        "unlabeled": sum(not cs for cs in lists),
        "classes": len(per_class),
        "splits": dict(sorted(collections.Counter(s or "(none)" for s in splits).items())),
        "per_class": {c: {"images": sum(v.values()), **{s: v.get(s, 0) for s in split_names}} for c, v in sorted(per_class.items())},
    }
    if "group" in table.column_names and table.column("group").null_count < table.num_rows:
        groups = table.column("group").to_pylist()
        sizes = collections.Counter(g for g in groups if g is not None)
        where: dict[str, set] = collections.defaultdict(set)
        for g, s in zip(groups, splits):
            if g is not None:
                where[g].add(s)
        per_split = collections.Counter(s for g, ss in where.items() for s in ss)
        spanning = sorted(g for g, ss in where.items() if len(ss) > 1)
        out["groups"] = {
            "groups": len(sizes),
            "images_without_group": sum(g is None for g in groups),
            "per_split": {s or "(none)": n for s, n in sorted(per_split.items(), key=lambda kv: str(kv[0]))},
            "images_per_group": {"min": min(sizes.values()), "median": statistics.median(sizes.values()), "max": max(sizes.values())} if sizes else None,
            "spanning_splits": len(spanning),
            **({"spanning_examples": spanning[:5]} if spanning else {}),
        }
    small = small_classes if small_classes is not None else {c: v["images"] for c, v in out["per_class"].items() if v["images"] < min_images_per_class}
    out["min_images_per_class"] = int(min_images_per_class)
    out["small_classes"] = {"action": small_action, "classes": dict(sorted(small.items()))}
    # A class the model will be trained on but never validated or tested on is worth a warning.
    out["classes_missing_from_split"] = {s: sorted(c for c, v in out["per_class"].items() if v.get(s, 0) == 0) for s in split_names if s != "(none)"}
    out["classes_missing_from_split"] = {s: cs for s, cs in out["classes_missing_from_split"].items() if cs}
    return out


def drop_small_classes(table: pa.Table, min_images: int) -> tuple[pa.Table, dict[str, int]]:
    """Rows of classes with fewer than ``min_images`` images removed (multi-label: those labels
    removed from each list). Returns the table and ``{class: images}`` of the classes removed."""
    counts = class_counts(table)
    small = {c: n for c, n in counts.items() if n < min_images}
    if not small:
        return table, {}
    value_set = pa.array(sorted(small), pa.string())
    if "labels" in table.column_names:
        kept = [None if v is None else [c for c in v if c not in small] or None for v in table.column("labels").to_pylist()]
        table = table.set_column(table.column_names.index("labels"), "labels", pa.array(kept, pa.list_(pa.string())))
    if "label" in table.column_names:
        table = table.filter(pc.invert(pc.fill_null(pc.is_in(table.column("label"), value_set=value_set), False)))
    return table, small
