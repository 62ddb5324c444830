"""Tests of pneumo_core.imaging: decoding every supported image mode, refusing bad input, squashing."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pneumo_core.imaging import MIN_SIDE, conversion_note, decode_grayscale, fit_within, png_bytes, resize_square

HEIGHT, WIDTH = 80, 96


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    """Save a Pillow image to bytes in ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def gray_array() -> np.ndarray:
    """A deterministic ``(80, 96)`` uint8 image: a left-to-right ramp plus a little noise."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(10, 245, WIDTH)[None, :].repeat(HEIGHT, axis=0)
    return np.clip(ramp + rng.normal(0, 3, (HEIGHT, WIDTH)), 0, 255).astype(np.uint8)


def assert_gray_uint8(out: np.ndarray, shape: tuple[int, int]) -> None:
    """The decoder's contract: a 2-D uint8 array of the given shape."""
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8
    assert out.ndim == 2
    assert out.shape == shape


def test_decode_plain_grayscale_png_is_lossless(gray_array):
    """An 8-bit grayscale PNG decodes to exactly the stored pixels."""
    out = decode_grayscale(encode(Image.fromarray(gray_array, mode="L"), "PNG"))
    assert_gray_uint8(out, (HEIGHT, WIDTH))
    np.testing.assert_array_equal(out, gray_array)


def test_decode_rgb_jpeg_matches_luminance(gray_array):
    """An RGB JPEG of a gray image decodes to (nearly) the same gray values."""
    rgb = Image.fromarray(np.stack([gray_array] * 3, axis=-1), mode="RGB")
    out = decode_grayscale(encode(rgb, "JPEG", quality=95))
    assert_gray_uint8(out, (HEIGHT, WIDTH))
    assert np.abs(out.astype(int) - gray_array.astype(int)).mean() < 3


