"""Reading X-ray files, and the preprocessing contract shared by training, evaluation and the app.

Every image, whatever its source, goes through the same three steps:

1. ``read_xray``: bytes -> :class:`XRay`, a validated 8-bit grayscale array in display
   orientation, with user-facing notes on how it was converted. PNG and JPEG are decoded
   with Pillow (and only those two of its formats: TIFF, GIF, BMP, WebP, EPS and the rest
   are refused, so no other decoder, and never Ghostscript, sees an upload); DICOM goes to
   :mod:`pneumo_core.dicom`. The format is sniffed from the content, never from the name.
2. ``frame_square``: squash (never crop into content) to the model's square input size. The
   training data mixes aspect-kept and already-squashed images, so everything is
   squashed the same way. A model trained with ``--framing trim`` first drops uniform
   borders (:func:`content_box`: black bands, or edge lines repeated outwards), so padding an
   image does not change its reading; ``--framing trim_equalize`` also histogram-equalises the
   trimmed image before the squash, so a monotonic change of exposure (gamma, contrast) barely
   changes the input; the default ``squash`` keeps the whole image as it is.
3. ``ModelSpec.preprocess`` (see ``registry.py``): scale to the model's range and
   replicate channels for RGB backbones.

**One intensity rule for every bit depth.** Gray levels are mapped linearly from the image's
*nominal* range to 0-255; nothing is stretched to the image's own minimum and maximum, so a
dark image stays dark and an outlier cannot change the rest of the picture:

- 8-bit images (grayscale, and the luminance of RGB, palette and CMYK images) keep their
  values, exactly as the training images were read.
- High-bit-depth images (16-bit PNG) are mapped from ``0 .. 2**bits - 1`` where ``bits`` is
  the smallest of 8, 10, 12, 14 or 16 that holds the image's 99.9th percentile. So an 8-bit
  picture saved as 16 bits (values x 257) reads exactly as the 8-bit file, a 12-bit image
  stored in 16 bits is not black, and a single hot pixel neither darkens the rest nor changes
  the inferred depth (pixels above the range are clipped to white, and a note says how many).
- Transparent areas are flattened onto black.

**Refused, with a reason** (:class:`ImageRejected`, whose message is shown to the user): empty,
unknown or unsupported formats; files over ``MAX_UPLOAD_MB``; images over ``MAX_PIXELS`` (checked
from the header, before any pixel is decoded) or under ``MIN_SIDE``; corrupt or truncated files;
structures that would make decoding slow (progressive JPEGs with more than ``MAX_JPEG_SCANS``
scans, JPEG headers with over 1000 segments or 4096 padding bytes, PNGs split into more than
``MAX_PNG_CHUNKS`` chunks, oversized compressed PNG text); NaN or infinite pixels; animated PNGs;
and images with nothing to read: blank (one grey level), nearly uniform (the 1st to 99th percentile
spanning under 10 grey levels, e.g. black with a small label) or with under 16 grey levels (1-bit,
masks, drawings). Real X-rays are far from these limits (over the 5,232 Kermany training images:
a spread of at least 82 levels and at least 105 distinct levels).

**Multi-frame files.** An animated PNG is refused: its frames are equals and nothing says which
one is the X-ray. A JPEG holding several images (MPO, as phone cameras write for depth or
gain maps) is read from its first, primary image, and a note says so: the extra images of an MPO
are auxiliary by design. Multi-frame DICOM is refused by :mod:`pneumo_core.dicom`.

**Bounded work.** ``read_xray_file`` stats first and reads at most ``MAX_BYTES + 1`` bytes of a
regular file (never a folder, pipe or device). JPEGs whose longer side exceeds 4096 px are
decoded at a reduced DCT scale (1/2, 1/4 or 1/8, keeping the longer side at least 2048 px, far
above any model input), with a note. With these limits no accepted or refused input takes more
than a few seconds.

Usage:
    from pneumo_core.imaging import frame_square, read_xray_file
    xray = read_xray_file(Path("x.jpeg"))          # or read_xray(data, name) for uploaded bytes
    square = frame_square(xray.gray, 224, framing="squash")
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 64
MAX_PIXELS = 50_000_000
MAX_UPLOAD_MB = 50
MAX_BYTES = MAX_UPLOAD_MB * 1024 * 1024
MAX_JPEG_SCANS = 64
MAX_PNG_CHUNKS = 100_000
SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
SUPPORTED_FORMATS = "PNG, JPEG or DICOM"

_PLEASE_UPLOAD = f"please upload a {SUPPORTED_FORMATS} file"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_DICOM_MAGIC_OFFSET = 128
_SNIFF_BYTES = _DICOM_MAGIC_OFFSET + 4

_JPEG_MAX_HEADER_SEGMENTS = 1000  # Pillow parses the segments before the first scan in Python.
_JPEG_MAX_STRAY_BYTES = 4096  # Padding or junk between header segments, which Pillow walks byte by byte.
_JPEG_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# A marker: 0xFF then a byte that is not a stuffed zero, a restart marker (inside scans) or more padding.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_REDUCED_DECODE_ABOVE = 4096  # px on the longer side
_REDUCED_DECODE_KEEPS = 2048  # px on the longer side, at least

_CORRUPT = "The image file is corrupt or truncated and cannot be decoded."
# What Pillow's decoders raise on broken input (ValueError is handled separately).
_PILLOW_FAILURES = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    EOFError,
    TypeError,
    IndexError,
    KeyError,
    struct.error,
)

_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_NOMINAL_BITS = (8, 10, 12, 14, 16)
_DEPTH_PERCENTILE = 99.9
_MIN_GREY_LEVELS = 16  # A chest X-ray has hundreds; masks, drawings and 1-bit images have a handful.
_MIN_SPREAD = 10  # Grey levels between the 1st and 99th percentile; X-rays span well over 100.
_COLOUR_TOLERANCE = 24  # Channel difference (levels) beyond JPEG colour noise on a gray picture.


class ImageRejected(ValueError):
    """A file that is not a usable X-ray; ``str(error)`` is the user-facing reason."""


@dataclass(frozen=True, eq=False)
class XRay:
    """A decoded X-ray: the contract's grayscale plus how it was obtained.

    Attributes:
        gray: 2-D uint8 array in display orientation (read-only).
        source_format: ``"PNG"``, ``"JPEG"`` or ``"DICOM"``.
        notes: User-facing sentences on how the image was converted (empty for a plain 8-bit
            grayscale image).
        metadata: Technical fields only (format, size, pixel mode; for DICOM modality, view
            position, bits stored...), never identifiers.
        digest: sha256 hex digest of the input bytes (a cache key, kept in memory only).
    """

    gray: np.ndarray
    source_format: str
    notes: tuple[str, ...]
    metadata: tuple[tuple[str, str], ...]
    digest: str


def read_xray(data: bytes, name: str = "") -> XRay:
    """Decode the bytes of a PNG, JPEG or DICOM file into an :class:`XRay`.

    Args:
        data: The file's bytes.
        name: The file's name as the user gave it. It is never trusted (the format is sniffed
            from the content) and never logged; it is accepted so that callers can pass what
            they have.

    Returns:
        The decoded X-ray.

    Raises:
        ImageRejected: If the bytes are not a usable X-ray; the message says why (see the module
            docstring for the list).
    """
    if not data:
        raise ImageRejected(f"The file is empty: {_PLEASE_UPLOAD} holding a chest X-ray.")
    if len(data) > MAX_BYTES:
        raise ImageRejected(_too_large_message())
    source_format = _sniff(data)
    if source_format is None:
        raise ImageRejected(_unsupported_message(data))
    if source_format == "DICOM":
        gray, notes, metadata = _decode_dicom(data)
    else:
        gray, notes, metadata = _decode_with_pillow(data, source_format)
    _refuse_unusable(gray)
    gray.setflags(write=False)
    return XRay(
        gray=gray,
        source_format=source_format,
        notes=tuple(notes),
        metadata=tuple(metadata),
        digest=hashlib.sha256(data).hexdigest(),
    )


def read_xray_file(path: Path) -> XRay:
    """Read an X-ray file with bounded work: stat first, regular files only, at most ``MAX_BYTES`` read.

    Args:
        path: The file. Folders, pipes, devices (``/dev/zero``), broken links and link loops are
            refused without reading anything.

    Returns:
        The decoded X-ray (see :func:`read_xray`).

    Raises:
        ImageRejected: If the file cannot be read or is not a usable X-ray.
    """
    path = Path(path)
    return read_xray(_read_bounded(path), path.name)


def is_supported_file(path: Path) -> bool:
    """Whether a folder entry should be listed as an X-ray file (without reading it whole).

    A regular file (after following links) counts when its suffix is one of
    ``SUPPORTED_SUFFIXES`` or, when it has no suffix or a numeric one (DICOM files are often named
    by their UID, ``1.2.840.113619.2.55``), when its first 132 bytes carry PNG or JPEG magic or
    ``DICM`` at offset 128.
    """
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        suffix = path.suffix.lower()
        if suffix in SUPPORTED_SUFFIXES:
            return True
        if suffix and not suffix[1:].isdigit():
            return False
        with _open_regular(path) as handle:
            return _sniff(handle.read(_SNIFF_BYTES)) is not None
    except (OSError, ValueError):
        return False


def decode_grayscale(data: bytes) -> np.ndarray:
    """The grayscale array of :func:`read_xray` (kept for training and evaluation code).

    Raises:
        ImageRejected: As :func:`read_xray` (a ``ValueError``).
    """
    return read_xray(data).gray


def resize_square(gray: np.ndarray, size: int) -> np.ndarray:
    """Squash a grayscale image to ``size`` x ``size`` without cropping.

    Args:
        gray: A 2-D uint8 array.
        size: The side of the square output in pixels.

    Returns:
        A ``(size, size)`` uint8 array.
    """
    if gray.ndim != 2:
        raise ValueError(f"Expected a 2-D grayscale array, got shape {gray.shape}.")
    shrinking = gray.shape[0] > size or gray.shape[1] > size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(gray, (size, size), interpolation=interpolation)


FRAMINGS = {
    "squash": "the whole image squashed to the square input",
    "trim": "uniform borders (black bands or repeated edge lines) trimmed, then squashed to the square input",
    "trim_equalize": (
        "uniform borders (black bands or repeated edge lines) trimmed, grey levels histogram-equalised "
        "(so gamma and contrast changes barely change the input), then squashed to the square input"
    ),
}
EQUALIZING_FRAMINGS = frozenset({"trim_equalize"})  # framings whose squares are histogram-equalised
BORDER_FLAT_SD = 1.0  # a border line whose grey levels vary less than this counts as constant
BORDER_REPEAT_DIFF = 0.5  # ... or whose mean |difference| from the next line inwards is under this
MAX_BORDER_SHARE = 0.35  # never trim more than this share of the image from one side


def content_box(gray: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the image without its uniform borders (``gray[top:bottom, left:right]``).

    A border line is a row or column that is nearly constant (black bands, a flat background) or nearly
    repeats the line inside it (edge pixels replicated outwards). At most :data:`MAX_BORDER_SHARE` of
    each side is dropped, so some content is always left.
    """
    if gray.ndim != 2:
        raise ValueError(f"Expected a 2-D grayscale array, got shape {gray.shape}.")
    height, width = gray.shape
    top, bottom = _border_run(gray), height - _border_run(gray[::-1])
    left, right = _border_run(gray[top:bottom].T), width - _border_run(gray[top:bottom, ::-1].T)
    columns = gray[:, left:right]  # The corners of a pad belong to both bands: look at the rows again.
    return _border_run(columns), height - _border_run(columns[::-1]), left, right


