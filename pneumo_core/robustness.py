"""Robustness of a model to framing, aspect, exposure, resolution, rotation and burned-in markers.

A :class:`Perturbation` maps a decoded, full-size grayscale X-ray (``XRay.gray`` from
``imaging.read_xray_file``) to another 2-D uint8 image. It is applied *before* the model's standard squash
(``LoadedModel.square``), so the model sees what it would see if the same X-ray had been framed, exposed or
stored differently. Every transform is an OpenCV call (``copyMakeBorder``, ``resize``, ``LUT``, CLAHE,
``equalizeHist``, ``GaussianBlur``, JPEG ``imencode``/``imdecode``, ``warpAffine``, ``putText``).

:func:`evaluate_robustness` reads the images unperturbed and under every perturbation of :data:`CATALOGUE`
and measures, per perturbation: ROC AUC, sensitivity and specificity at the model's shipped threshold, the
flip rate (share of images whose label at the threshold changes), the mean absolute change of the
probability, and the expected calibration error (ECE). Its summary names the worst perturbations and checks
issue 8's done-when criteria (framing +-10 % and gamma 0.7 to 1.4 each flip at most 3 % of readings and move
specificity by at most 0.03; ROC AUC >= 0.99; ECE under shift, the mean ECE over all perturbations, <= 0.05).

Images are decoded once and perturbed lazily, one batch at a time, so memory stays bounded by a batch of
decoded images whatever the number of images and perturbations.

A note on the aspect family: the contract squashes every image to a square, so stretching the whole image
would change the model's input only through interpolation. The aspect rows therefore stretch the content
horizontally within the same frame: the width is resized and then cut back (stretch) or filled out with
replicated edges (squeeze) to the original width, so the chest's proportions in the square change.

Usage:
    python -m pneumo_core robustness --model cnn --data DIR          # internal test split -> models/cnn/robustness.json
    python -m pneumo_core robustness --model cnn --data DIR --split val   # -> robustness_val.json, for choosing models
    python -m pneumo_core robustness --model cnn --data other/ --out other_robustness.json
    result = evaluate_robustness(loaded, grays, labels)             # grays: decoded XRay.gray arrays
    result = read_robustness(Path("models/cnn"))                    # None when not measured (no TensorFlow)
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd

from pneumo_core import artifacts, data
from pneumo_core.imaging import ImageRejected, read_xray_file
from pneumo_core.metrics import confusion, expected_calibration_error
from pneumo_core.registry import CLASS_NAMES

if TYPE_CHECKING:  # Loading a model imports TensorFlow; reading robustness.json does not.
    from pneumo_core.artifacts import LoadedModel

LOGGER = logging.getLogger(__name__)
ROBUSTNESS_FILE = "robustness.json"  # the internal test split: what the cards, the pages and the README report
VALIDATION_ROBUSTNESS_FILE = "robustness_val.json"  # the validation split: what choosing between models uses
SPLIT_FILES = {"test": ROBUSTNESS_FILE, "val": VALIDATION_ROBUSTNESS_FILE}
SPLIT_KINDS = {"test": "internal test split", "val": "internal validation split"}
SCHEMA_VERSION = 1
BATCH_SIZE = 32
WORKERS = 2
NOISE_SEED = 20240808
WORST_SHOWN = 3

# Issue 8's done-when limits.
MAX_FLIP_RATE = 0.03
MAX_SPECIFICITY_CHANGE = 0.03
MIN_ROC_AUC = 0.99
MAX_ECE_UNDER_SHIFT = 0.05

METRICS_SHOWN = {"flip_rate": "Flip rate", "specificity_change": "Specificity change"}


class RobustnessError(ValueError):
    """Robustness cannot be measured or saved as asked; ``str(error)`` says why."""


# --- The perturbations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Perturbation:
    """One named change of a decoded X-ray, applied before the model's squash.

    Attributes:
        name: Short unique name (a heatmap column), e.g. ``"pad 10 % edge"``.
        family: ``framing``, ``aspect``, ``exposure``, ``resolution``, ``rotation`` or ``marker``.
        strength: What exactly is done, in words.
        function: ``gray uint8 2-D -> gray uint8 2-D``.
    """

    name: str
    family: str
    strength: str
    function: Callable[[np.ndarray], np.ndarray] = field(repr=False, compare=False)

    def __call__(self, gray: np.ndarray) -> np.ndarray:
        """The perturbed image.

        Raises:
            RobustnessError: If the input or the output is not a 2-D uint8 image.
        """
        _check_gray(gray, "input")
        return _check_gray(self.function(gray), f"output of {self.name!r}")


def _check_gray(gray: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(gray, np.ndarray) or gray.ndim != 2 or gray.dtype != np.uint8 or 0 in gray.shape:
        shape = getattr(gray, "shape", None)
        raise RobustnessError(
            f"The {what} must be a non-empty 2-D uint8 image, got {shape} {getattr(gray, 'dtype', '')}."
        )
    return gray


def _margins(gray: np.ndarray, fraction: float, horizontal: bool, vertical: bool) -> tuple[int, int]:
    """Pixels per side, ``(top and bottom, left and right)``, for ``fraction`` of the height and width."""
    height, width = gray.shape
    return (round(height * fraction) if vertical else 0, round(width * fraction) if horizontal else 0)


def pad(gray: np.ndarray, fraction: float, border: int, horizontal: bool = True, vertical: bool = True) -> np.ndarray:
    """Add ``fraction`` of the height (top and bottom) and of the width (left and right) as a border.

    ``border`` is ``cv2.BORDER_CONSTANT`` (black) or ``cv2.BORDER_REPLICATE`` (edge pixels repeated).
    """
    dy, dx = _margins(gray, fraction, horizontal, vertical)
    return cv2.copyMakeBorder(gray, dy, dy, dx, dx, border, value=0)


def crop(gray: np.ndarray, fraction: float, horizontal: bool = True, vertical: bool = True) -> np.ndarray:
    """Cut ``fraction`` of the height off the top and the bottom and of the width off each side."""
    dy, dx = _margins(gray, fraction, horizontal, vertical)
    height, width = gray.shape
    return np.ascontiguousarray(gray[dy : height - dy, dx : width - dx])


def stretch_width(gray: np.ndarray, factor: float) -> np.ndarray:
    """Stretch the content's width by ``factor`` within the same frame (same output size).

    Above 1 the widened image is cut back to its width (centred); below 1 the narrowed image is
    filled out to its width with replicated edge pixels.
    """
    height, width = gray.shape
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(gray, (max(1, round(width * factor)), height), interpolation=interpolation)
    extra = resized.shape[1] - width
    if extra >= 0:
        return np.ascontiguousarray(resized[:, extra // 2 : extra // 2 + width])
    left = -extra // 2
    return cv2.copyMakeBorder(resized, 0, 0, left, -extra - left, cv2.BORDER_REPLICATE)


def gamma(gray: np.ndarray, value: float) -> np.ndarray:
    """Gamma curve ``255 * (x / 255) ** value``: below 1 brightens, above 1 darkens."""
    table = np.round(255.0 * (np.arange(256) / 255.0) ** value).astype(np.uint8)
    return cv2.LUT(gray, table)


def contrast(gray: np.ndarray, factor: float) -> np.ndarray:
    """Scale the distance of every grey level from the image's mean by ``factor`` (clipped to 0-255)."""
    mean = float(cv2.mean(gray)[0])
    table = np.clip(np.round(mean + factor * (np.arange(256) - mean)), 0, 255).astype(np.uint8)
    return cv2.LUT(gray, table)


