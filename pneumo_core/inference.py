"""Prediction from image bytes through the shared preprocessing contract.

Usage:
    loaded = load_model_dir(Path("models/cnn"))
    prob = predict_bytes(loaded, Path("xray.jpeg").read_bytes())
"""

from __future__ import annotations

import numpy as np

from pneumo_core.artifacts import LoadedModel
from pneumo_core.imaging import decode_grayscale


def predict_gray(loaded: LoadedModel, gray: np.ndarray) -> float:
    """Pneumonia probability for one decoded grayscale image."""
    return float(loaded.predict_squares(loaded.square(gray)[None])[0])


def predict_bytes(loaded: LoadedModel, image_bytes: bytes) -> float:
    """Pneumonia probability for raw image bytes.

    Raises:
        ValueError: If the bytes are not a usable image (see :func:`decode_grayscale`).
    """
    return predict_gray(loaded, decode_grayscale(image_bytes))
