"""Train-time augmentation policies, applied to the squashed 0-255 grayscale squares of the training split.

Two policies:

- ``basic``: small rotations, shifts, zoom, brightness and contrast (Keras preprocessing layers).
- ``robust``: the families a model must not lean on (albumentations), so that framing and exposure
  stop telling the classes apart: anisotropic scale (aspect jitter) with padding in black or with
  replicated edges and cropping, small rotations, gamma, contrast, CLAHE and equalisation, blur,
  noise, downscale-upscale, JPEG re-compression and burned-in text markers.

A square is the decoded X-ray squashed to the model's input size, so padding or cropping the
original image before the squash is, on the square, a scale of the content about its centre with the
border filled: the affine transform below covers both, independently per axis.

No flips: chest anatomy is not symmetric.

``normal_zoomer`` is applied to the NORMAL images only (``train --normal-zoom``): in the training pool the
pneumonia X-rays are framed tighter (smaller, wider scans), so a zoom applied to both classes alike keeps
"the chest fills the square" a pneumonia cue; zooming normals in breaks that link.

Usage:
    augment = robust_augmenter(size=160, seed=42)
    batch = augment_squares(augment, squares)   # (n, size, size) uint8 -> same shape, augmented
"""

from __future__ import annotations

import cv2
import numpy as np

AUGMENT_POLICIES = {  # name: what it does, as the model card says it
    "basic": "rotations, shifts, zoom, brightness and contrast",
    "robust": (
        "anisotropic zoom in and out (black or edge borders), shifts, rotations, gamma, contrast, CLAHE, "
        "histogram equalisation, blur, noise, downscale-upscale, JPEG re-compression and burned-in markers"
    ),
}
MARKER_TEXTS = ("L", "R", "AP", "PA", "PORTABLE", "SUPINE", "ERECT")


def keras_augmenter(seed: int, strength: float = 1.0):
    """The ``basic`` policy: rotations, shifts, zoom, brightness and contrast, each range scaled by ``strength``."""
    import keras
    from keras import layers

    return keras.Sequential(
        [
            layers.RandomRotation(0.03 * strength, fill_mode="constant", seed=seed),
            layers.RandomTranslation(0.06 * strength, 0.06 * strength, fill_mode="constant", seed=seed + 1),
            layers.RandomZoom((-0.15 * strength, 0.1 * strength), fill_mode="constant", seed=seed + 2),
            layers.RandomBrightness(0.15 * strength, value_range=(0, 255), seed=seed + 3),
            layers.RandomContrast(0.3 * strength, value_range=(0, 255), seed=seed + 4),
        ],
        name="augment",
    )


def burned_in_marker(probability: float):
    """An albumentations transform that writes a short white label (a side marker or a word) into a
    random corner, as scanners and technicians do; seeded by the pipeline like every other transform."""
    import albumentations as A

    class BurnedInMarker(A.ImageOnlyTransform):
        def get_params(self) -> dict:
            return {
                "text": self.py_random.choice(MARKER_TEXTS),
                "scale": self.py_random.uniform(0.6, 1.4),
                "left": self.py_random.random() < 0.5,
                "top": self.py_random.random() < 0.5,
            }

        def apply(self, img: np.ndarray, text: str, scale: float, left: bool, top: bool, **_: object) -> np.ndarray:
            size = img.shape[0]
            font_scale = size / 320 * scale
            thickness = max(1, round(size / 160))
            (width, height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
            margin = max(2, size // 40)
            x = margin if left else max(margin, img.shape[1] - width - margin)
            y = height + margin if top else size - margin
            marked = img.copy()
            cv2.putText(marked, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, 255, thickness, cv2.LINE_AA)
            return marked

    return BurnedInMarker(p=probability)


def robust_augmenter(size: int, seed: int, strength: float = 1.0):
    """The ``robust`` policy for ``size`` x ``size`` uint8 squares; ranges and probabilities scale with ``strength``.

    Raises:
        ValueError: If ``strength`` is not in (0, 2].
    """
    if not 0 < strength <= 2:
        raise ValueError(f"augment strength must be in (0, 2], got {strength}.")
    import albumentations as A

    s = strength

    def affine(border_mode: int) -> A.Affine:
        return A.Affine(
            scale={"x": (1 - 0.28 * s, 1 + 0.3 * s), "y": (1 - 0.25 * s, 1 + 0.25 * s)},
            keep_ratio=False,
            translate_percent={"x": (-0.06 * s, 0.06 * s), "y": (-0.06 * s, 0.06 * s)},
            rotate=(-6 * s, 6 * s),
            border_mode=border_mode,
            fill=0,
            p=1.0,
        )

    return A.Compose(
        [
            A.OneOf([affine(cv2.BORDER_CONSTANT), affine(cv2.BORDER_REPLICATE)], p=min(1.0, 0.85 * s)),
            A.OneOf(
                [
                    A.RandomGamma(gamma_limit=(round(100 - 40 * s), round(100 + 60 * s))),
                    A.RandomBrightnessContrast(brightness_limit=0.15 * s, contrast_limit=0.35 * s),
                    A.CLAHE(clip_limit=(1, 4)),
                    A.Equalize(),
                ],
                p=min(1.0, 0.7 * s),
            ),
            A.OneOf(
                [
                    A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.5)),
                    A.GaussNoise(std_range=(0.01, 0.05)),
                    A.Downscale(
                        scale_range=(0.25, 0.7),
                        interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR},
                    ),
                    A.ImageCompression(quality_range=(20, 90)),
                ],
                p=min(1.0, 0.4 * s),
            ),
            burned_in_marker(min(1.0, 0.2 * s)),
            A.Resize(size, size),
        ],
        seed=seed,
    )


