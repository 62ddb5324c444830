"""Image decoding and the preprocessing contract shared by training, evaluation and the app.

Every image, whatever its source, goes through the same three steps:

1. ``decode_grayscale``: bytes -> validated 8-bit grayscale array (EXIF orientation
   honoured; grayscale, RGB, RGBA, palette, 16-bit, float and CMYK accepted).
2. ``resize_square``: squash (never crop) to the model's square input size. The
   training data mixes aspect-kept and already-squashed images, so everything is
   squashed the same way.
3. ``ModelSpec.preprocess`` (see ``registry.py``): scale to the model's range and
   replicate channels for RGB backbones.

Usage:
    from pneumo_core.imaging import decode_grayscale, resize_square
    gray = decode_grayscale(Path("x.jpeg").read_bytes())
    square = resize_square(gray, 224)
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 64
MAX_PIXELS = 50_000_000
MAX_UPLOAD_MB = 50
MAX_BYTES = MAX_UPLOAD_MB * 1024 * 1024

_HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def decode_grayscale(data: bytes) -> np.ndarray:
    """Decode image bytes into a 2-D uint8 grayscale array.

    Args:
        data: The raw bytes of a JPEG, PNG or other Pillow-readable image.

    Returns:
        An ``(height, width)`` uint8 array in display orientation.

    Raises:
        ValueError: If the bytes are empty, not an image, corrupt, too small
            (a side under 64 px) or too large (over 50 megapixels).
    """
    if not data:
        raise ValueError("The file is empty: please upload a chest X-ray image (JPEG or PNG).")
    if len(data) > MAX_BYTES:
        raise ValueError(f"The file is larger than {MAX_BYTES // 2**20} MB; please upload a smaller image.")
    image = _open_checked(data)
    gray = _to_uint8_gray(image)
    height, width = gray.shape
    if min(height, width) < MIN_SIDE:
        raise ValueError(
            f"The image is {width}x{height} px; it needs at least {MIN_SIDE} px on each side "
            "to be read as a chest X-ray."
        )
    return gray


def conversion_note(data: bytes) -> str | None:
    """Tell the user how an unusual image was converted, or ``None`` for plain 8-bit images.

    Call it on bytes that :func:`decode_grayscale` accepted.
    """
    with Image.open(io.BytesIO(data)) as image:
        mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        return (
            f"This is a high-bit-depth image (mode {mode}). Its intensity range was stretched to 8 bits, "
            "as the models expect; contrast may differ from your viewer."
        )
    if mode == "CMYK":
        return "This is a CMYK image; it was converted to grayscale for the model."
    if mode in {"RGBA", "LA", "PA"}:
        return "This image has transparency; it was flattened onto black for the model."
    return None


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


def _open_checked(data: bytes) -> Image.Image:
    """Open and fully decode an image, turning every Pillow failure into a ValueError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ValueError(
                    f"The image is {width}x{height} px ({width * height / 1e6:.0f} megapixels); "
                    f"the limit is {MAX_PIXELS / 1e6:.0f} megapixels."
                )
            image.load()
            return ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ValueError("The image is far too large to decode safely (a decompression bomb?).") from error
    except UnidentifiedImageError as error:
        raise ValueError("This file is not an image we can read: please upload a JPEG or PNG.") from error
    except (OSError, SyntaxError, EOFError) as error:
        raise ValueError("The image file is corrupt or truncated and cannot be decoded.") from error


def _to_uint8_gray(image: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to 8-bit grayscale, stretching high bit depths to 0-255."""
    if image.mode in _HIGH_DEPTH_MODES:
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        if high <= low:
            return np.zeros(values.shape, dtype=np.uint8)
        return np.round((values - low) / (high - low) * 255.0).astype(np.uint8)
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    if image.mode != "L":
        image = image.convert("RGB").convert("L")
    return np.asarray(image, dtype=np.uint8)


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
