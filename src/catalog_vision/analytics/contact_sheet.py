"""A contact sheet PNG of the largest duplicate groups: one row per group, thumbnails read from
the images' URIs (local or ``s3://``), framed by split (train blue, test red, others grey)."""

from __future__ import annotations

import io
from typing import Any, Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from .. import storage as st

FRAME = {"train": (40, 90, 200), "test": (210, 40, 40)}
OTHER = (150, 150, 150)
LABEL_W = 150


def thumbnail(uri: str, size: int, storage: Mapping[str, Any] | None) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(st.read_bytes(uri, storage)))
        im.load()
        im = ImageOps.exif_transpose(im).convert("RGB")
    except Exception:  # an unreadable image is a grey square, the sheet still gets written
        return Image.new("RGB", (size, size), (200, 200, 200))
    small = min(im.size) < size  # 28x28 product shots: keep the pixels visible
    im.thumbnail((size, size), Image.Resampling.NEAREST if small else Image.Resampling.LANCZOS)
    if small:
        scale = size / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return canvas


def contact_sheet(
    uri: str,
    ids: np.ndarray,
    uris: np.ndarray,
    group: np.ndarray,
    sizes: np.ndarray,
    split_of: Mapping[str, str],
    storage: Mapping[str, Any] | None = None,
    *,
    groups: int = 12,
    per_group: int = 10,
    thumb: int = 64,
) -> dict:
    """Write the sheet to ``uri``; return what it shows."""
    n_groups = min(int(groups), len(sizes))
    pad = 4
    cell = thumb + 2 * pad
    sheet = Image.new("RGB", (LABEL_W + per_group * cell, max(1, n_groups) * cell), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], np.arange(n_groups))
    for g in range(n_groups):
        members = order[starts[g] : starts[g] + sizes[g]]
        members = members[np.argsort(ids[members].astype(str))][:per_group]
        y = g * cell
        splits = [str(split_of.get(ids[m])) for m in order[starts[g] : starts[g] + sizes[g]]]
        draw.text((6, y + 8), f"group {g}: {sizes[g]} images", fill=(0, 0, 0))
        draw.text((6, y + 24), f"train {splits.count('train')}  test {splits.count('test')}", fill=(0, 0, 0))
        for k, m in enumerate(members):
            x = LABEL_W + k * cell
            draw.rectangle([x + 1, y + 1, x + cell - 2, y + cell - 2], outline=FRAME.get(split_of.get(ids[m]), OTHER), width=3)
            sheet.paste(thumbnail(str(uris[m]), thumb, storage), (x + pad, y + pad))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    st.write_bytes(uri, buf.getvalue(), storage)
    return {"uri": uri, "groups": n_groups, "per_group": int(per_group), "size": list(sheet.size)}
