"""Decoding: every odd input either decodes to the model's layout or raises a named ImageError."""

import io

import numpy as np
import pytest
from PIL import Image

from catalog_vision.ingest.errors import EmptyFile, ImageTooLarge, NotAnImage, TruncatedImage, error_string
from catalog_vision.ingest.images import Preprocessing, decode

GRAY = Preprocessing(image_size=(28, 28), channels=1, mean=(0.5,), std=(0.5,))
RGB = Preprocessing(image_size=(32, 32), channels=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_png_roundtrip_is_exact():
    arr = (np.arange(28 * 28) % 256).astype(np.uint8).reshape(28, 28)
    out = decode(encode(Image.fromarray(arr), "PNG"), GRAY)
    assert out.shape == (1, 28, 28) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], arr)


def test_rgb_input_to_gray_model_and_back():
    rgb = np.zeros((28, 28, 3), np.uint8)
    rgb[..., 0] = 255  # pure red: ITU-R 601 luma 0.299 * 255 ≈ 76
    out = decode(encode(Image.fromarray(rgb), "PNG"), GRAY)
    assert out.shape == (1, 28, 28) and abs(int(out[0, 0, 0]) - 76) <= 1
    gray = np.full((10, 10), 200, np.uint8)
    out = decode(encode(Image.fromarray(gray), "PNG"), RGB)
    assert out.shape == (3, 32, 32) and (out == 200).all()


def test_rgba_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    out = decode(encode(Image.fromarray(rgba, "RGBA"), "PNG"), RGB)
    assert (out == 255).all()


def test_16bit_png_scales_to_8bit():
    arr = np.full((8, 8), 65535, np.uint16)
    out = decode(encode(Image.fromarray(arr), "PNG"), GRAY)
    assert (out == 255).all()