def clahe(gray: np.ndarray) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (clip limit 2, 8 x 8 tiles)."""
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(gray)


def equalise_histogram(gray: np.ndarray) -> np.ndarray:
    """Global histogram equalisation."""
    return cv2.equalizeHist(gray)


def down_up(gray: np.ndarray, factor: int) -> np.ndarray:
    """Downscale by ``factor`` (area averaging), then back up to the original size (bilinear)."""
    height, width = gray.shape
    small = cv2.resize(
        gray, (max(1, round(width / factor)), max(1, round(height / factor))), interpolation=cv2.INTER_AREA
    )
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def blur(gray: np.ndarray, fraction: float) -> np.ndarray:
    """Gaussian blur with a sigma of ``fraction`` of the longer side (the same look at any resolution)."""
    return cv2.GaussianBlur(gray, (0, 0), sigmaX=fraction * max(gray.shape))


def gaussian_noise(gray: np.ndarray, sd: float) -> np.ndarray:
    """Add Gaussian noise of ``sd`` grey levels (fixed seed, so every run adds the same noise)."""
    noise = np.random.default_rng(NOISE_SEED).standard_normal(gray.shape, dtype=np.float32) * sd
    return np.clip(gray.astype(np.float32) + noise, 0, 255).round().astype(np.uint8)


def jpeg(gray: np.ndarray, quality: int) -> np.ndarray:
    """Re-compress as a JPEG of ``quality`` (1-100) and decode it again."""
    ok, encoded = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RobustnessError("OpenCV could not encode the image as JPEG.")
    return cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)


def rotate(gray: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate about the centre by ``degrees`` (positive: counter-clockwise), corners filled black."""
    height, width = gray.shape
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(gray, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)


MARKER_HEIGHT = 0.06  # text height, as a fraction of the shorter side
MARKER_MARGIN = 0.03  # distance from the edges, as a fraction of the shorter side


def burn_marker(gray: np.ndarray, text: str, corner: str) -> np.ndarray:
    """Write ``text`` in white into the ``"top-left"`` or ``"top-right"`` corner, as a burned-in label."""
    font, side = cv2.FONT_HERSHEY_SIMPLEX, min(gray.shape)
    (_, unit_height), _ = cv2.getTextSize(text, font, 1.0, 1)
    scale = MARKER_HEIGHT * side / unit_height
    thickness = max(1, round(scale * 2))
    (text_width, text_height), _ = cv2.getTextSize(text, font, scale, thickness)
    margin = max(1, round(MARKER_MARGIN * side))
    left = margin if corner == "top-left" else gray.shape[1] - margin - text_width
    marked = gray.copy()
    cv2.putText(marked, text, (left, margin + text_height), font, scale, 255, thickness, cv2.LINE_AA)
    return marked


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g} %"