def _border_run(lines: np.ndarray) -> int:
    """How many leading rows of ``lines`` form a uniform border."""
    limit = int(len(lines) * MAX_BORDER_SHARE)
    head = lines[: limit + 1].astype(np.float32)
    uniform = (head[:limit].std(axis=1) <= BORDER_FLAT_SD) | (
        np.abs(np.diff(head, axis=0)).mean(axis=1) <= BORDER_REPEAT_DIFF
    )
    return int(limit if uniform.all() else np.argmin(uniform))


def frame_square(gray: np.ndarray, size: int, framing: str = "squash") -> np.ndarray:
    """The model's square input: the whole image (``"squash"``) or its :func:`content_box` (``"trim"``,
    ``"trim_equalize"``), histogram-equalised for ``"trim_equalize"``, then squashed.

    Raises:
        ValueError: If ``framing`` is not one of :data:`FRAMINGS`.
    """
    if framing not in FRAMINGS:
        raise ValueError(f"Unknown framing {framing!r}; choose one of {', '.join(FRAMINGS)}.")
    if framing != "squash":
        top, bottom, left, right = content_box(gray)
        gray = gray[top:bottom, left:right]
    if framing in EQUALIZING_FRAMINGS:
        gray = cv2.equalizeHist(np.ascontiguousarray(gray))
    return resize_square(gray, size)