def test_decode_rgba_composites_transparency_on_black():
    """RGBA: fully transparent pixels become black, opaque white stays white."""
    rgba = np.zeros((HEIGHT, WIDTH, 4), dtype=np.uint8)
    rgba[..., :3] = 255
    rgba[:, WIDTH // 2 :, 3] = 255  # right half opaque white, left half transparent white
    image = Image.fromarray(rgba, mode="RGBA")
    assert Image.open(io.BytesIO(encode(image, "PNG"))).mode == "RGBA"
    out = decode_grayscale(encode(image, "PNG"))
    assert_gray_uint8(out, (HEIGHT, WIDTH))
    assert out[:, : WIDTH // 2].max() == 0
    assert out[:, WIDTH // 2 :].min() >= 250


def test_decode_16bit_png_is_stretched_to_full_range():
    """A 16-bit (mode I;16) PNG is stretched linearly to 0-255, keeping the order of values."""
    values = np.linspace(1000, 3000, WIDTH)[None, :].repeat(HEIGHT, axis=0).astype(np.uint16)
    image = Image.fromarray(values)
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode_grayscale(data)
    assert_gray_uint8(out, (HEIGHT, WIDTH))
    assert out.min() == 0
    assert out.max() == 255
    assert np.all(np.diff(out[0].astype(int)) >= 0)
    assert abs(int(out[0, WIDTH // 2]) - 128) <= 3


def test_decode_constant_16bit_image_gives_zeros():
    """A flat 16-bit image (max == min) decodes to zeros instead of dividing by zero."""
    flat = np.full((HEIGHT, WIDTH), 4000, dtype=np.uint16)
    out = decode_grayscale(encode(Image.fromarray(flat), "PNG"))
    assert_gray_uint8(out, (HEIGHT, WIDTH))
    assert not out.any()


def test_decode_palette_png(gray_array):
    """A palette (P) PNG decodes to 2-D uint8 close to the original gray values."""
    rgb = Image.fromarray(np.stack([gray_array] * 3, axis=-1), mode="RGB")
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    data = encode(palette, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = decode_grayscale(data)
    assert_gray_uint8(out, (HEIGHT, WIDTH))
    assert np.abs(out.astype(int) - gray_array.astype(int)).mean() < 6


def test_decode_cmyk_jpeg(gray_array):
    """A CMYK JPEG decodes to 2-D uint8 with the original brightness pattern (dark left, bright right)."""
    data = encode(Image.fromarray(gray_array, mode="L").convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_grayscale(data)
    assert_gray_uint8(out, (HEIGHT, WIDTH))
    assert out[:, :10].mean() < 50
    assert out[:, -10:].mean() > 200


def test_decode_la_png(gray_array):
    """A gray+alpha (LA) PNG with full opacity decodes to the gray values."""
    image = Image.fromarray(gray_array, mode="L").convert("LA")
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "LA"
    out = decode_grayscale(data)
    assert_gray_uint8(out, (HEIGHT, WIDTH))
    assert np.abs(out.astype(int) - gray_array.astype(int)).max() <= 1


def test_decode_one_bit_png():
    """A 1-bit PNG decodes to black and white 0/255 uint8 pixels."""
    bits = np.zeros((HEIGHT, WIDTH), dtype=bool)
    bits[:, WIDTH // 2 :] = True
    data = encode(Image.fromarray(bits), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "1"
    out = decode_grayscale(data)
    assert_gray_uint8(out, (HEIGHT, WIDTH))
    assert set(np.unique(out).tolist()) == {0, 255}
    assert out[:, : WIDTH // 2].max() == 0
    assert out[:, WIDTH // 2 :].min() == 255


def test_decode_float_tiff_is_stretched():
    """A 32-bit float (F) TIFF is stretched to 0-255."""
    values = np.linspace(-1.5, 2.5, WIDTH, dtype=np.float32)[None, :].repeat(HEIGHT, axis=0)
    data = encode(Image.fromarray(values, mode="F"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    out = decode_grayscale(data)
    assert_gray_uint8(out, (HEIGHT, WIDTH))
    assert out[0, 0] == 0
    assert out[0, -1] == 255
    assert np.all(np.diff(out[0].astype(int)) >= 0)


def test_decode_honours_exif_orientation():
    """A JPEG stored 100 wide x 70 high with EXIF orientation 6 (rotate 90 CW) comes out 100 high x 70 wide.

    The stored left half is bright; after a clockwise quarter turn it must be at the top.
    """
    stored = np.full((70, 100), 20, dtype=np.uint8)
    stored[:, :50] = 230
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(stored, mode="L"), "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).size == (100, 70)
    out = decode_grayscale(data)
    assert_gray_uint8(out, (100, 70))
    assert out[:45].mean() > 200
    assert out[55:].mean() < 50


def test_empty_bytes_are_refused():
    """Empty bytes raise a ValueError that says the file is empty."""
    with pytest.raises(ValueError, match="empty"):
        decode_grayscale(b"")


def test_random_bytes_are_refused():
    """Random bytes are not an image: ValueError asking for a JPEG or PNG."""
    junk = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(ValueError, match="not an image"):
        decode_grayscale(junk)


def test_text_renamed_png_is_refused(tmp_path):
    """A text file renamed to .png is refused as not an image."""
    path = tmp_path / "notes.png"
    path.write_text("patient notes, definitely not pixels\n" * 20)
    with pytest.raises(ValueError, match="not an image"):
        decode_grayscale(path.read_bytes())


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_refused(gray_array, fmt):
    """A JPEG or PNG cut in half raises ValueError about a corrupt or truncated file."""
    noisy = np.random.default_rng(2).integers(0, 256, (HEIGHT * 2, WIDTH * 2), dtype=np.uint8)
    data = encode(Image.fromarray(noisy, mode="L"), fmt)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        decode_grayscale(data[: len(data) // 2])


def png_with_claimed_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR is rewritten to claim ``width`` x ``height`` (CRC fixed)."""
    data = bytearray(encode(Image.new("L", (64, 64), 0), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def test_decompression_bomb_is_refused():
    """A ~100-byte PNG claiming 20000 x 20000 px is refused before any pixel is decoded."""
    data = png_with_claimed_size(20000, 20000)
    assert len(data) < 1000
    with pytest.raises(ValueError, match="decompression bomb"):
        decode_grayscale(data)


def test_image_over_the_megapixel_limit_is_refused():
    """A PNG claiming 10000 x 6000 px (60 MP, under Pillow's own bomb limit) hits the 50 MP limit."""
    with pytest.raises(ValueError, match="megapixels"):
        decode_grayscale(png_with_claimed_size(10000, 6000))


@pytest.mark.parametrize("size", [(MIN_SIDE - 1, 200), (200, 40), (10, 10)])
def test_too_small_images_are_refused(size):
    """An image with a side under 64 px raises ValueError naming its size and the minimum."""
    width, height = size
    data = encode(Image.new("L", (width, height), 128), "PNG")
    with pytest.raises(ValueError, match=f"{width}x{height} px.*at least {MIN_SIDE} px"):
        decode_grayscale(data)


def test_minimum_side_is_accepted():
    """An image exactly 64 px on its short side is accepted."""
    out = decode_grayscale(encode(Image.new("L", (64, 300), 77), "PNG"))
    assert_gray_uint8(out, (300, 64))
    assert (out == 77).all()


def test_resize_square_squashes_instead_of_cropping():
    """100 x 300 -> 64 x 64 keeps the whole width: a bright left third stays as the left third.

    A centre crop would lose the bright band entirely.
    """
    gray = np.full((100, 300), 10, dtype=np.uint8)
    gray[:, :100] = 240
    square = resize_square(gray, 64)
    assert square.shape == (64, 64)
    assert square.dtype == np.uint8
    assert square[:, :20].mean() > 230
    assert square[:, 23:].mean() < 20
    assert abs(int((square > 125).any(axis=0).sum()) - round(64 / 3)) <= 1


def test_resize_square_keeps_left_right_pattern_when_enlarging():
    """Enlarging a 70 x 90 image to 160 x 160 keeps dark-left / bright-right."""
    gray = np.zeros((70, 90), dtype=np.uint8)
    gray[:, 45:] = 200
    square = resize_square(gray, 160)
    assert square.shape == (160, 160)
    assert square[:, :70].max() < 10
    assert square[:, 90:].min() > 190


def test_resize_square_rejects_non_2d():
    """resize_square refuses a colour (3-D) array."""
    with pytest.raises(ValueError, match="2-D"):
        resize_square(np.zeros((80, 80, 3), dtype=np.uint8), 64)


def test_fit_within_keeps_aspect_and_small_images():
    """fit_within shrinks the longer side to max_side, keeping the aspect ratio; small images pass as is."""
    tall = np.zeros((3000, 1500), dtype=np.uint8)
    assert fit_within(tall, 1024).shape == (1024, 512)
    small = np.zeros((300, 200), dtype=np.uint8)
    assert fit_within(small, 1024) is small


@pytest.mark.parametrize("shape", [(70, 90), (70, 90, 3)])
def test_png_bytes_round_trip(shape):
    """png_bytes encodes grayscale and RGB uint8 arrays losslessly."""
    array = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(array))))
    np.testing.assert_array_equal(decoded, array)


def test_conversion_note_names_unusual_modes():
    """16-bit, CMYK and transparent images get a note on their conversion; plain 8-bit images do not."""
    sixteen = Image.fromarray(np.full((80, 80), 40000, dtype=np.uint16))
    assert "stretched to 8 bits" in conversion_note(encode(sixteen, "PNG"))
    assert "CMYK" in conversion_note(encode(Image.new("CMYK", (80, 80)), "JPEG"))
    assert "transparency" in conversion_note(encode(Image.new("RGBA", (80, 80)), "PNG"))
    assert conversion_note(encode(Image.new("L", (80, 80)), "PNG")) is None
