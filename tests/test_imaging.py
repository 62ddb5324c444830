"""Tests of pneumo_core.imaging: decoding every supported image mode, refusing bad input, squashing.

The hostile and odd inputs of issue 6 are in ``test_bad_inputs.py``; these are the unit tests of the
public interface (``read_xray``, ``read_xray_file``, ``is_supported_file``, the intensity rule, the
square contract).
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import bad_inputs
import numpy as np
import pytest
from PIL import Image

from pneumo_core import imaging
from pneumo_core.imaging import (
    MIN_SIDE,
    SUPPORTED_SUFFIXES,
    ImageRejected,
    XRay,
    decode_grayscale,
    fit_within,
    is_supported_file,
    png_bytes,
    read_xray,
    read_xray_file,
    resize_square,
)

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


def test_decode_rgba_composites_transparency_on_black(gray_array):
    """RGBA: fully transparent pixels become black, opaque ones keep their gray value."""
    rgba = np.dstack([gray_array] * 3 + [np.zeros_like(gray_array)])
    rgba[:, WIDTH // 2 :, 3] = 255  # right half opaque, left half transparent
    image = Image.fromarray(rgba, mode="RGBA")
    assert Image.open(io.BytesIO(encode(image, "PNG"))).mode == "RGBA"
    out = decode_grayscale(encode(image, "PNG"))
    assert_gray_uint8(out, (HEIGHT, WIDTH))
    assert out[:, : WIDTH // 2].max() == 0
    np.testing.assert_array_equal(out[:, WIDTH // 2 :], gray_array[:, WIDTH // 2 :])


def test_decode_16bit_png_maps_its_nominal_range():
    """A 16-bit PNG holding 12-bit values (1000-3000) is mapped from 0-4095, not stretched to its min and max."""
    values = np.linspace(1000, 3000, WIDTH)[None, :].repeat(HEIGHT, axis=0).astype(np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    xray = read_xray(data)
    assert_gray_uint8(xray.gray, (HEIGHT, WIDTH))
    np.testing.assert_array_equal(xray.gray, np.rint(values * (255 / 4095)).astype(np.uint8))
    assert xray.gray.min() == 62
    assert xray.gray.max() == 187
    assert "read as 12-bit (0-4095)" in xray.notes[0]


@pytest.mark.parametrize(
    ("top", "note"),
    [
        (255, "only uses the 8-bit range (0-255)"),
        (1023, "read as 10-bit (0-1023)"),
        (4095, "read as 12-bit (0-4095)"),
        (16383, "read as 14-bit (0-16383)"),
        (65535, "read as 16-bit (0-65535)"),
    ],
)
def test_bit_depth_is_inferred_from_the_values(top, note):
    """The nominal depth is the smallest of 8/10/12/14/16 bits holding the values: their top maps to 255."""
    values = np.linspace(0, top, WIDTH)[None, :].repeat(HEIGHT, axis=0).astype(np.uint16)
    gray, notes = imaging._high_depth_to_uint8(values)
    assert gray.max() == 255
    assert gray.min() == 0
    assert note in notes[0]


def test_hot_pixels_do_not_change_the_inferred_depth():
    """A few hot pixels (under 0.1 %) at 65535 in a 12-bit image are clipped; the rest is read as 12-bit."""
    values = np.linspace(0, 4095, WIDTH)[None, :].repeat(HEIGHT, axis=0).astype(np.uint16)
    hot = values.copy()
    hot[0, :5] = 65535
    gray, notes = imaging._high_depth_to_uint8(hot)
    expected, _ = imaging._high_depth_to_uint8(values)
    np.testing.assert_array_equal(gray[1:], expected[1:])
    assert (gray[0, :5] == 255).all()
    assert notes[1] == "5 pixel(s) brighter than the 12-bit range (hot pixels?) were clipped to white."


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_refused(bad):
    """Float pixel data with NaN or infinity is refused (it used to decode to a black image)."""
    values = np.linspace(0.0, 1000.0, HEIGHT * WIDTH, dtype=np.float32).reshape(HEIGHT, WIDTH)
    values[5, 7] = bad
    with pytest.raises(ImageRejected, match=r"1 pixel\(s\) that are not numbers \(NaN or infinite\)"):
        imaging._high_depth_to_uint8(values)


def test_constant_16bit_image_is_refused():
    """A flat 16-bit image is blank: refused, not decoded to zeros."""
    flat = np.full((HEIGHT, WIDTH), 4000, dtype=np.uint16)
    with pytest.raises(ImageRejected, match="The image is blank"):
        decode_grayscale(encode(Image.fromarray(flat), "PNG"))


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


def test_one_bit_png_is_refused():
    """A 1-bit (black and white only) PNG is not an X-ray: refused for having 2 grey levels."""
    bits = np.zeros((HEIGHT, WIDTH), dtype=bool)
    bits[:, WIDTH // 2 :] = True
    data = encode(Image.fromarray(bits), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "1"
    with pytest.raises(ImageRejected, match="only 2 grey levels"):
        decode_grayscale(data)


def test_float_tiff_is_refused_as_unsupported():
    """TIFF (here a 32-bit float one) is not a supported format: refused by name, never decoded."""
    values = np.linspace(-1.5, 2.5, WIDTH, dtype=np.float32)[None, :].repeat(HEIGHT, axis=0)
    data = encode(Image.fromarray(values, mode="F"), "TIFF")
    with pytest.raises(ImageRejected, match="This is a TIFF file, a format not read here"):
        decode_grayscale(data)


def test_decode_honours_exif_orientation():
    """A JPEG stored 100 wide x 70 high with EXIF orientation 6 (rotate 90 CW) comes out 100 high x 70 wide.

    The stored left half is bright; after a clockwise quarter turn it must be at the top.
    """
    stored = np.random.default_rng(4).integers(0, 40, (70, 100), dtype=np.uint8)
    stored[:, :50] += 200
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
    """A ~100-byte PNG claiming 20000 x 20000 px is refused (from its header) before any pixel is decoded."""
    data = png_with_claimed_size(20000, 20000)
    assert len(data) < 1000
    with pytest.raises(ImageRejected, match=r"400 megapixels.*looks like a decompression bomb"):
        decode_grayscale(data)


def test_image_over_the_megapixel_limit_is_refused():
    """A PNG claiming 10000 x 6000 px (60 MP, under Pillow's own bomb limit) hits the 50 MP limit."""
    with pytest.raises(ValueError, match="megapixels"):
        decode_grayscale(png_with_claimed_size(10000, 6000))


def test_pillow_bomb_error_is_a_refusal(monkeypatch):
    """Should Pillow's own decompression-bomb guard fire, it is a refusal with a reason, not a traceback."""

    def bomb(*args, **kwargs):
        raise Image.DecompressionBombError("too many pixels")

    monkeypatch.setattr(imaging.Image, "open", bomb)
    with pytest.raises(ImageRejected, match="far too large to decode safely"):
        decode_grayscale(encode(Image.new("L", (80, 80)), "PNG"))


@pytest.mark.parametrize("size", [(MIN_SIDE - 1, 200), (200, 40), (10, 10)])
def test_too_small_images_are_refused(size):
    """An image with a side under 64 px raises ValueError naming its size and the minimum."""
    width, height = size
    data = encode(Image.new("L", (width, height), 128), "PNG")
    with pytest.raises(ValueError, match=f"{width}x{height} px.*at least {MIN_SIDE} px"):
        decode_grayscale(data)


def test_minimum_side_is_accepted():
    """An image exactly 64 px on its short side is accepted."""
    texture = np.random.default_rng(5).integers(0, 256, (300, 64), dtype=np.uint8)
    out = decode_grayscale(encode(Image.fromarray(texture), "PNG"))
    assert_gray_uint8(out, (300, 64))
    np.testing.assert_array_equal(out, texture)


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


def test_every_converted_mode_gets_a_note(gray_array):
    """16-bit, CMYK, transparent, palette and RGB images get a note on their conversion; plain 8-bit ones do not."""

    def notes(image: Image.Image, fmt: str = "PNG") -> str:
        return " ".join(read_xray(encode(image, fmt)).notes)

    gray = Image.fromarray(gray_array)
    assert "converted linearly to 8 bits" in notes(Image.fromarray(gray_array.astype(np.uint16) * 257))
    assert "CMYK" in notes(gray.convert("CMYK"), "JPEG")
    rgba = np.dstack([gray_array] * 3 + [np.full_like(gray_array, 128)])
    assert "transparent areas" in notes(Image.fromarray(rgba))
    assert "palette" in notes(gray.convert("P"))
    assert "gray picture" in notes(gray.convert("RGB"))
    assert read_xray(encode(gray, "PNG")).notes == ()


# --- read_xray and XRay ---------------------------------------------------------------------------


def test_read_xray_fills_every_field(gray_array):
    """An XRay carries the gray pixels, the sniffed format, no notes, technical metadata and the sha256."""
    data = encode(Image.fromarray(gray_array), "PNG")
    xray = read_xray(data, "scan.png")
    assert isinstance(xray, XRay)
    np.testing.assert_array_equal(xray.gray, gray_array)
    assert xray.source_format == "PNG"
    assert xray.notes == ()
    assert xray.metadata == (("Format", "PNG"), ("Size", f"{WIDTH} x {HEIGHT} px"), ("Pixel mode", "L"))
    assert xray.digest == hashlib.sha256(data).hexdigest()


def test_xray_is_immutable(gray_array):
    """An XRay (shared by cached readings across sessions) cannot be changed: frozen, pixels read-only."""
    xray = read_xray(encode(Image.fromarray(gray_array), "PNG"))
    with pytest.raises(ValueError, match="read-only"):
        xray.gray[0, 0] = 1
    with pytest.raises(AttributeError):
        xray.notes = ("changed",)


def test_the_content_decides_the_format_not_the_name(gray_array):
    """JPEG bytes named ``.png`` are read as JPEG; PNG bytes named ``.dcm`` as PNG."""
    jpeg = encode(Image.fromarray(gray_array), "JPEG", quality=95)
    assert read_xray(jpeg, "scan.png").source_format == "JPEG"
    assert read_xray(encode(Image.fromarray(gray_array), "PNG"), "scan.dcm").source_format == "PNG"


def test_refusals_are_value_errors():
    """ImageRejected is a ValueError, so callers that caught decode_grayscale's ValueError still work."""
    assert issubclass(ImageRejected, ValueError)
    with pytest.raises(ValueError, match="empty"):
        read_xray(b"")


@pytest.fixture(scope="module")
def sample_xray() -> np.ndarray:
    """A real pediatric chest X-ray (a shipped sample) as 8-bit gray."""
    return bad_inputs.xray_gray()


def test_one_xray_in_four_encodings_reads_the_same(sample_xray):
    """One rule for every bit depth: the same X-ray as 8-bit PNG, 16-bit PNG (x 257), RGB JPEG and L JPEG
    gives the same gray array (exactly for the PNGs, within JPEG's error for the JPEGs)."""
    as_png = read_xray(encode(Image.fromarray(sample_xray), "PNG")).gray
    as_16_bit = read_xray(encode(Image.fromarray(sample_xray.astype(np.uint16) * 257), "PNG")).gray
    as_rgb_jpeg = read_xray(encode(Image.fromarray(sample_xray).convert("RGB"), "JPEG", quality=95)).gray
    as_gray_jpeg = read_xray(encode(Image.fromarray(sample_xray), "JPEG", quality=95)).gray
    np.testing.assert_array_equal(as_png, sample_xray)
    np.testing.assert_array_equal(as_16_bit, sample_xray)
    for jpeg in (as_rgb_jpeg, as_gray_jpeg):
        error = np.abs(jpeg.astype(int) - sample_xray.astype(int))
        assert error.mean() < 1.0
        assert np.percentile(error, 99) <= 4


def test_dicom_goes_through_the_dicom_decoder(sample_xray):
    """DICM at offset 128 sends the bytes to pneumo_core.dicom; its notes and metadata end up in the XRay."""
    xray = read_xray(bad_inputs.dicom(sample_xray), "IM0001")
    assert xray.source_format == "DICOM"
    np.testing.assert_array_equal(xray.gray, sample_xray)
    assert ("Modality", "DX") in xray.metadata


# --- Reading files ------------------------------------------------------------------------------


def test_read_xray_file_reads_a_regular_file(tmp_path, gray_array):
    """read_xray_file gives the same XRay as read_xray on the file's bytes."""
    path = tmp_path / "x.png"
    path.write_bytes(encode(Image.fromarray(gray_array), "PNG"))
    xray = read_xray_file(path)
    np.testing.assert_array_equal(xray.gray, gray_array)
    assert xray.digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_read_xray_file_reads_at_most_the_limit(tmp_path, monkeypatch, gray_array):
    """A file that grows after its size was checked is still read only up to MAX_BYTES + 1 bytes, then refused."""
    path = tmp_path / "growing.png"
    path.write_bytes(encode(Image.fromarray(gray_array), "PNG") + bytes(5000))
    real_stat = os.stat

    def stat_before_growth(target, *args, **kwargs):
        result = real_stat(target, *args, **kwargs)
        if Path(target) == path:
            return os.stat_result((result.st_mode, *result[1:6], 10, *result[7:]))
        return result

    monkeypatch.setattr(imaging, "MAX_BYTES", 1000)
    monkeypatch.setattr(imaging.os, "stat", stat_before_growth)
    with pytest.raises(ImageRejected, match="larger than"):
        read_xray_file(path)


def test_read_xray_file_refuses_a_missing_file(tmp_path):
    """A path that does not exist is a refusal with a reason (the CLI passes such paths through)."""
    with pytest.raises(ImageRejected, match="does not exist"):
        read_xray_file(tmp_path / "missing.png")


def test_is_supported_file(tmp_path, gray_array):
    """Suffix for named files; magic bytes for extension-less (or UID-named) files; never folders, pipes, links
    to nothing or other suffixes."""
    png = encode(Image.fromarray(gray_array), "PNG")
    for suffix in SUPPORTED_SUFFIXES:
        (tmp_path / f"a{suffix.upper()}").write_bytes(b"anything")
        assert is_supported_file(tmp_path / f"a{suffix.upper()}")
    (tmp_path / "png_without_suffix").write_bytes(png)
    (tmp_path / "jpeg_without_suffix").write_bytes(encode(Image.fromarray(gray_array), "JPEG"))
    (tmp_path / "1.2.840.113619.2.55").write_bytes(bad_inputs.dicom(gray_array))
    (tmp_path / "README").write_text("notes")
    (tmp_path / "image.tif").write_bytes(png)
    (tmp_path / "folder.png").mkdir()
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nothing.png")
    supported = {name for name in os.listdir(tmp_path) if is_supported_file(tmp_path / name)}
    assert supported == {
        *(f"a{suffix.upper()}" for suffix in SUPPORTED_SUFFIXES),
        "png_without_suffix",
        "jpeg_without_suffix",
        "1.2.840.113619.2.55",
    }


def test_is_supported_file_reads_only_the_first_bytes(tmp_path, monkeypatch, gray_array):
    """Sniffing an extension-less file reads at most 132 bytes."""
    path = tmp_path / "scan"
    path.write_bytes(encode(Image.fromarray(gray_array), "PNG"))
    sizes = []
    real_open = imaging._open_regular

    def recording_open(target):
        handle = real_open(target)
        real_read = handle.read

        def read(size=-1):
            sizes.append(size)
            return real_read(size)

        handle.read = read
        return handle

    monkeypatch.setattr(imaging, "_open_regular", recording_open)
    assert is_supported_file(path)
    assert sizes == [132]