def _make(name: str, family: str, strength: str, function: Callable[..., np.ndarray], **settings) -> Perturbation:
    """A :class:`Perturbation` of ``function`` with its keyword ``settings`` bound."""
    return Perturbation(name, family, strength, functools.partial(function, **settings) if settings else function)


def _framing() -> list[Perturbation]:
    black, edge = cv2.BORDER_CONSTANT, cv2.BORDER_REPLICATE
    items = []
    for fraction in (0.05, 0.10, 0.15):
        share = _percent(fraction)
        items += [
            _make(f"pad {share} black", "framing", f"{share} added on each side, black", pad,
                  fraction=fraction, border=black),
            _make(f"pad {share} edge", "framing", f"{share} added on each side, edge pixels repeated", pad,
                  fraction=fraction, border=edge),
            _make(f"crop {share}", "framing", f"{share} cut off each side", crop, fraction=fraction),
        ]  # fmt: skip
    for axis, sides, one_axis in (
        ("left-right", "left and right", {"horizontal": True, "vertical": False}),
        ("top-bottom", "top and bottom", {"horizontal": False, "vertical": True}),
    ):
        items += [
            _make(f"pad 10 % black {axis}", "framing", f"10 % added {sides} only, black", pad,
                  fraction=0.10, border=black, **one_axis),
            _make(f"pad 10 % edge {axis}", "framing", f"10 % added {sides} only, edge pixels repeated", pad,
                  fraction=0.10, border=edge, **one_axis),
            _make(f"crop 10 % {axis}", "framing", f"10 % cut off {sides} only", crop, fraction=0.10, **one_axis),
        ]  # fmt: skip
    return items


def _aspect() -> list[Perturbation]:
    return [
        _make(f"stretch width x{factor:g}", "aspect", f"content width x{factor:g} in the same frame", stretch_width,
              factor=factor)
        for factor in (0.8, 0.9, 1.1, 1.25)
    ]  # fmt: skip


def _exposure() -> list[Perturbation]:
    return [
        *(_make(f"gamma {value:g}", "exposure", f"gamma {value:g} ({'brighter' if value < 1 else 'darker'})", gamma,
                value=value) for value in (0.7, 0.85, 1.2, 1.4)),
        *(_make(f"contrast x{factor:g}", "exposure", f"contrast x{factor:g} around the image's mean", contrast,
                factor=factor) for factor in (0.7, 1.3)),
        _make("CLAHE", "exposure", "adaptive histogram equalisation, clip limit 2, 8 x 8 tiles", clahe),
        _make("histogram equalisation", "exposure", "global histogram equalisation", equalise_histogram),
    ]  # fmt: skip


def _resolution() -> list[Perturbation]:
    return [
        *(_make(f"downscale 1/{factor}", "resolution", f"down to 1/{factor} of the size and back up", down_up,
                factor=factor) for factor in (2, 4)),
        *(_make(f"blur {_percent(fraction)}", "resolution",
                f"Gaussian blur, sigma {_percent(fraction)} of the longer side", blur, fraction=fraction)
          for fraction in (0.005, 0.01)),
        *(_make(f"noise sd {sd}", "resolution", f"Gaussian noise, sd {sd} grey levels, fixed seed", gaussian_noise,
                sd=sd) for sd in (8, 16)),
        *(_make(f"JPEG q{quality}", "resolution", f"re-compressed as JPEG quality {quality}", jpeg,
                quality=quality) for quality in (20, 50)),
    ]  # fmt: skip


def _rotation_and_markers() -> list[Perturbation]:
    return [
        _make("rotate +5°", "rotation", "5 degrees counter-clockwise, black corners", rotate, degrees=5.0),
        _make("rotate -5°", "rotation", "5 degrees clockwise, black corners", rotate, degrees=-5.0),
        _make("marker L", "marker", "white letter L burned into the top-left corner", burn_marker,
              text="L", corner="top-left"),
        _make("marker PORTABLE", "marker", "white label PORTABLE burned into the top-right corner", burn_marker,
              text="PORTABLE", corner="top-right"),
    ]  # fmt: skip


CATALOGUE: tuple[Perturbation, ...] = (*_framing(), *_aspect(), *_exposure(), *_resolution(), *_rotation_and_markers())
FAMILIES = ("framing", "aspect", "exposure", "resolution", "rotation", "marker")

# The perturbations of issue 8's done-when criteria.
FRAMING_10 = tuple(p.name for p in CATALOGUE if p.family == "framing" and "10 %" in p.name)
GAMMA_RANGE = tuple(p.name for p in CATALOGUE if p.name.startswith("gamma "))


def catalogue_by_name() -> dict[str, Perturbation]:
    """:data:`CATALOGUE` keyed by name."""
    return {perturbation.name: perturbation for perturbation in CATALOGUE}