def place_in_frame(square_map: np.ndarray, gray: np.ndarray, framing: str, max_side: int = 512) -> np.ndarray:
    """A map computed on the square input, laid over the image's own frame (zero on trimmed borders).

    With ``framing="squash"`` the square map already covers the whole image and is returned as is; with a
    trimming framing it is stretched over the content box of a copy of the image no larger than ``max_side``.
    """
    if framing == "squash":
        return square_map
    top, bottom, left, right = content_box(gray)
    scale = min(1.0, max_side / max(gray.shape))
    height, width = (max(1, round(side * scale)) for side in gray.shape)
    y0, x0 = min(round(top * scale), height - 1), min(round(left * scale), width - 1)
    y1, x1 = max(y0 + 1, round(bottom * scale)), max(x0 + 1, round(right * scale))
    framed = np.zeros((height, width), dtype=np.float32)
    framed[y0:y1, x0:x1] = cv2.resize(square_map.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    return framed


def fit_within(gray: np.ndarray, max_side: int = 1024) -> np.ndarray:
    """Downscale an image (keeping its aspect ratio) so its longer side is at most ``max_side``."""
    height, width = gray.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return gray
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a grayscale or RGB uint8 array as PNG bytes, in memory."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


# --- Reading files -------------------------------------------------------------------------------


def _read_bounded(path: Path) -> bytes:
    """At most ``MAX_BYTES + 1`` bytes of a regular file, refusing everything else before reading."""
    try:
        info = os.stat(path)
        _refuse_non_regular(info)
        if info.st_size > MAX_BYTES:
            raise ImageRejected(_too_large_message())
        with _open_regular(path) as handle:
            data = handle.read(MAX_BYTES + 1)
    except ImageRejected:
        raise
    except OSError as error:
        raise ImageRejected(_os_error_message(error)) from error
    except ValueError as error:  # An embedded NUL byte in the name.
        raise ImageRejected("The file name is not valid.") from error
    if len(data) > MAX_BYTES:
        raise ImageRejected(_too_large_message())
    return data


def _open_regular(path: Path) -> io.BufferedReader:
    """Open a file for reading without ever blocking, and check (on the open file) that it is regular.

    ``O_NONBLOCK`` makes opening a pipe return at once instead of waiting for a writer; the
    ``fstat`` on the open descriptor catches a file swapped for a pipe or device after the ``stat``.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    handle = open(os.open(path, flags), "rb")  # noqa: SIM115 - returned to the caller's ``with``.
    try:
        _refuse_non_regular(os.fstat(handle.fileno()))
    except BaseException:
        handle.close()
        raise
    return handle


def _refuse_non_regular(info: os.stat_result) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise ImageRejected("This is a folder, not an image file.")
    if not stat.S_ISREG(info.st_mode):
        raise ImageRejected("This is not a regular file (it is a device, a pipe or a socket), so it is not read.")


def _os_error_message(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return "The file does not exist (or is a broken link)."
    if isinstance(error, PermissionError):
        return "The file cannot be opened: permission denied."
    if error.errno == errno.ELOOP:
        return "The file is a loop of symbolic links."
    if isinstance(error, IsADirectoryError):
        return "This is a folder, not an image file."
    return f"The file cannot be read ({error.strerror or 'input/output error'})."


# --- Recognising formats ---------------------------------------------------------------------


def _sniff(head: bytes) -> str | None:
    """``"PNG"``, ``"JPEG"`` or ``"DICOM"`` from the first bytes, or ``None``."""
    if head.startswith(_PNG_MAGIC):
        return "PNG"
    if head.startswith(_JPEG_MAGIC):
        return "JPEG"
    if head[_DICOM_MAGIC_OFFSET:_SNIFF_BYTES] == b"DICM":
        return "DICOM"
    return None


def _other_format(data: bytes) -> str | None:
    """The name of a known image or document format we do not read, for a clearer refusal."""
    signatures = (
        (b"II*\x00", "TIFF"),
        (b"MM\x00*", "TIFF"),
        (b"GIF87a", "GIF"),
        (b"GIF89a", "GIF"),
        (b"%!PS", "PostScript/EPS"),
        (b"\xc5\xd0\xd3\xc6", "EPS"),
        (b"%PDF", "PDF"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
        (b"\xff\x4f\xff\x51", "JPEG 2000"),
        (b"8BPS", "Photoshop"),
    )
    for magic, kind in signatures:
        if data.startswith(magic):
            return kind
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:8] == b"ftyp" and data[8:12] in {b"heic", b"heix", b"mif1", b"msf1", b"avif"}:
        return "AVIF" if data[8:12] == b"avif" else "HEIC"
    if (
        data.startswith(b"BM")
        and len(data) >= 18
        and struct.unpack_from("<I", data, 14)[0] in {12, 40, 52, 56, 64, 108, 124}
    ):
        return "BMP"
    return None


def _unsupported_message(data: bytes) -> str:
    kind = _other_format(data)
    if kind is None:
        return f"This file is not an image we can read: {_PLEASE_UPLOAD}."
    return f"This is a {kind} file, a format not read here: {_PLEASE_UPLOAD}."


def _too_large_message() -> str:
    return f"The file is larger than {MAX_UPLOAD_MB} MB; please upload a smaller image."


# --- Decoding --------------------------------------------------------------------------------


def _decode_dicom(data: bytes) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    from pneumo_core.dicom import decode_dicom  # Lazy: pydicom is only imported for DICOM files.

    gray, notes, metadata = decode_dicom(data)
    if not isinstance(gray, np.ndarray) or gray.ndim != 2 or gray.dtype != np.uint8:
        raise ImageRejected("The DICOM file did not decode to a single grayscale image.")
    return gray, list(notes), list(metadata)


def _decode_with_pillow(data: bytes, source_format: str) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Decode a PNG or JPEG (only those) after checking, cheaply, that decoding it is bounded."""
    width, height = _check_png(data) if source_format == "PNG" else _check_jpeg(data)
    _refuse_too_many_pixels(width, height, len(data))
    try:
        image, notes, metadata = _open_and_load(data, source_format)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as error:
        raise ImageRejected("The image is far too large to decode safely (a decompression bomb?).") from error
    except ValueError as error:
        if "text chunk" in str(error) or "MAX_TEXT_CHUNK" in str(error):
            raise ImageRejected(
                "The PNG carries oversized compressed text metadata (a compression bomb?) and is not read."
            ) from error
        raise ImageRejected(_CORRUPT) from error
    except _PILLOW_FAILURES as error:
        raise ImageRejected(_CORRUPT) from error
    gray, conversion_notes = _to_gray(image)
    return gray, notes + conversion_notes, metadata


def _open_and_load(data: bytes, source_format: str) -> tuple[Image.Image, list[str], list[tuple[str, str]]]:
    """Open with Pillow's plugin for ``source_format`` only, decode (reduced for huge JPEGs) and orient."""
    image = Image.open(io.BytesIO(data), formats=[source_format])
    _refuse_too_many_pixels(*image.size, len(data))
    metadata = [("Format", source_format), ("Size", f"{image.width} x {image.height} px"), ("Pixel mode", image.mode)]
    notes = _frame_notes(image) + _reduce_huge_jpeg(image)
    orientation = image.getexif().get(0x0112, 1)
    image.load()
    if orientation in range(2, 9):
        notes.append("The image was rotated or flipped as its camera orientation (EXIF) tag says.")
    return ImageOps.exif_transpose(image), notes, metadata


def _refuse_too_many_pixels(width: int, height: int, file_size: int) -> None:
    pixels = width * height
    if pixels <= MAX_PIXELS:
        return
    bomb = (
        " So small a file claiming so many pixels looks like a decompression bomb." if pixels > 1000 * file_size else ""
    )
    raise ImageRejected(
        f"The image is {width}x{height} px ({pixels / 1e6:.0f} megapixels); "
        f"the limit is {MAX_PIXELS / 1e6:.0f} megapixels.{bomb}"
    )


def _check_png(data: bytes) -> tuple[int, int]:
    """The size from the IHDR chunk, after refusing PNGs split into so many chunks that Pillow would crawl."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageRejected(_CORRUPT)
    width, height = struct.unpack_from(">II", data, 16)
    position, chunks = len(_PNG_MAGIC), 0
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise ImageRejected(
                f"The image file is corrupt or malformed: the PNG is split into more than {MAX_PNG_CHUNKS} chunks."
            )
        if kind == b"IEND":
            break
        position += length + 12
    return width, height


def _check_jpeg(data: bytes) -> tuple[int, int]:
    """The size from the SOF segment, after refusing JPEGs whose structure would make decoding slow.

    Walks the markers of the primary image (segments are skipped by their length, scans with a
    C-speed search), so an EXIF thumbnail or an MPO's second image is not counted.
    """
    size, position, segments, stray, scans = (0, 0), 2, 0, 0, 0
    while (match := _JPEG_MARKER.search(data, position)) is not None:
        if scans == 0:
            stray += match.start() - position
        marker, position = data[match.start() + 1], match.end()
        if marker == 0xD9:  # End of image.
            break
        if marker == 0x01:  # TEM: a marker without a segment.
            continue
        length = int.from_bytes(data[position : position + 2], "big")
        if marker in _JPEG_SOF_MARKERS and length >= 7 and size == (0, 0) and position + 7 <= len(data):
            height, width = struct.unpack_from(">HH", data, position + 3)
            size = (width, height)
        if marker == 0xDA:
            scans += 1
        elif scans == 0:
            segments += 1
        _refuse_slow_jpeg(segments, stray, scans)
        position += max(length, 2)
    return size


def _refuse_slow_jpeg(segments: int, stray: int, scans: int) -> None:
    if scans > MAX_JPEG_SCANS:
        raise ImageRejected(
            f"This progressive JPEG has more than {MAX_JPEG_SCANS} scans (usual files have about 10), "
            "so decoding it would take too long. Please save it again as a PNG or a standard JPEG."
        )
    if segments > _JPEG_MAX_HEADER_SEGMENTS:
        raise ImageRejected(
            f"The image file is corrupt or malformed: its JPEG header has more than {_JPEG_MAX_HEADER_SEGMENTS} "
            "segments."
        )
    if stray > _JPEG_MAX_STRAY_BYTES:
        raise ImageRejected(
            f"The image file is corrupt or malformed: its JPEG header has more than {_JPEG_MAX_STRAY_BYTES} "
            "stray padding bytes."
        )


def _frame_notes(image: Image.Image) -> list[str]:
    """Refuse an animated PNG; say that only the primary image of a multi-image JPEG (MPO) is read."""
    frames = getattr(image, "n_frames", 1)
    if frames <= 1:
        return []
    if image.format == "PNG":
        raise ImageRejected(
            f"This PNG is animated ({frames} frames) and nothing says which frame is the X-ray; "
            "please upload a single still image."
        )
    return [
        f"This JPEG holds {frames} images (an MPO file, as some cameras write); "
        "the first, primary image was read and the others ignored."
    ]


def _reduce_huge_jpeg(image: Image.Image) -> list[str]:
    """Ask libjpeg for a 1/2, 1/4 or 1/8 scale decode of a JPEG whose longer side exceeds 4096 px."""
    width, height = image.size
    if image.format not in {"JPEG", "MPO"} or max(width, height) <= _REDUCED_DECODE_ABOVE:
        return []
    scale = next(s for s in (8, 4, 2, 1) if s == 1 or max(width, height) // s >= _REDUCED_DECODE_KEEPS)
    if scale == 1 or image.draft("L" if image.mode == "RGB" else None, (width // scale, height // scale)) is None:
        return []
    return [
        f"This JPEG is very large ({width} x {height} px); it was decoded at 1/{scale} scale "
        f"({image.width} x {image.height} px), still far above the model's input size."
    ]


# --- Converting to the contract's grayscale --------------------------------------------------


def _to_gray(image: Image.Image) -> tuple[np.ndarray, list[str]]:
    """Convert any Pillow mode to 8-bit grayscale, with a note for every mode that is converted."""
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_uint8(np.asarray(image))
    if mode == "L":
        return np.array(image), []
    if mode == "1":
        return np.array(image.convert("L")), ["This is a 1-bit black-and-white image; it was read as grayscale."]
    notes = []
    if mode in {"P", "PA"}:
        notes.append("This is a palette (indexed-colour) image; it was converted to grayscale for the model.")
        has_alpha = mode == "PA" or "transparency" in image.info or image.palette.mode == "RGBA"
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif mode == "CMYK":
        notes.append("This is a CMYK (print) image; it was converted to grayscale for the model.")
        image = image.convert("RGB")
    elif mode not in {"RGB", "RGBA", "LA"}:
        notes.append(f"This image (mode {mode}) was converted to grayscale for the model.")
        image = image.convert("RGB")
    if image.mode in {"RGBA", "LA"}:
        image, alpha_note = _flatten_onto_black(image)
        notes.append(alpha_note)
    if image.mode == "RGB":
        notes += _colour_notes(np.asarray(image), from_rgb=mode in {"RGB", "RGBA"})
        image = image.convert("L")
    return np.array(image), notes


def _flatten_onto_black(image: Image.Image) -> tuple[Image.Image, str]:
    alpha = image.getchannel("A")
    colour_mode = "RGB" if image.mode == "RGBA" else "L"
    if alpha.getextrema()[0] == 255:
        return image.convert(colour_mode), "This image has a transparency channel but is fully opaque; it was dropped."
    rgba = image.convert("RGBA")
    flattened = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert(colour_mode)
    return flattened, "This image has transparent areas; they were flattened onto black for the model."


def _colour_notes(rgb: np.ndarray, from_rgb: bool) -> list[str]:
    """A note for an RGB image: whether it holds colours (lost in grayscale) or just a gray picture.

    It counts as coloured when over 0.1 % of its pixels have channels more than 24 levels apart:
    enough for a small coloured annotation, not for JPEG colour noise on a gray picture.
    """
    channels = rgb.astype(np.int16)
    apart = np.maximum(np.abs(channels[..., 0] - channels[..., 1]), np.abs(channels[..., 1] - channels[..., 2]))
    if np.count_nonzero(apart > _COLOUR_TOLERANCE) > 0.001 * apart.size:
        return ["This is a colour image; it was converted to grayscale (luminance), so colour markings become gray."]
    if from_rgb:
        return ["This RGB image holds a gray picture; it was converted to grayscale for the model."]
    return []


def _high_depth_to_uint8(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Map a high-bit-depth array from its nominal range (8-16 bits, see the module docstring) to uint8."""
    _refuse_non_finite(values)
    bits = _nominal_bits(values)
    top = 2**bits - 1
    clipped = int(np.count_nonzero(values > top))
    gray = np.rint(np.clip(values, 0, top).astype(np.float32) * np.float32(255.0 / top)).astype(np.uint8)
    if bits == 8:
        notes = ["This is a 16-bit image that only uses the 8-bit range (0-255); its values were kept as they are."]
    else:
        notes = [
            f"This is a high-bit-depth image read as {bits}-bit (0-{top}); it was converted linearly to 8 bits "
            "(0-255) for the model, so contrast may differ from your viewer."
        ]
    if clipped:
        notes.append(f"{clipped} pixel(s) brighter than the {bits}-bit range (hot pixels?) were clipped to white.")
    return gray, notes


def _nominal_bits(values: np.ndarray) -> int:
    """The smallest of 8, 10, 12, 14, 16 bits that holds the 99.9th percentile (beyond 16: what it takes)."""
    robust_max = float(np.percentile(values, _DEPTH_PERCENTILE))
    for bits in _NOMINAL_BITS:
        if robust_max <= 2**bits - 1:
            return bits
    return int(np.ceil(np.log2(robust_max + 1)))


def _refuse_non_finite(values: np.ndarray) -> None:
    if values.dtype.kind != "f":
        return
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise ImageRejected(
            f"The image has {bad} pixel(s) that are not numbers (NaN or infinite), so it cannot be read reliably."
        )


# --- Checks on the result --------------------------------------------------------------------


def _refuse_unusable(gray: np.ndarray) -> None:
    """Refuse images too small to read, and blank, nearly uniform or nearly two-tone ones."""
    height, width = gray.shape
    if min(height, width) < MIN_SIDE:
        raise ImageRejected(
            f"The image is {width}x{height} px; it needs at least {MIN_SIDE} px on each side "
            "to be read as a chest X-ray."
        )
    counts = np.bincount(gray.ravel(), minlength=256)
    levels = int(np.count_nonzero(counts))
    if levels == 1:
        raise ImageRejected(
            f"The image is blank: every pixel has the same grey level ({int(gray.flat[0])} of 255), "
            "so there is no X-ray to read."
        )
    cumulative = np.cumsum(counts) / gray.size
    low, high = int(np.searchsorted(cumulative, 0.01)), int(np.searchsorted(cumulative, 0.99))
    if high - low < _MIN_SPREAD:
        raise ImageRejected(
            f"The image is nearly blank: 98% of its pixels lie within {high - low + 1} grey levels, "
            "so there is no X-ray to read."
        )
    if levels < _MIN_GREY_LEVELS:
        raise ImageRejected(
            f"The image has only {levels} grey levels (a chest X-ray has hundreds); it looks like a drawing, "
            "a mask or a black-and-white image, not an X-ray."
        )