def check_normal_zoom(zoom: float) -> None:
    """Refuse a largest extra zoom of :func:`normal_zoomer` outside its range.

    Raises:
        ValueError: If ``zoom`` is not in (0, 1].
    """
    if not 0 < zoom <= 1:
        raise ValueError(f"normal zoom must be in (0, 1], got {zoom}.")


def normal_zoomer(zoom: float, seed: int):
    """Half of the time, zoom into a square by up to ``1 + zoom`` on each axis independently (the content
    enlarged about its centre, the edges cut off), as cropping the X-ray before the squash does.

    Raises:
        ValueError: If ``zoom`` is not in (0, 1].
    """
    check_normal_zoom(zoom)
    import albumentations as A

    scale = {"x": (1.0, 1.0 + zoom), "y": (1.0, 1.0 + zoom)}
    return A.Compose([A.Affine(scale=scale, keep_ratio=False, border_mode=cv2.BORDER_CONSTANT, p=0.5)], seed=seed)


def check_aspect_swap(factor: float) -> None:
    """Refuse an aspect swap factor of :func:`aspect_swappers` outside its range.

    Raises:
        ValueError: If ``factor`` is not in (1, 2].
    """
    if not 1 < factor <= 2:
        raise ValueError(f"aspect swap factor must be in (1, 2], got {factor}.")


def aspect_swappers(factor: float, seed: int) -> dict[int, object]:
    """Per class (0 NORMAL, 1 PNEUMONIA), an augmenter that half of the time gives a square the other class's
    typical proportions, by zooming in on one axis by about ``factor`` (0.5 to 1.5 times its excess over 1).

    Squashing a wide X-ray into the square narrows its anatomy. In the training pool the pneumonia X-rays
    are wider than the normal ones (median aspect 1.49 against 1.21), so narrow-looking anatomy reads as
    pneumonia: cutting the sides off an X-ray turns pneumonia readings normal, cutting top and bottom does
    the reverse. Here NORMAL squares are zoomed vertically (anatomy narrowed, as a wide X-ray's) and
    PNEUMONIA squares horizontally (widened, as a square-ish X-ray's), each half of the time, so both
    classes show both proportions about equally often. ``factor`` is the ratio of the two median aspects.

    Raises:
        ValueError: If ``factor`` is not in (1, 2].
    """
    check_aspect_swap(factor)
    import albumentations as A

    excess = factor - 1
    zoom = (1 + excess / 2, 1 + 1.5 * excess)

    def one_axis(axis: str) -> A.Compose:
        scale = {"x": (1.0, 1.0), "y": (1.0, 1.0)} | {axis: zoom}
        affine = A.Affine(scale=scale, keep_ratio=False, border_mode=cv2.BORDER_CONSTANT, p=0.5)
        return A.Compose([affine], seed=seed + (axis == "x"))

    return {0: one_axis("y"), 1: one_axis("x")}


def augment_where(augment, squares: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """:func:`augment_squares` on the ``chosen`` squares only (a boolean per square); the others pass unchanged."""
    out = squares.copy()
    if chosen.any():
        out[chosen] = augment_squares(augment, squares[chosen])
    return out


def augment_squares(augment, squares: np.ndarray) -> np.ndarray:
    """Apply an albumentations pipeline to each ``(n, size, size[, 1])`` uint8 square; same shape out."""
    images = squares[..., 0] if squares.ndim == 4 else squares
    out = np.stack([augment(image=np.ascontiguousarray(image))["image"] for image in images])
    return out.reshape(squares.shape).astype(np.uint8)


def equalize_squares(squares: np.ndarray) -> np.ndarray:
    """Histogram-equalise each ``(n, size, size[, 1])`` square (0-255, any dtype) again after augmentation, as
    a ``trim_equalize`` model's inputs always are; uint8 out, same shape."""
    images = np.clip(np.rint(squares), 0, 255).astype(np.uint8).reshape(-1, *squares.shape[1:3])
    return np.stack([cv2.equalizeHist(image) for image in images]).reshape(squares.shape)