def test_truncated_jpeg():
    full = encode(Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)), "JPEG")
    with pytest.raises(TruncatedImage):
        decode(full[: len(full) // 2], RGB)


def test_zero_byte_and_text_file():
    with pytest.raises(EmptyFile):
        decode(b"", GRAY)
    with pytest.raises(NotAnImage) as e:
        decode(b"hello, I am a text file named .png", GRAY)
    assert error_string(e.value).startswith("NotAnImage: ")


def test_oversized_image_rejected_before_decode():
    spec = Preprocessing(image_size=(28, 28), channels=1, mean=(0.5,), std=(0.5,), max_pixels=100 * 100)
    big = encode(Image.new("L", (101, 100)), "PNG")
    with pytest.raises(ImageTooLarge, match="max_pixels"):
        decode(big, spec)


def test_bad_preprocessing_values_name_the_choices():
    with pytest.raises(ValueError, match="1 or 3"):
        Preprocessing(channels=2, mean=(0.5, 0.5), std=(0.5, 0.5))
    with pytest.raises(ValueError, match="bilinear"):
        Preprocessing(resize="lanczos9")


def test_cmyk_jpeg_decodes_to_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    out = decode(encode(cmyk, "JPEG", quality=95), RGB)
    r, g, b = (int(out[c].mean()) for c in range(3))
    assert out.shape == (3, 32, 32) and r > 200 and g < 60 and b < 60


def test_palette_png():
    pal = Image.new("P", (8, 8))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.paste(1, (0, 0, 8, 8))
    out = decode(encode(pal, "PNG"), RGB)
    assert tuple(int(out[c, 0, 0]) for c in range(3)) == (10, 200, 30)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_exif_rotation_is_applied(fmt):
    # A 20x10 landscape image whose EXIF says "rotate 90° CW" (orientation 6) is portrait once applied.
    arr = np.zeros((10, 20), np.uint8)
    arr[:, :10] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(arr), fmt, exif=exif.tobytes(), **({"quality": 100} if fmt in ("JPEG", "WEBP") else {}))
    spec = Preprocessing(image_size=(20, 10), channels=1, mean=(0.5,), std=(0.5,))
    out = decode(data, spec)[0]
    assert out.shape == (20, 10)
    assert out[:10].mean() > 200 and out[10:].mean() < 50  # the white half is now on top


def test_animated_gif_uses_first_frame():
    frames = [Image.new("L", (8, 8), 0), Image.new("L", (8, 8), 255)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = decode(buf.getvalue(), GRAY)
    assert (out == 0).all()


def test_unsupported_format_is_not_an_image():
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
    with pytest.raises(NotAnImage):
        decode(svg, GRAY)


def _bars(w: int, h: int) -> bytes:
    """A wide RGB image: red left third, green middle, blue right third (PNG: lossless)."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 3, 0] = 255
    arr[:, w // 3 : 2 * w // 3, 1] = 255
    arr[:, 2 * w // 3 :, 2] = 255
    return encode(Image.fromarray(arr), "PNG")


@pytest.mark.parametrize("fit", ["squash", "center_crop", "letterbox"])
def test_fit_policies_on_a_wide_photo(fit):
    spec = Preprocessing(image_size=(30, 30), channels=3, mean=(0.2, 0.4, 0.6), std=(0.2, 0.2, 0.2), fit=fit)
    out = decode(_bars(300, 100), spec)  # 3:1 aspect ratio
    assert out.shape == (3, 30, 30)
    if fit == "squash":  # all three bars survive, stretched: red at the left edge, blue at the right
        assert out[0, 15, 2] == 255 and out[1, 15, 15] == 255 and out[2, 15, 27] == 255
    elif fit == "center_crop":  # only the middle third (green) is left (the filter reaches one pixel past the box)
        assert (out[1, :, 1:29] == 255).all() and out[0, :, 1:].max() == 0 and out[2, :, :29].max() == 0
    else:  # letterbox: the whole image in a 30x10 band, padded above and below with the mean colour
        assert tuple(out[:, 2, 15]) == (51, 102, 153) and tuple(out[:, 27, 15]) == (51, 102, 153)
        assert out[0, 15, 2] == 255 and out[2, 15, 27] == 255


def test_fit_of_a_tall_photo_keeps_the_middle():
    arr = np.zeros((300, 100), np.uint8)
    arr[100:200] = 255  # white middle third
    spec = Preprocessing(image_size=(20, 20), channels=1, mean=(0.5,), std=(0.5,), fit="center_crop")
    out = decode(encode(Image.fromarray(arr), "PNG"), spec)[0]
    assert out[2:18].min() == 255


def test_unknown_fit_names_the_choices():
    with pytest.raises(ValueError, match="center_crop"):
        Preprocessing(fit="stretch")


@pytest.mark.parametrize("fit", ["squash", "center_crop", "letterbox"])
def test_device_decoder_fits_like_the_cpu_decoder(fit):
    """GPU JPEG decode resizes with torch; it must place the image in the same box as the CPU path."""
    import torch

    from catalog_vision.infer.device_decode import fit_tensor

    spec = Preprocessing(image_size=(30, 40), channels=3, mean=(0.2, 0.4, 0.6), std=(0.2, 0.2, 0.2), fit=fit)
    data = _bars(300, 100)
    cpu = decode(data, spec).astype(np.int16)
    full = torch.from_numpy(np.asarray(Image.open(io.BytesIO(data))).transpose(2, 0, 1).copy())
    dev = fit_tensor(full, spec).numpy().astype(np.int16)
    assert dev.shape == cpu.shape == (3, 30, 40)
    # Different resize kernels (PIL vs torch antialias) differ at the bar edges only.
    assert np.mean(np.abs(dev - cpu) > 40) < 0.05


@pytest.mark.parametrize("resize", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("fit", ["squash", "center_crop", "letterbox"])
def test_device_decoder_resizes_with_the_checkpoints_interpolation(fit, resize):
    """On noise (where the kernels differ most) the device resize matches the CPU decoder with the
    same preprocessing.resize to within rounding, and is further from the other two kernels."""
    import torch

    from catalog_vision.infer.device_decode import fit_tensor

    arr = np.kron(np.random.default_rng(0).integers(0, 256, (50, 100, 3)), np.ones((2, 3, 1))).astype(np.uint8)
    data = encode(Image.fromarray(arr), "PNG")  # 300x100, lossless
    specs = {r: Preprocessing(image_size=(30, 40), channels=3, mean=(0.2, 0.4, 0.6), std=(0.2, 0.2, 0.2), fit=fit, resize=r) for r in ("nearest", "bilinear", "bicubic")}
    dev = fit_tensor(torch.from_numpy(arr.transpose(2, 0, 1).copy()), specs[resize]).numpy().astype(float)
    diff = {r: float(np.abs(dev - decode(data, spec).astype(float)).mean()) for r, spec in specs.items()}
    assert diff[resize] < 0.5 and min(d for r, d in diff.items() if r != resize) > diff[resize] + 1, diff


def test_local_fetch_gives_each_file_its_own_outcome(tmp_path):
    from catalog_vision.ingest.dataset import fetch_and_decode

    good = tmp_path / "good.png"
    good.write_bytes(encode(Image.fromarray(np.full((28, 28), 7, np.uint8)), "PNG"))
    (tmp_path / "adir.png").mkdir()
    uris = [str(good), str(tmp_path / "missing.png"), str(tmp_path / "adir.png"), "file://" + str(good)]
    out = fetch_and_decode({"image_id": np.array(uris, dtype=object), "uri": np.array(uris, dtype=object), "label": np.array([None] * 4, dtype=object)}, GRAY.to_dict())
    assert [None if e is None else e.split(":", 1)[0] for e in out["error"]] == [None, "MissingObject", "ReadError", None]
    assert int(out["pixels"][0].max()) == 7 and int(out["pixels"][3].max()) == 7


def test_an_undocumented_decoder_failure_is_a_final_error_row(monkeypatch):
    """A decoder bug (here exif_transpose raising KeyError, as malformed EXIF blocks have made it do)
    is a DecodeError row, which is committed like any bad image, not a ReadError the next run would
    retry forever (review 3.15)."""
    from PIL import ImageOps

    from catalog_vision.backfill.outcome import is_retryable

    def broken(im, **kw):
        raise KeyError(274)  # the orientation tag

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    im = Image.new("RGB", (32, 24), (200, 10, 10))
    exif = im.getexif()
    exif[0x0112] = 6
    data = encode(im, "JPEG", exif=exif.tobytes())
    with pytest.raises(Exception) as info:
        decode(data, Preprocessing(image_size=(16, 16), channels=3, mean=(0.5,) * 3, std=(0.5,) * 3))
    row = error_string(info.value)
    assert row.startswith("DecodeError: KeyError: 274") and not is_retryable(row)


def test_decode_closes_the_images_it_opens(monkeypatch):
    """A multi-frame image keeps its stream open after load(); decode closes every image it opened,
    also when it refuses one. (A spy on Image.open: the stream's state is not observable otherwise.)"""
    opened = []
    real_open = Image.open

    def spy(*args, **kwargs):
        opened.append(real_open(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(Image, "open", spy)
    frames = [Image.fromarray(np.full((28, 28), v, np.uint8)) for v in (10, 200)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = decode(gif, GRAY)
    assert abs(int(out[0, 0, 0]) - 10) <= 1  # the first frame
    with pytest.raises(ImageTooLarge):
        decode(encode(Image.new("L", (300, 300)), "PNG"), Preprocessing(image_size=(28, 28), channels=1, mean=(0.5,), std=(0.5,), max_pixels=1000))
    assert len(opened) == 2 and all(im.fp is None for im in opened), [im.fp for im in opened]
