"""One product photo from one Fashion-MNIST item: a tinted cut-out on a textured background.

Pure functions of a ``numpy.random.Generator``, so a photo is a function of the seed it is drawn
from (the same seed gives the same JPEG bytes). :mod:`.photos` decides what to draw and writes it.
"""

from __future__ import annotations

import io
from typing import Any, Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

BACKGROUNDS = ("gradient", "noise", "stripes", "checks")
# Product colours: a title reads "Navy shirt", and the photos of one product share the colour.
PALETTE = {
    "black": (0.09, 0.09, 0.10), "white": (0.93, 0.93, 0.91), "grey": (0.55, 0.55, 0.57),
    "navy": (0.10, 0.15, 0.40), "red": (0.80, 0.12, 0.12), "burgundy": (0.45, 0.08, 0.16),
    "forest green": (0.12, 0.38, 0.18), "olive": (0.45, 0.45, 0.16), "teal": (0.05, 0.50, 0.50),
    "sky blue": (0.45, 0.70, 0.92), "mustard": (0.85, 0.65, 0.12), "orange": (0.95, 0.50, 0.10),
    "pink": (0.95, 0.55, 0.70), "purple": (0.45, 0.20, 0.60), "beige": (0.85, 0.78, 0.62),
    "brown": (0.42, 0.26, 0.13),
}


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def photo_size(rng: np.random.Generator, size: tuple[int, int], aspect: tuple[float, float]) -> tuple[int, int]:
    """``(height, width)``, both within ``size``, width/height log-uniform within ``aspect``."""
    lo, hi = size
    a = float(np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1]))))
    h_lo, h_hi = max(lo, lo / a), min(hi, hi / a)
    h = int(round(rng.uniform(h_lo, h_hi)))
    return h, int(np.clip(round(h * a), lo, hi))


def background(rng: np.random.Generator, h: int, w: int, kind: str, colours: np.ndarray) -> np.ndarray:
    """An ``h x w x 3`` float image in [0, 1] between two colours."""
    y, x = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    theta = rng.uniform(0, np.pi)
    proj = x * np.cos(theta) + y * np.sin(theta)
    c1, c2 = colours
    if kind == "gradient":
        t = (proj - proj.min()) / max(1e-6, float(proj.max() - proj.min()))
    elif kind == "noise":
        # Low-frequency blotches (a coarse random grid upscaled smoothly): fabric, paper, a wall.
        cell = int(rng.integers(16, 64))
        grid = rng.random((h // cell + 2, w // cell + 2)).astype(np.float32)
        t = np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), dtype=np.float32).clip(0, 1)
    elif kind == "stripes":
        period = rng.uniform(10, 60)
        t = ((proj / period) % 1.0 < rng.uniform(0.3, 0.7)).astype(np.float32)
    elif kind == "checks":
        cell = rng.uniform(12, 70)
        u = x * np.cos(theta / 4) + y * np.sin(theta / 4)
        v = -x * np.sin(theta / 4) + y * np.cos(theta / 4)
        t = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    else:
        raise ValueError(f"background {kind!r}; choose one of {list(BACKGROUNDS)}")
    bg = c1 + (c2 - c1) * np.broadcast_to(t, (h, w))[..., None]
    # Sensor noise; uniform (sd 0.02) because it is three times cheaper to draw than Gaussian.
    bg += rng.random(bg.shape, dtype=np.float32) * 0.07 - 0.035
    return bg


def background_colours(rng: np.random.Generator, tint: np.ndarray) -> np.ndarray:
    """Two background colours whose mean stands apart from the item's, so the item stays visible."""
    item_lum = float(luminance(tint)) * 0.8 + 0.1
    for _ in range(100):
        colours = (0.05 + 0.9 * rng.random((2, 3))).astype(np.float32)
        if abs(float(luminance(colours.mean(0))) - item_lum) > 0.3:
            break
    return colours


def solid_mask(item: np.ndarray, threshold: int = 20) -> Image.Image:
    """The item's silhouette with its holes filled (dark prints and folds inside a garment would
    otherwise let the background show through)."""
    # copy(): an image made by fromarray shares the array's memory, and floodfill's writes to it are lost.
    mask = Image.fromarray(np.pad((item > threshold).astype(np.uint8), 1)).copy()
    ImageDraw.floodfill(mask, (0, 0), 2)  # what the flood from the border reaches is outside
    inside = (np.asarray(mask) != 2)[1:-1, 1:-1]
    return Image.fromarray(inside.astype(np.uint8) * 255)


def render_photo(rng: np.random.Generator, item: np.ndarray, solid: Image.Image, tint: np.ndarray, kind: str, cfg: Mapping[str, Any]) -> np.ndarray:
    """The ``28x28`` grayscale ``item`` (``solid``: its :func:`solid_mask`) as an RGB uint8 photo;
    ``cfg`` holds the ranges (``size``, ``aspect``, ``item_scale``)."""
    h, w = photo_size(rng, tuple(cfg["size"]), tuple(cfg["aspect"]))
    bg = background(rng, h, w, kind, background_colours(rng, tint))
    side = max(8, int(round(min(h, w) * rng.uniform(*cfg["item_scale"]))))
    cutout = Image.fromarray(item).resize((side, side), Image.LANCZOS)
    # Blurred by half a source pixel so the 28-pixel silhouette's steps do not show at 20x.
    solid = solid.resize((side, side), Image.BILINEAR).filter(ImageFilter.GaussianBlur(side / 56))
    if rng.random() < 0.5:
        cutout, solid = cutout.transpose(Image.FLIP_LEFT_RIGHT), solid.transpose(Image.FLIP_LEFT_RIGHT)
    shade = np.asarray(cutout, dtype=np.float32)[..., None] / 255.0
    # Intensity is the mask, steepened so the item's body is opaque and only its rim blends.
    alpha = np.maximum(np.clip(shade * 2.5, 0, 1), np.asarray(solid, dtype=np.float32)[..., None] / 255.0)
    light = rng.uniform(0.85, 1.15)  # each photo lit a little differently
    dark, bright = tint * 0.45, tint + (1 - tint) * 0.35
    colour = np.clip((dark + (bright - dark) * shade) * light, 0, 1)
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    # A soft drop shadow below-right of the item grounds it on the background.
    shadow_img = Image.fromarray((alpha[..., 0] * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(max(1, side / 30)))
    dy, dx = max(1, side // 25), max(1, side // 40)
    shadow = np.asarray(shadow_img, dtype=np.float32)[: h - top - dy, : w - left - dx, None] / 255.0
    bg[top + dy : top + dy + shadow.shape[0], left + dx : left + dx + shadow.shape[1]] *= 1 - 0.4 * shadow
    region = bg[top : top + side, left : left + side]
    bg[top : top + side, left : left + side] = region * (1 - alpha) + colour * alpha
    return (np.clip(bg, 0, 1) * 255 + 0.5).astype(np.uint8)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()
