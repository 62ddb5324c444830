"""Generators of odd and hostile input files for the bad-input corpus (``tests/test_bad_inputs.py``).

Everything is built in memory from one small real X-ray (a shipped sample) or from arrays, so no
binary is committed. Large inputs (the 7000 x 7000 JPEGs) are built once per test session.

Usage (from a test; ``tests/`` is on ``sys.path``):
    from bad_inputs import xray_gray, png, progressive_jpeg_with_scans
    data = progressive_jpeg_with_scans(xray_gray(), 3000)
"""

from __future__ import annotations

import functools
import io
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, PngImagePlugin
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "samples" / "NORMAL2-IM-0578-0001.jpeg"
HUGE_SIDE = 7000
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    """Save a Pillow image to bytes in ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@functools.cache
def xray_gray() -> np.ndarray:
    """A real pediatric chest X-ray (a shipped sample), ``(320, 359)`` uint8, read by Pillow alone."""
    with Image.open(SAMPLE) as image:
        gray = np.array(image.convert("L"))
    gray.setflags(write=False)
    return gray


def png(array: np.ndarray, **options) -> bytes:
    """A PNG of a uint8 or uint16 array (mode from the dtype and shape)."""
    return encode(Image.fromarray(array), "PNG", **options)


def jpeg(array: np.ndarray, quality: int = 95, **options) -> bytes:
    """A JPEG of a uint8 gray or RGB array."""
    return encode(Image.fromarray(array), "JPEG", quality=quality, **options)


def chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_with_claimed_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR claims ``width`` x ``height`` (CRC fixed)."""
    data = bytearray(png(np.zeros((64, 64), dtype=np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def jpeg_with_claimed_size(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims ``width`` x ``height``."""
    data = bytearray(jpeg(xray_gray()))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_with_bad_crc() -> bytes:
    """A PNG whose IHDR checksum is wrong."""
    data = bytearray(png(xray_gray()))
    data[29] ^= 0xFF
    return bytes(data)


def png_with_chunks(extra: bytes, count: int) -> bytes:
    """The sample as PNG with ``extra`` (one or more chunks) repeated ``count`` times after IHDR."""
    data = png(xray_gray())
    return data[:33] + extra * count + data[33:]


def png_with_text(size: int) -> bytes:
    """The sample as PNG with one plain tEXt chunk of ``size`` bytes."""
    return png_with_chunks(chunk(b"tEXt", b"comment\x00" + b"x" * size), 1)


def png_with_compressed_text(size: int) -> bytes:
    """The sample as PNG with a zTXt chunk that inflates to ``size`` bytes (a text bomb)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * size, zip=True)
    return png(xray_gray(), pnginfo=info)


def jpeg_with_header_segments(segment: bytes, count: int) -> bytes:
    """The sample as JPEG with ``segment`` repeated ``count`` times right after SOI."""
    data = jpeg(xray_gray())
    return data[:2] + segment * count + data[2:]


def exif_bytes(orientation: int) -> bytes:
    """An EXIF block holding only the orientation tag (1-8)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def exif_png(array: np.ndarray, orientation: int) -> bytes:
    """A lossless PNG of ``array`` carrying EXIF orientation ``orientation`` (1-8)."""
    return png(array, exif=exif_bytes(orientation))


def upright(stored: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows for ``stored`` pixels tagged with EXIF ``orientation`` (the TIFF/EXIF table)."""
    transforms = {
        1: lambda a: a,
        2: np.fliplr,
        3: lambda a: np.rot90(a, 2),
        4: np.flipud,
        5: lambda a: a.T,
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).T,
        8: lambda a: np.rot90(a, 1),
    }
    return transforms[orientation](stored)


def rgb(gray: np.ndarray) -> np.ndarray:
    """A gray array replicated to three channels."""
    return np.stack([gray] * 3, axis=-1)


def cmyk_jpeg(gray: np.ndarray) -> bytes:
    """A CMYK JPEG (as print workflows write) of a gray array."""
    return encode(Image.fromarray(gray).convert("CMYK"), "JPEG", quality=95)


def la_png(gray: np.ndarray) -> bytes:
    """A fully opaque gray+alpha (LA) PNG."""
    return encode(Image.fromarray(gray).convert("LA"), "PNG")


def with_alpha(gray: np.ndarray, transparent_columns: slice | None) -> np.ndarray:
    """An RGBA array of ``gray``: opaque, except fully transparent ``transparent_columns``."""
    alpha = np.full(gray.shape, 255, dtype=np.uint8)
    if transparent_columns is not None:
        alpha[:, transparent_columns] = 0
    return np.dstack([rgb(gray), alpha])


def palette_png(gray: np.ndarray, transparent_rows: slice | None = None) -> bytes:
    """A palette PNG (gray ramp palette, index = gray level up to 254); index 255 is white and, when
    ``transparent_rows`` is given, transparent and used for those rows."""
    indices = np.minimum(gray, 254).astype(np.uint8)
    if transparent_rows is not None:
        indices = indices.copy()
        indices[transparent_rows] = 255
    image = Image.fromarray(indices, mode="P")
    image.putpalette([level for value in range(256) for level in (value, value, value)])
    options = {"transparency": 255} if transparent_rows is not None else {}
    return encode(image, "PNG", **options)


def apng(first: np.ndarray, second: np.ndarray) -> bytes:
    """An animated PNG of two frames."""
    return encode(Image.fromarray(first), "PNG", save_all=True, append_images=[Image.fromarray(second)])


def mpo(first: np.ndarray, second: np.ndarray) -> bytes:
    """A multi-picture JPEG (MPO, as phone cameras write) of two RGB images."""
    return encode(
        Image.fromarray(rgb(first)), "MPO", quality=95, save_all=True, append_images=[Image.fromarray(rgb(second))]
    )


def scans_of(data: bytes) -> list[tuple[int, int]]:
    """``(start, end)`` of every scan (SOS segment plus its entropy-coded data) of a JPEG."""
    position, scans = 2, []
    while (match := _JPEG_MARKER.search(data, position)) is not None:
        marker, position = data[match.start() + 1], match.start()
        if marker == 0xD9:
            break
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:
            end = _JPEG_MARKER.search(data, position + 2 + length).start()
            scans.append((position, end))
            position = end
        else:
            position += 2 + length
    return scans


def progressive_jpeg_with_scans(array: np.ndarray, scans: int) -> bytes:
    """A progressive JPEG of ``array`` with its smallest scan repeated until it has ``scans`` scans."""
    return with_scans(jpeg(array, quality=80, progressive=True), scans)


def with_scans(data: bytes, scans: int) -> bytes:
    """A progressive JPEG with its smallest scan repeated until it has ``scans`` scans.

    The repeats are refinement scans libjpeg applies again (with a warning, not an error): each
    costs a full pass over the image, as in the 3000-scan file of issue 6.
    """
    found = scans_of(data)
    start, end = min(found, key=lambda scan: scan[1] - scan[0])
    return data[:end] + data[start:end] * (scans - len(found)) + data[end:]


@functools.cache
def huge_gradient() -> np.ndarray:
    """A ``(7000, 7000)`` uint8 image: a vertical plus a horizontal gradient (0-249)."""
    rows = (np.arange(HUGE_SIDE) * 150 // HUGE_SIDE).astype(np.uint8)[:, None]
    columns = (np.arange(HUGE_SIDE) * 100 // HUGE_SIDE).astype(np.uint8)[None, :]
    gradient = rows + columns
    gradient.setflags(write=False)
    return gradient


@functools.cache
def huge_jpeg() -> bytes:
    """A 7000 x 7000 baseline JPEG (49 megapixels, under the 50-megapixel limit)."""
    return jpeg(huge_gradient(), quality=80)


@functools.cache
def huge_progressive_jpeg() -> bytes:
    """A 7000 x 7000 progressive JPEG (libjpeg's usual 6 scans for gray)."""
    return jpeg(huge_gradient(), quality=80, progressive=True)


@functools.cache
def huge_progressive_jpeg_with_scans(scans: int) -> bytes:
    """A 7000 x 7000 progressive JPEG with ``scans`` scans."""
    return with_scans(huge_progressive_jpeg(), scans)


def float_tiff_with_nan() -> bytes:
    """A 32-bit float TIFF of the sample with a NaN and an infinite pixel."""
    values = xray_gray().astype(np.float32) / 255.0
    values[0, 0], values[0, 1] = np.nan, np.inf
    return encode(Image.fromarray(values, mode="F"), "TIFF")


def multi_frame_tiff() -> bytes:
    """A two-page TIFF."""
    first, second = Image.fromarray(xray_gray()), Image.fromarray(255 - xray_gray())
    return encode(first, "TIFF", save_all=True, append_images=[second])


def other_format(fmt: str) -> bytes:
    """The sample saved by Pillow as ``fmt`` (TIFF, GIF, BMP, EPS, WEBP, PDF)."""
    image = Image.fromarray(xray_gray())
    return encode(image.convert("RGB") if fmt in {"EPS", "PDF"} else image, fmt)


def dicom(pixels: np.ndarray, modality: str = "DX") -> bytes:
    """A minimal uncompressed single-frame MONOCHROME2 DICOM file of 8-bit ``pixels``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = modality
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelRepresentation = 0
    dataset.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


# --- Files that are not regular files ------------------------------------------------------------


def fifo(folder: Path) -> Path:
    """A named pipe called ``x.png`` (nobody ever writes to it)."""
    path = folder / "x.png"
    os.mkfifo(path)
    return path


def folder_named_png(folder: Path) -> Path:
    """A directory called ``scan.png``."""
    path = folder / "scan.png"
    path.mkdir()
    return path


def dangling_link(folder: Path) -> Path:
    """A symbolic link ``gone.png`` to a file that does not exist."""
    path = folder / "gone.png"
    path.symlink_to(folder / "missing.png")
    return path


def link_loop(folder: Path) -> Path:
    """Two symbolic links ``a.png`` and ``b.png`` pointing at each other."""
    first, second = folder / "a.png", folder / "b.png"
    first.symlink_to(second)
    second.symlink_to(first)
    return first


def sparse_file(folder: Path, size: int) -> Path:
    """A PNG-looking file of ``size`` bytes that takes no disk space (a hole after the PNG magic)."""
    path = folder / "big.png"
    with path.open("wb") as handle:
        handle.write(png(xray_gray()))
        handle.truncate(size)
    return path


def renamed(folder: Path, data: bytes, name: str) -> Path:
    """``data`` written to ``folder / name`` (for example a TIFF called ``.png``)."""
    path = folder / name
    path.write_bytes(data)
    return path
