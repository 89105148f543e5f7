"""Decoding: every odd input either decodes to the model's layout or raises a named ImageError."""

import io

import numpy as np
import pytest
from PIL import Image

from catalog_vision.images import EmptyFile, ImageTooLarge, NotAnImage, Preprocessing, TruncatedImage, decode, error_string

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