# --- The typed result (robustness.json) -----------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """A model's figures on one version (unperturbed or perturbed) of the images, at its shipped threshold.

    ``roc_auc`` is None when the images hold one class only; ``sensitivity`` (``specificity``) when they
    hold no pneumonia (no normal) image.
    """

    roc_auc: float | None
    sensitivity: float | None
    specificity: float | None
    accuracy: float
    ece: float


@dataclass(frozen=True)
class PerturbationResult:
    """How the model's readings change under one perturbation."""

    name: str
    family: str
    strength: str
    figures: Figures
    flip_rate: float  # share of images whose label at the threshold differs from the unperturbed one
    flips_to_pneumonia: int  # NORMAL unperturbed -> PNEUMONIA perturbed
    flips_to_normal: int
    mean_abs_change: float  # mean |p(perturbed) - p(unperturbed)|
    roc_auc_change: float | None  # perturbed minus unperturbed
    sensitivity_change: float | None
    specificity_change: float | None


@dataclass(frozen=True)
class WorstCase:
    """A perturbation and its value of the figure it was ranked by."""

    perturbation: str
    value: float


@dataclass(frozen=True)
class Criterion:
    """One done-when criterion: what was measured, the limit and whether it holds.

    ``measured`` is None (and ``passed`` False) when the images or the perturbations do not allow it.
    """

    name: str
    measured: float | None
    limit: float
    at_most: bool  # True: passes when measured <= limit; False: when measured >= limit
    worst: str | None  # the perturbation that gave ``measured`` (None for unperturbed figures)
    passed: bool


@dataclass(frozen=True)
class RobustnessSummary:
    """The worst perturbations, the ECE under shift and issue 8's done-when check."""

    worst_by_flip_rate: tuple[WorstCase, ...]
    worst_by_specificity_change: tuple[WorstCase, ...]  # largest absolute change first (signed values)
    ece_under_shift: float | None  # mean ECE over all perturbations
    criteria: tuple[Criterion, ...]
    all_passed: bool

    @property
    def targets_met(self) -> int:
        """How many of the done-when criteria are met."""
        return sum(criterion.passed for criterion in self.criteria)


@dataclass(frozen=True)
class DataSource:
    """Where the images came from (paths relative to the repository)."""

    kind: str  # "internal test split", "internal validation split", "folder" or "in memory"
    description: str
    folder: str | None
    split_file: str | None
    split_hash: str | None
    limit: int | None  # a random subset of this many images was measured


@dataclass(frozen=True)
class RobustnessResult:
    """``robustness.json``: a model's figures unperturbed and under every perturbation."""

    schema_version: int
    model: str
    model_sha256: str  # sha256 of the model.keras that was measured
    threshold: float
    data: DataSource
    n: int
    n_per_class: dict[str, int]
    n_unreadable: int  # images that could not be read and were left out
    seconds: float
    unperturbed: Figures
    perturbations: tuple[PerturbationResult, ...]
    summary: RobustnessSummary

    def by_name(self) -> dict[str, PerturbationResult]:
        """The perturbation results keyed by perturbation name."""
        return {row.name: row for row in self.perturbations}


IN_MEMORY = DataSource(kind="in memory", description="images passed in memory", folder=None, split_file=None,
                       split_hash=None, limit=None)  # fmt: skip


# --- Measuring ------------------------------------------------------------------------------------------


def evaluate_robustness(
    loaded: LoadedModel,
    grays: Iterable[np.ndarray | None],
    labels: Sequence[int] | np.ndarray,
    perturbations: Sequence[Perturbation] = CATALOGUE,
    *,
    source: DataSource = IN_MEMORY,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[str], None] | None = None,
) -> RobustnessResult:
    """Read every image unperturbed and under every perturbation; measure how the readings change.

    Each image is perturbed, squashed by ``loaded.square`` and predicted in batches through
    ``loaded.predict_squares`` (the classifier alone: no out-of-distribution gate). Only one batch of
    decoded images is held at a time, so ``grays`` can be a generator that decodes lazily.

    Args:
        loaded: The model.
        grays: Decoded full-size grayscale images (``XRay.gray``), in the order of ``labels``; ``None``
            marks an image that could not be read, which is left out with its label.
        labels: 0/1 per image (1 = PNEUMONIA).
        perturbations: The perturbations to measure (default: the whole :data:`CATALOGUE`).
        source: Where the images came from, recorded in the result.
        batch_size: Images decoded, perturbed and predicted at once.
        progress: Called with one line of text after each batch.

    Returns:
        The typed result; save it with ``artifacts.write_json``.

    Raises:
        RobustnessError: If the labels are not 0/1, their number differs from the images', no image
            could be read, or two perturbations share a name.
    """
    labels = _checked_labels(labels, perturbations)
    started = time.perf_counter()
    chunks: list[np.ndarray] = []  # per batch: (1 + len(perturbations), readable images) probabilities
    kept = np.zeros(len(labels), dtype=bool)
    seen = 0
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for batch in _batches(grays, batch_size):
            if seen + len(batch) > len(labels):
                raise RobustnessError(f"More images than the {len(labels)} labels given.")
            readable = [gray for gray in batch if gray is not None]
            kept[seen : seen + len(batch)] = [gray is not None for gray in batch]
            seen += len(batch)
            if readable:
                chunks.append(np.stack([_predict(loaded, pool, readable, p) for p in (None, *perturbations)]))
            if progress is not None:
                progress(
                    f"{loaded.spec.name}: {seen}/{len(labels)} images under {len(perturbations)} perturbations, "
                    f"{time.perf_counter() - started:.0f} s"
                )
    if seen != len(labels):
        raise RobustnessError(f"{seen} images for {len(labels)} labels: give one label per image.")
    if not chunks:
        raise RobustnessError("None of the images could be read, so nothing was measured.")
    probabilities = np.concatenate(chunks, axis=1)
    return _result(loaded, labels[kept], probabilities, perturbations, source, time.perf_counter() - started)


