"""JPEG decoding on the predictor's device (``predictor.jpeg_decode_on_device``: nvJPEG on GPUs),
matching the CPU decoder (:func:`catalog_vision.ingest.images.decode`): the same DCT draft scale, fit boxes and
interpolation, so a model sees the same pixels whichever side decoded them.
"""

from __future__ import annotations

import numpy as np
import torch

from ..ingest.errors import ImageError, error_string, is_error
from ..ingest.images import Preprocessing, decode, draft_scale, fit_box, pad_color


def fit_tensor(im: torch.Tensor, spec: Preprocessing) -> torch.Tensor:
    """``uint8 (C, h, w)`` on any device → ``(C, *image_size)`` by ``spec.fit``: the same boxes as
    :func:`images.fit_image` on the CPU decoder."""
    from ..models.tv import load as load_torchvision

    load_torchvision()
    from torchvision.transforms.v2 import functional as F

    th, tw = spec.image_size
    h, w = im.shape[-2:]
    if (h, w) == (th, tw):
        return im
    (sl, st, sr, sb), (dl, dt, dr, db) = fit_box(w, h, spec)
    # The checkpoint's interpolation, as on the CPU path. PIL's NEAREST samples pixel centres: torch's
    # NEAREST_EXACT (its NEAREST takes the pixel to the left, a different image).
    mode = F.InterpolationMode.NEAREST_EXACT if spec.resize == "nearest" else getattr(F.InterpolationMode, spec.resize.upper())
    im = F.resize(im[..., st:sb, sl:sr], [db - dt, dr - dl], interpolation=mode, antialias=spec.resize != "nearest")
    if (dl, dt, dr, db) == (0, 0, tw, th):
        return im
    out = torch.empty((im.shape[0], th, tw), dtype=im.dtype, device=im.device)
    out[:] = torch.tensor(pad_color(spec), dtype=im.dtype, device=im.device).view(-1, 1, 1)
    out[:, dt:db, dl:dr] = im
    return out


def draft_tensor(im: torch.Tensor, spec: Preprocessing) -> torch.Tensor:
    """A full-size decoded JPEG ``uint8 (C, h, w)`` → what libjpeg's DCT scaling gives the CPU decoder
    (:func:`images.draft_scale`): the mean of each ``s x s`` block (the partial blocks at the edges too)."""
    s = draft_scale(im.shape[-1], im.shape[-2], spec)
    if s == 1:
        return im
    return torch.nn.functional.avg_pool2d(im[None].float(), s, ceil_mode=True)[0].round_().to(torch.uint8)


@torch.inference_mode()
def decode_jpegs(encoded: list[bytes], spec: Preprocessing, device: torch.device) -> tuple[torch.Tensor, list[str | None]]:
    """JPEG bytes → ``uint8 (N,C,H,W)`` on the predictor's device (nvJPEG on CUDA, libjpeg on CPU).

    The same size check, EXIF orientation and channel conversion as the CPU decoder; an image
    the device decoder rejects (e.g. CMYK on nvJPEG) falls back to :func:`images.decode`.
    """
    from ..models.tv import load as load_torchvision

    load_torchvision()
    from torchvision.io import ImageReadMode, decode_jpeg
    mode = ImageReadMode.GRAY if spec.channels == 1 else ImageReadMode.RGB
    out = torch.zeros((len(encoded), *spec.shape), dtype=torch.uint8, device=device)
    errors: list[str | None] = [None] * len(encoded)
    datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in encoded]
    try:
        images = decode_jpeg(datas, mode=mode, device=device, apply_exif_orientation=True)
    except RuntimeError:
        images = [None] * len(encoded)  # one bad image fails the batched call: go one by one
    for i, (raw, im) in enumerate(zip(encoded, images)):
        try:
            if im is None:
                im = decode_jpeg(datas[i], mode=mode, device=device, apply_exif_orientation=True)
            out[i] = fit_tensor(draft_tensor(im, spec), spec)
        except RuntimeError:
            try:
                out[i] = torch.from_numpy(decode(raw, spec)).to(device)
            except ImageError as e:
                errors[i] = error_string(e)
    return out, errors


def assemble(encoded, decoded, errors, spec: Preprocessing, device: torch.device, to_device) -> tuple[torch.Tensor, np.ndarray]:
    """A ``defer_jpeg`` batch's pixels, made on the predictor's device: CPU-decoded rows from
    their ``decoded`` bytes, deferred JPEGs decoded there (:func:`decode_jpegs`)."""
    errors = np.array(errors, dtype=object)
    pixels = torch.zeros((len(errors), *spec.shape), dtype=torch.uint8, device=device)
    ok = [i for i in range(len(errors)) if not is_error(errors[i])]
    cpu = [i for i in ok if len(decoded[i])]
    if cpu:
        rows = np.stack([np.frombuffer(decoded[i], dtype=np.uint8).reshape(spec.shape) for i in cpu])
        pixels[torch.as_tensor(cpu, device=pixels.device)] = to_device(rows)
    todo = [i for i in ok if not len(decoded[i]) and len(encoded[i])]
    if todo:
        images, errs = decode_jpegs([bytes(encoded[i]) for i in todo], spec, device)
        pixels[torch.as_tensor(todo, device=pixels.device)] = images
        for i, e in zip(todo, errs):
            errors[i] = e
    return pixels, errors
