"""Class folders, nested at any depth: ``<prefix>/apparel/tops/shirt/1234-0.jpg`` → one catalog row.

The label comes from the folders above a file, at a configurable level: ``top`` (``apparel``),
``leaf`` (``shirt``), ``path`` (``apparel/tops/shirt``) or an integer N (the first N folders,
joined with ``/``). Files directly under the prefix have no label. Files with other extensions are
counted by extension and reported, never silently dropped. An optional ``group_pattern`` (a regular
expression with one capture group, matched against the file name without its extension) names the
product a photo belongs to, e.g. ``^(.+)-\\d+$`` for ``<sku>-<n>.jpg``; the captured id is the group
wherever the file sits, so a product filed under two classes still lands in one split.
"""

from __future__ import annotations

import collections
import posixpath
import re
from typing import Any, Mapping

import pyarrow as pa

from .. import storage as st

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp")
LABEL_LEVELS = ("top", "leaf", "path")


def check_label_level(level: Any) -> Any:
    if isinstance(level, int) and not isinstance(level, bool) and level >= 1:
        return level
    if isinstance(level, str) and level.isdigit() and int(level) >= 1:
        return int(level)
    if level not in LABEL_LEVELS:
        raise ValueError(f"label_level={level!r}; choose one of {list(LABEL_LEVELS)} or a number of folder levels (1, 2, ...)")
    return level


def label_of(folders: list[str], level: Any) -> str | None:
    """The label a file's folder list gives at ``level`` (None for a file at the top)."""
    if not folders:
        return None
    if level == "top":
        return folders[0]
    if level == "leaf":
        return folders[-1]
    if level == "path":
        return "/".join(folders)
    return "/".join(folders[: int(level)])


def list_files(prefix: str, storage: Mapping[str, Any] | None = None) -> tuple[str, list[str]]:
    """``(root path, sorted keys relative to it)`` for every object under a local folder or ``s3://`` prefix."""
    fs, root = st.resolve(prefix, storage)
    root = root.rstrip("/")
    if not fs.exists(root):
        raise FileNotFoundError(f"{prefix!r} does not exist")
    return root, sorted(p[len(root) + 1 :] for p in fs.find(root))


def read_folders(prefix: str, storage: Mapping[str, Any] | None = None, *, label_level: Any = "leaf", group_pattern: str | None = None, labeled: bool = True) -> tuple[pa.Table, dict]:
    """``image_id`` (the key under the prefix), ``uri``, ``label`` and ``group`` for every image file.

    ``labeled=False`` treats the folders as plain structure (no labels). Returns the table and a
    report: ``files``, ``images``, ``skipped_by_extension`` and ``unlabeled`` (images at the top level).
    """
    level = check_label_level(label_level)
    pattern = re.compile(group_pattern) if group_pattern else None
    if pattern is not None and pattern.groups != 1:
        raise ValueError(f"group_pattern={group_pattern!r} needs exactly one capture group (the product id), e.g. '^(.+)-\\d+$'")
    prefix = st.absolute(prefix)
    root, rel = list_files(prefix, storage)
    scheme = prefix.split("://", 1)[0] + "://" if st.is_remote(prefix) else ""
    skipped: collections.Counter = collections.Counter()
    ids, uris, labels, groups = [], [], [], []
    for r in rel:
        name = posixpath.basename(r)
        ext = posixpath.splitext(name)[1].lower()
        if ext not in IMAGE_EXTENSIONS:
            skipped[ext or name] += 1  # dotfiles such as .DS_Store have no extension: count them by name
            continue
        folders = r.split("/")[:-1]
        ids.append(r)
        uris.append(f"{scheme}{root}/{r}")
        labels.append(label_of(folders, level) if labeled else None)
        g = None
        if pattern is not None:
            m = pattern.search(posixpath.splitext(name)[0])
            # Not scoped by folder: a SKU photographed into two class folders is still one product,
            # and the same key as a product table's SKU column (so both imports split alike).
            g = m.group(1) if m else None
        groups.append(g)
    if not ids:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {prefix!r}; skipped {dict(skipped)}")
    table = pa.table(
        {
            "image_id": pa.array(ids, pa.string()),
            "uri": pa.array(uris, pa.string()),
            "label": pa.array(labels, pa.string()),
            "group": pa.array(groups, pa.string()),
        }
    )
    report = {
        "files": len(rel),
        "images": len(ids),
        "skipped_by_extension": dict(sorted(skipped.items())),
        "unlabeled": sum(lbl is None for lbl in labels) if labeled else len(ids),
        **({"ungrouped": sum(g is None for g in groups)} if pattern is not None else {}),
    }
    return table, report