def _checked_labels(labels: Sequence[int] | np.ndarray, perturbations: Sequence[Perturbation]) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0 or not np.isin(labels, (0, 1)).all():
        raise RobustnessError("Labels must be a non-empty list of 0 (NORMAL) and 1 (PNEUMONIA).")
    names = [perturbation.name for perturbation in perturbations]
    if len(set(names)) != len(names):
        raise RobustnessError("Two perturbations share a name; every heatmap column needs its own.")
    return labels.astype(int)


def _batches(items: Iterable[np.ndarray | None], size: int) -> Iterator[list[np.ndarray | None]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _predict(
    loaded: LoadedModel, pool: ThreadPoolExecutor, grays: list[np.ndarray], perturbation: Perturbation | None
) -> np.ndarray:
    """Probabilities of ``grays``, perturbed (unless ``perturbation`` is None) and squashed by the model's rule."""
    if perturbation is None:
        squares = list(pool.map(loaded.square, grays))
    else:
        squares = list(pool.map(lambda gray: loaded.square(perturbation(gray)), grays))
    return np.asarray(loaded.predict_squares(np.stack(squares)), dtype=np.float64)


def figures_of(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> Figures:
    """ROC AUC, sensitivity, specificity, accuracy at ``threshold`` and ECE of one set of readings."""
    from sklearn import metrics as skm  # Here, not at import: the Compare page reads this module.

    operating = confusion(labels, probabilities, threshold)
    both = len(np.unique(labels)) == 2
    return Figures(
        roc_auc=float(skm.roc_auc_score(labels, probabilities)) if both else None,
        sensitivity=operating["sensitivity"],
        specificity=operating["specificity"],
        accuracy=operating["accuracy"],
        ece=expected_calibration_error(labels, probabilities),
    )


def _change(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def perturbation_result(
    perturbation: Perturbation,
    labels: np.ndarray,
    unperturbed: np.ndarray,
    perturbed: np.ndarray,
    threshold: float,
    baseline: Figures,
) -> PerturbationResult:
    """The figures of one perturbation and how far they moved from the unperturbed ones."""
    before, after = unperturbed >= threshold, perturbed >= threshold
    figures = figures_of(labels, perturbed, threshold)
    return PerturbationResult(
        name=perturbation.name,
        family=perturbation.family,
        strength=perturbation.strength,
        figures=figures,
        flip_rate=float(np.mean(before != after)),
        flips_to_pneumonia=int(np.count_nonzero(~before & after)),
        flips_to_normal=int(np.count_nonzero(before & ~after)),
        mean_abs_change=float(np.mean(np.abs(perturbed - unperturbed))),
        roc_auc_change=_change(figures.roc_auc, baseline.roc_auc),
        sensitivity_change=_change(figures.sensitivity, baseline.sensitivity),
        specificity_change=_change(figures.specificity, baseline.specificity),
    )


def _result(
    loaded: LoadedModel,
    labels: np.ndarray,
    probabilities: np.ndarray,
    perturbations: Sequence[Perturbation],
    source: DataSource,
    seconds: float,
) -> RobustnessResult:
    threshold = loaded.threshold
    baseline = figures_of(labels, probabilities[0], threshold)
    rows = tuple(
        perturbation_result(perturbation, labels, probabilities[0], probabilities[index], threshold, baseline)
        for index, perturbation in enumerate(perturbations, start=1)
    )
    return RobustnessResult(
        schema_version=SCHEMA_VERSION,
        model=loaded.spec.name,
        model_sha256=loaded.config.checksums.get(artifacts.MODEL_FILE, ""),
        threshold=float(threshold),
        data=source,
        n=len(labels),
        n_per_class={name: int(np.count_nonzero(labels == index)) for index, name in enumerate(CLASS_NAMES)},
        n_unreadable=0,
        seconds=round(seconds, 1),
        unperturbed=baseline,
        perturbations=rows,
        summary=summarise(baseline, rows),
    )


def summarise(baseline: Figures, rows: Sequence[PerturbationResult]) -> RobustnessSummary:
    """The worst perturbations, the ECE under shift and the done-when criteria."""
    by_flips = sorted(rows, key=lambda row: row.flip_rate, reverse=True)
    with_specificity = [row for row in rows if row.specificity_change is not None]
    by_specificity = sorted(with_specificity, key=lambda row: abs(row.specificity_change), reverse=True)
    ece_under_shift = float(np.mean([row.figures.ece for row in rows])) if rows else None
    criteria = (
        *_group_criteria("framing ±10 %", [row for row in rows if row.name in FRAMING_10]),
        *_group_criteria("gamma 0.7 to 1.4", [row for row in rows if row.name in GAMMA_RANGE]),
        _criterion("ROC AUC, unperturbed", baseline.roc_auc, MIN_ROC_AUC, at_most=False),
        _criterion("ECE under shift", ece_under_shift, MAX_ECE_UNDER_SHIFT),
    )
    return RobustnessSummary(
        worst_by_flip_rate=tuple(WorstCase(row.name, row.flip_rate) for row in by_flips[:WORST_SHOWN]),
        worst_by_specificity_change=tuple(
            WorstCase(row.name, row.specificity_change) for row in by_specificity[:WORST_SHOWN]
        ),
        ece_under_shift=ece_under_shift,
        criteria=criteria,
        all_passed=all(criterion.passed for criterion in criteria),
    )


def _group_criteria(group: str, rows: Sequence[PerturbationResult]) -> tuple[Criterion, Criterion]:
    """Largest flip rate and largest |specificity change| over a group of perturbations."""
    flips = max(rows, key=lambda row: row.flip_rate, default=None)
    moved = [row for row in rows if row.specificity_change is not None]
    specificity = max(moved, key=lambda row: abs(row.specificity_change), default=None)
    measured_specificity = None if specificity is None else abs(specificity.specificity_change)
    return (
        _criterion(f"{group}: flip rate", None if flips is None else flips.flip_rate, MAX_FLIP_RATE, flips),
        _criterion(f"{group}: |specificity change|", measured_specificity, MAX_SPECIFICITY_CHANGE, specificity),
    )


def _criterion(
    name: str, measured: float | None, limit: float, worst: PerturbationResult | None = None, at_most: bool = True
) -> Criterion:
    passed = measured is not None and bool(measured <= limit if at_most else measured >= limit)
    return Criterion(
        name=name,
        measured=measured,
        limit=limit,
        at_most=at_most,
        worst=None if worst is None else worst.name,
        passed=passed,
    )


# --- Choosing and reading the images (the command line) -------------------------------------------------


@dataclass(frozen=True)
class ImageSelection:
    """The images to measure, their labels and where they come from."""

    paths: tuple[str, ...]
    labels: np.ndarray
    source: DataSource

    @property
    def full_internal_split(self) -> str | None:
        """``"test"`` or ``"val"`` when these are all the images of that internal split, else None."""
        if self.source.limit is not None:
            return None
        return next((split for split, kind in SPLIT_KINDS.items() if kind == self.source.kind), None)


def select_images(
    data_dir: Path,
    split_file: Path,
    trained_split_hash: str,
    limit: int | None = None,
    seed: int = data.SPLIT_SEED,
    split: str = "test",
) -> ImageSelection:
    """The internal test (or validation) split when ``data_dir`` holds exactly the split's images, else every image.

    Args:
        data_dir: A labelled folder (``NORMAL/`` and ``PNEUMONIA/``, optionally under ``train/``).
        split_file: The patient-grouped split file.
        trained_split_hash: The split hash the model was trained with.
        limit: Measure a random subset (fixed ``seed``) of this many images.
        seed: The seed of that subset.
        split: ``"test"`` (what is reported) or ``"val"`` (what choosing between models may use).

    Raises:
        RobustnessError: If the split file is not the model's (its test images may be training images).
        ValueError: If the folder holds no images.
    """
    if split not in SPLIT_KINDS:
        raise ValueError(f"Unknown split {split!r}; choose one of {', '.join(SPLIT_KINDS)}.")
    records = data.list_images(data_dir)
    saved = data.read_split(split_file) if split_file.is_file() else None
    in_split = None if saved is None else records.merge(saved[["file", "label", "split"]], on=["file", "label"])
    internal = saved is not None and len(in_split) == len(saved) == len(records)
    if internal:
        split_hash = data.split_hash(split_file)
        if split_hash != trained_split_hash:
            raise RobustnessError(
                f"{split_file.name} is not the split this model was trained with (its sha256 differs), so its test "
                "images may be training images. Pass the model's split file, or measure another folder with --out."
            )
        chosen = in_split[in_split["split"] == split]
        kind, folder_hash = SPLIT_KINDS[split], split_hash
        description = f"{kind} (split sha256 {split_hash[:12]})"
    else:
        chosen, kind, folder_hash = records, "folder", None
        description = f"every image of {artifacts.repo_relative(data_dir)}"
    limited = limit is not None and limit < len(chosen)
    if limited:
        chosen = chosen.sample(n=limit, random_state=seed).sort_index()
        description += f", a random {limit} of them"
    source = DataSource(
        kind=kind,
        description=description,
        folder=artifacts.repo_relative(data_dir),
        split_file=artifacts.repo_relative(split_file) if internal else None,
        split_hash=folder_hash,
        limit=limit if limited else None,
    )
    return ImageSelection(paths=tuple(chosen["path"]), labels=data.labels_of(chosen), source=source)


def decoded_grays(paths: Sequence[str], batch_size: int = BATCH_SIZE) -> Iterator[np.ndarray | None]:
    """Each file's decoded grayscale (``read_xray_file(path).gray``), or None when it cannot be read.

    Decoded by a few threads, one batch at a time (never more than ``batch_size`` images held here).
    """
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for start in range(0, len(paths), batch_size):
            yield from pool.map(_gray_or_none, paths[start : start + batch_size])


def _gray_or_none(path: str) -> np.ndarray | None:
    try:
        return read_xray_file(Path(path)).gray
    except ImageRejected:
        return None


def measure(
    loaded: LoadedModel, selection: ImageSelection, progress: Callable[[str], None] | None = None
) -> RobustnessResult:
    """:func:`evaluate_robustness` of ``loaded`` on the selected files, with the unreadable ones counted."""
    result = evaluate_robustness(
        loaded, decoded_grays(selection.paths), selection.labels, source=selection.source, progress=progress
    )
    n_unreadable = len(selection.paths) - result.n
    if n_unreadable:
        LOGGER.warning("%d image(s) could not be read and were left out.", n_unreadable)
    return dataclasses.replace(result, n_unreadable=n_unreadable)


def destination(model_dir: Path, selection: ImageSelection, out: Path | None) -> Path:
    """Where the result goes: ``out``, else the model's own file for a full internal split.

    That is ``robustness.json`` for the internal test split and ``robustness_val.json`` for the validation split.

    Raises:
        RobustnessError: When nothing says where to write, or ``out`` would overwrite one of the model's own
            files with figures that are not that full internal split's.
    """
    split = selection.full_internal_split
    if out is None:
        if split is None:
            raise RobustnessError(
                f"These images are not a full internal split ({selection.source.description}): pass --out FILE; "
                f"models/{model_dir.name}/{ROBUSTNESS_FILE} and {VALIDATION_ROBUSTNESS_FILE} hold the internal "
                "test and validation splits' figures only."
            )
        return model_dir / SPLIT_FILES[split]
    own = own_file(model_dir, out)
    if own is not None and (split is None or own != SPLIT_FILES[split]):
        raise RobustnessError(f"Not overwriting models/{model_dir.name}/{own} with figures of other images.")
    return out


def own_file(model_dir: Path, path: Path) -> str | None:
    """The name of the model's own robustness file ``path`` is (``robustness.json`` or ``robustness_val.json``)."""
    return next((name for name in SPLIT_FILES.values() if (model_dir / name).resolve() == path.resolve()), None)


def save_robustness(result: RobustnessResult, path: Path, model_dir: Path) -> Path:
    """Write ``result`` to ``path``; when that is one of the model's own files, re-seal the model directory.

    Raises:
        ModelRefused: If the model directory no longer matches its seal (nothing is blessed by sealing).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(path, result)
    own = own_file(model_dir, path)
    if own is not None:
        artifacts.seal(model_dir, updated=[own])
    return path


def progress_lines(result: RobustnessResult) -> list[str]:
    """One line per perturbation (and one for the unperturbed images), for the command line."""
    base = result.unperturbed
    lines = [f"unperturbed: ROC AUC {_fmt(base.roc_auc)}, sensitivity {_fmt(base.sensitivity)}, "
             f"specificity {_fmt(base.specificity)}, ECE {base.ece:.3f}"]  # fmt: skip
    for row in result.perturbations:
        lines.append(
            f"{row.name}: flips {row.flip_rate:.1%} ({row.flips_to_pneumonia} to pneumonia, {row.flips_to_normal} to "
            f"normal), mean |change| {row.mean_abs_change:.3f}, specificity {_signed(row.specificity_change)}, "
            f"sensitivity {_signed(row.sensitivity_change)}, ROC AUC {_fmt(row.figures.roc_auc)}, "
            f"ECE {row.figures.ece:.3f}"
        )
    return lines


# --- Reading and presenting (no TensorFlow) ----------------------------------------------------------


def framing_10_max_flip_rate(result: RobustnessResult) -> float:
    """The largest flip rate over the framing +-10 % perturbations (:data:`FRAMING_10`)."""
    return max(item.flip_rate for item in result.perturbations if item.name in FRAMING_10)


def read_robustness(directory: Path, split: str = "test") -> RobustnessResult | None:
    """``robustness.json`` (``split="val"``: ``robustness_val.json``) of a verified model directory, or None.

    Raises:
        ModelRefused: If the file is malformed or was measured on another model file.
    """
    path = Path(directory) / SPLIT_FILES[split]
    if not path.is_file():
        return None
    where = f"models/{Path(directory).name}/{SPLIT_FILES[split]}"
    try:
        result = artifacts.from_json(RobustnessResult, artifacts.read_json(path))
    except ValueError as error:
        raise artifacts.ModelRefused(f"{where} cannot be read: {error}") from None
    config_path = Path(directory) / artifacts.CONFIG_FILE
    if config_path.is_file():
        recorded = artifacts.read_json(config_path).get("checksums", {}).get(artifacts.MODEL_FILE)
        if recorded and recorded != result.model_sha256:
            raise artifacts.ModelRefused(f"{where} was measured on another model.keras; measure it again.")
    return result


def read_all(directories: Mapping[str, Path]) -> tuple[dict[str, RobustnessResult], list[str], dict[str, str]]:
    """The robustness results of several models: measured ones, names not measured, and problems by name."""
    results, not_measured, problems = {}, [], {}
    for name, directory in directories.items():
        try:
            result = read_robustness(directory)
        except ValueError as error:
            problems[name] = str(error)
            continue
        if result is None:
            not_measured.append(name)
        else:
            results[name] = result
    return results, not_measured, problems


def worst_cases_sentence(name: str, result: RobustnessResult) -> str:
    """One plain sentence naming a model's worst perturbations."""
    summary = result.summary
    rows = result.by_name()
    flips = ", ".join(
        f"{case.perturbation} ({case.value:.1%}: {_directions(rows.get(case.perturbation))})"
        for case in summary.worst_by_flip_rate
    )
    specificity = ", ".join(f"{case.perturbation} ({case.value:+.3f})" for case in summary.worst_by_specificity_change)
    sentence = f"`{name}` changes its answer most under {flips or 'no perturbation'}"
    if specificity:
        sentence += f"; specificity moves most under {specificity}"
    ece = "n/a" if summary.ece_under_shift is None else f"{summary.ece_under_shift:.3f}"
    return sentence + f". ECE under shift {ece} (unperturbed {result.unperturbed.ece:.3f})."


def _directions(row: PerturbationResult | None) -> str:
    """``"30 to normal, 13 to pneumonia"``: which way a perturbation's flips went."""
    return "n/a" if row is None else f"{row.flips_to_normal} to normal, {row.flips_to_pneumonia} to pneumonia"


def criterion_text(criterion: Criterion) -> str:
    """``"0.021 ✓ (crop 10 %)"``: measured value, pass or fail, and the perturbation that gave it."""
    if criterion.measured is None:
        return "not measurable ✗"
    worst = f" ({criterion.worst})" if criterion.worst else ""
    return f"{criterion.measured:.3f} {'✓' if criterion.passed else '✗'}{worst}"


def criterion_label(criterion: Criterion) -> str:
    """The criterion with its limit, e.g. ``"framing ±10 %: flip rate ≤ 0.03"``."""
    return f"{criterion.name} {'≤' if criterion.at_most else '≥'} {criterion.limit:g}"


def criteria_table(results: Mapping[str, RobustnessResult]) -> pd.DataFrame:
    """Done-when criteria (rows, with their limits) by model (columns): measured value, ✓ or ✗, worst case."""
    columns = {}
    for name, result in results.items():
        column = {criterion_label(c): criterion_text(c) for c in result.summary.criteria}
        column["all criteria met"] = "yes" if result.summary.all_passed else "no"
        columns[name] = column
    return pd.DataFrame(columns)


def heatmap_values(results: Mapping[str, RobustnessResult], metric: str) -> pd.DataFrame:
    """Models (rows) x perturbations (columns, catalogue order first) of ``flip_rate`` or ``specificity_change``."""
    if metric not in METRICS_SHOWN:
        raise ValueError(f"Unknown robustness figure {metric!r}; choose one of {', '.join(METRICS_SHOWN)}.")
    return _models_by_perturbations(results, lambda row: getattr(row, metric)).astype(float)


def flip_directions(results: Mapping[str, RobustnessResult]) -> pd.DataFrame:
    """The cells of :func:`heatmap_values` as words: which way the answers changed, e.g. ``"28 to normal, 1 to
    pneumonia"`` (a flip to normal is a pneumonia reading lost), ``""`` where not measured."""
    return _models_by_perturbations(results, _directions).fillna("")


def _models_by_perturbations(results: Mapping[str, RobustnessResult], cell: Callable) -> pd.DataFrame:
    known = [p.name for p in CATALOGUE]
    measured = {row.name for result in results.values() for row in result.perturbations}
    order = [name for name in known if name in measured] + sorted(measured - set(known))
    rows = {model: {row.name: cell(row) for row in result.perturbations} for model, result in results.items()}
    return pd.DataFrame.from_dict(rows, orient="index").reindex(columns=order)


def card_markdown(result: RobustnessResult) -> str:
    """The model card's robustness section."""
    summary = result.summary
    rows = result.by_name()
    worst = "; ".join(
        f"{case.perturbation}: {case.value:.1%} of readings change ({_directions(rows.get(case.perturbation))})"
        for case in summary.worst_by_flip_rate
    )
    ece = "n/a" if summary.ece_under_shift is None else f"{summary.ece_under_shift:.3f}"
    met = summary.targets_met
    return (
        "## Robustness to framing and exposure\n"
        f"The same {result.n} X-rays ({result.data.description}) were read again after {len(result.perturbations)} "
        "changes of framing, aspect, exposure, resolution, rotation and burned-in markers. A flip is a reading whose "
        f"answer at the threshold changes. Worst: {worst or 'none'}. ECE under shift (mean over the changes) {ece}, "
        f"unperturbed {result.unperturbed.ece:.3f}. Robustness targets met: {met} of {len(summary.criteria)}."
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"
