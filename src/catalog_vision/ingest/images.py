"""Decoding and preprocessing: the single definition shared by training, backfill and serving.

Images become ``uint8`` arrays of shape ``(C, H, W)``; scaling to float and mean/std
normalisation happen inside the model (:class:`catalog_vision.models.ImageClassifier`), so no
caller can forget them or apply them twice.

A bad image raises an :class:`.errors.ImageError` subclass; callers turn it into an error row.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageFile, ImageOps

from .errors import DecodeError, EmptyFile, ImageError, ImageTooLarge, NotAnImage, TruncatedImage

# Truncated files must fail loudly, not decode half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class Preprocessing:
    """How bytes become model input. Stored in every checkpoint."""

    image_size: tuple[int, int] = (28, 28)  # (height, width)
    channels: int = 1  # 1 = grayscale, 3 = RGB
    mean: tuple[float, ...] = (0.2860,)
    std: tuple[float, ...] = (0.3530,)
    # Images with more pixels than this are rejected before the full decode (decompression bombs).
    max_pixels: int = 50_000_000
    resize: str = field(default="bilinear")
    # How an image of another aspect ratio becomes image_size: ``squash`` (stretch to it; what
    # checkpoints from before this setting did), ``center_crop`` (scale to cover, crop the centre:
    # torchvision's Resize+CenterCrop, what ImageNet weights expect) or ``letterbox`` (scale to fit,
    # pad with the mean colour, which normalises to 0).
    fit: str = "squash"

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ValueError(f"preprocessing.channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("preprocessing.mean and .std need one value per channel")
        if self.resize not in _RESAMPLE:
            raise ValueError(f"preprocessing.resize={self.resize!r}; choose one of {sorted(_RESAMPLE)}")
        if self.fit not in FITS:
            raise ValueError(f"preprocessing.fit={self.fit!r}; choose one of {list(FITS)}")

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        d = dict(d)
        d["image_size"] = tuple(d.get("image_size", cls.image_size))
        d["mean"] = tuple(d.get("mean", cls.mean))
        d["std"] = tuple(d.get("std", cls.std))
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.image_size)


FITS = ("squash", "center_crop", "letterbox")
_EXIF_IN_INFO = ("JPEG", "MPO", "PNG", "WEBP")

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def decode(data: bytes, spec: Preprocessing) -> np.ndarray:
    """Bytes → ``uint8`` array ``(C, H, W)``, or an :class:`ImageError`."""
    if not data:
        raise EmptyFile("zero-byte object")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # PIL's own, far larger limit
        raise ImageTooLarge(str(e)) from None
    except Image.DecompressionBombWarning as e:
        raise ImageTooLarge(str(e)) from None
    except Exception as e:  # PIL raises UnidentifiedImageError, but also SyntaxError, ValueError, ...
        raise NotAnImage(f"cannot identify image ({type(e).__name__}: {e})") from None
    with im:  # closes the source (multi-frame images keep their stream open until then)
        w, h = im.size
        if w * h > spec.max_pixels:
            raise ImageTooLarge(f"{w}x{h}={w * h} pixels exceeds max_pixels={spec.max_pixels}")
        try:
            im.seek(0)  # animated formats: first frame
            if im.format == "JPEG" and draft_scale(w, h, spec) > 1:
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT scaling) when the image is at least
                # twice the target (README "Benchmarks" has what it saves on photos). The
                # result is never smaller than the target (either orientation), and resize does the rest.
                side = max(spec.image_size)
                im.draft(None, (side, side))
            im.load()
            # EXIF orientation. JPEG, PNG and WebP put their EXIF block in ``info``: without one there is
            # nothing to apply, and the parse is skipped.
            if im.format not in _EXIF_IN_INFO or "exif" in im.info:
                im = ImageOps.exif_transpose(im)
            im = _to_mode(im, spec.channels)
            im = fit_image(im, spec)
            arr = np.asarray(im, dtype=np.uint8)
        except OSError as e:
            if "truncated" in str(e).lower() or "broken data stream" in str(e).lower():
                raise TruncatedImage(str(e)) from None
            raise NotAnImage(f"{type(e).__name__}: {e}") from None
        except (ValueError, SyntaxError, EOFError) as e:
            raise NotAnImage(f"{type(e).__name__}: {e}") from None
        except ImageError:
            raise
        except Exception as e:  # a decoder bug on these bytes: an error row, and the same on every run
            raise DecodeError(f"{type(e).__name__}: {e}") from None
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def draft_scale(w: int, h: int, spec: Preprocessing) -> int:
    """The DCT scale (1, 2, 4 or 8) at which :func:`decode` has libjpeg decode a ``w x h`` JPEG: 1 below
    twice the target's longer side, else the largest that keeps both sides at least that long (as
    PIL's ``draft`` picks it). The device decoder averages blocks of this size to match."""
    side = max(spec.image_size)
    if min(w, h) < 2 * side:
        return 1
    return max(s for s in (1, 2, 4, 8) if s <= min(w // side, h // side))


def fit_box(w: int, h: int, spec: Preprocessing) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Where a ``w x h`` image goes under ``spec.fit``: ``(source box, target box)``, each as
    ``(left, top, right, bottom)``. The source box is resized onto the target box of an
    ``image_size`` canvas; shared by the CPU decoder and the device (GPU) decoder."""
    th, tw = spec.image_size
    if spec.fit == "squash" or (w, h) == (tw, th):
        return (0, 0, w, h), (0, 0, tw, th)
    if spec.fit == "center_crop":
        # The largest centred box with the target's aspect ratio, then one resize (PIL's box= does
        # the crop and the resize in one pass, like ImageOps.fit).
        scale = min(w / tw, h / th)
        cw, ch = tw * scale, th * scale
        left, top = round((w - cw) / 2), round((h - ch) / 2)
        return (left, top, left + round(cw), top + round(ch)), (0, 0, tw, th)
    scale = min(tw / w, th / h)  # letterbox
    rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
    left, top = (tw - rw) // 2, (th - rh) // 2
    return (0, 0, w, h), (left, top, left + rw, top + rh)


def pad_color(spec: Preprocessing) -> int | tuple[int, ...]:
    """Letterbox padding: the normalisation mean, so padding is 0 after normalising."""
    c = tuple(int(round(m * 255)) for m in spec.mean)
    return c[0] if spec.channels == 1 else c


def fit_image(im: Image.Image, spec: Preprocessing) -> Image.Image:
    """An ``L``/``RGB`` image of any size → exactly ``image_size``, by ``spec.fit``."""
    th, tw = spec.image_size
    if im.size == (tw, th):
        return im
    (sl, st, sr, sb), (dl, dt, dr, db) = fit_box(*im.size, spec)
    resized = im.resize((dr - dl, db - dt), _RESAMPLE[spec.resize], box=(sl, st, sr, sb))
    if (dl, dt, dr, db) == (0, 0, tw, th):
        return resized
    canvas = Image.new(im.mode, (tw, th), pad_color(spec))
    canvas.paste(resized, (dl, dt))
    return canvas


def _to_mode(im: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode → ``L`` or ``RGB``, compositing transparency on white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits rather than clipping.
        a = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im.convert("RGBA"))
    target = "L" if channels == 1 else "RGB"
    if im.mode != target:
        im = im.convert(target)
    return im


def encode_png(arr: np.ndarray) -> bytes:
    """``(H, W)`` or ``(H, W, C)`` uint8 → PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


def encode_jpeg(arr: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
