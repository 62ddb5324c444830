"""Figures of the out-of-distribution gate: what it accepts and what it refuses, measured by code.

The negative set is built from images that ship with well-kept packages (scikit-image's
``skimage.data`` photos, textures, documents and microscopy; pydicom's bundled CT, MR, nuclear
medicine, ultrasound and secondary-capture test files, decoded as plain pixels) plus seeded
synthetic textures and noise. None of it is ever used to fit or tune the gate: it is for testing
only. The near-misses are mild perturbations of X-rays (small rotation, gamma 0.9 / 1.1, slight
crop, contrast, JPEG recompression, 16-bit storage) that the gate must still accept.

:func:`fit_gate_dir` fits a model's gate on its training split (threshold on the validation split),
measures these figures (acceptance on the internal test split and on perturbed copies of it,
refusal of the negative set, cost) and writes them into ``gate.json``; :func:`gate_table` turns the
figures of every shipped model into a table for the Compare page and the model cards.

Usage:
    python -m pneumo_core fit-gate --model cnn --data DIR     # fit, measure, write gate.npz + gate.json
    negatives = negative_set()                                 # [(name, PNG bytes), ...]
    copy = perturb(gray, "gamma 0.9", np.random.default_rng(0))
    table = gate_table()
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from pneumo_core import artifacts, data
from pneumo_core.gate import (
    Acceptance,
    Gate,
    GateCost,
    GateInputs,
    GateParams,
    GateReport,
    Refusal,
    compiled,
    feature_layer_of,
    fit,
    forward,
    read_gate_settings,
    save_gate,
    two_output_model,
)
from pneumo_core.imaging import ImageRejected, read_xray, read_xray_file

LOGGER = logging.getLogger(__name__)
NEGATIVE_SEED = 20240901
PERTURBATION_SEED = 7
BATCH_SIZE = 32

# Distinct, offline-available images of scikit-image 0.26 (``cat`` is ``chelsea``; the rest need a download).
SKIMAGE_IMAGES = (
    "astronaut",
    "binary_blobs",
    "brick",
    "camera",
    "cell",
    "checkerboard",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "shepp_logan_phantom",
    "text",
)

# pydicom's bundled test files with distinct pixel content: CT, MR, nuclear medicine, ultrasound,
# a segmentation mask and secondary captures (a photo and rendered text).
DICOM_FILES = (
    "CT_small.dcm",
    "693_J2KI.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "MR_small.dcm",
    "examples_overlay.dcm",
    "JPGExtended.dcm",
    "examples_rgb_color.dcm",
    "examples_palette.dcm",
    "examples_jpeg2k.dcm",
    "examples_ybr_color.dcm",
    "liver_1frame.dcm",
    "image_dfl.dcm",
    "SC_rgb_jpeg.dcm",
    "GDCMJ2K_TextGBR.dcm",
)


def png_of(pixels: np.ndarray) -> bytes:
    """Encode a grayscale, RGB or RGBA array (any numeric dtype) as PNG bytes, stretching non-uint8 data to 8 bits."""
    array = np.asarray(pixels)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        values = array.astype(np.float64)
        low, high = float(values.min()), float(values.max())
        array = np.round((values - low) / max(high - low, 1e-12) * 255.0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def skimage_negatives() -> list[tuple[str, bytes]]:
    """Photos, textures, documents, microscopy and astronomy images bundled with scikit-image."""
    import skimage.data

    return [(f"skimage:{name}", png_of(getattr(skimage.data, name)())) for name in SKIMAGE_IMAGES]


def dicom_negatives() -> list[tuple[str, bytes]]:
    """Other modalities from pydicom's bundled test files, first frame, decoded as plain pixels."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_color_lut

    negatives = []
    for file_name in DICOM_FILES:
        with _quiet_pydicom():  # SC_rgb_jpeg.dcm declares explicit VR but is implicit: pydicom warns and copes.
            dataset = pydicom.dcmread(get_testdata_file(file_name))
            pixels = dataset.pixel_array
        if dataset.get("PhotometricInterpretation") == "PALETTE COLOR":
            pixels = apply_color_lut(pixels, dataset)
        if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
            pixels = pixels[0]
        negatives.append((f"pydicom:{file_name} ({dataset.get('Modality', '?')})", png_of(pixels)))
    return negatives


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings about the quirks of its own test files while reading them."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


def synthetic_negatives(seed: int = NEGATIVE_SEED) -> list[tuple[str, bytes]]:
    """Seeded noise, gradients, patterns and shapes that no X-ray looks like."""
    rng = np.random.default_rng(seed)
    return [(f"synthetic:{name}", png_of(make(rng))) for name, make in SYNTHETIC_MAKERS.items()]


def negative_set() -> list[tuple[str, bytes]]:
    """Every negative image as ``(name, PNG bytes)``: scikit-image, pydicom and synthetic ones."""
    return skimage_negatives() + dicom_negatives() + synthetic_negatives()


def _grid(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.linspace(-1.0, 1.0, size), np.linspace(-1.0, 1.0, size))


def _smooth_noise(rng: np.random.Generator, sigma: float, size: int = 256) -> np.ndarray:
    return cv2.GaussianBlur(rng.normal(0.0, 1.0, (size, size)), (0, 0), sigma)


def _rectangles(rng: np.random.Generator) -> np.ndarray:
    image = np.full((256, 256), 230.0)
    for _ in range(12):
        top, left = rng.integers(0, 200, 2)
        height, width = rng.integers(20, 90, 2)
        image[top : top + height, left : left + width] = rng.integers(0, 255)
    return image


def _circles(rng: np.random.Generator) -> np.ndarray:
    image = np.zeros((256, 256), dtype=np.uint8)
    for _ in range(15):
        center = tuple(int(v) for v in rng.integers(0, 256, 2))
        cv2.circle(image, center, int(rng.integers(8, 50)), int(rng.integers(60, 255)), thickness=-1)
    return image


def _scribbles(rng: np.random.Generator) -> np.ndarray:
    image = np.full((256, 320), 245, dtype=np.uint8)
    for row in range(20, 240, 18):
        left = 15
        while left < 290:
            width = int(rng.integers(8, 40))
            cv2.rectangle(image, (left, row), (min(left + width, 300), row + 7), 20, thickness=-1)
            left += width + int(rng.integers(5, 12))
    return image


SYNTHETIC_MAKERS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "uniform noise": lambda rng: rng.integers(0, 256, (256, 256)).astype(np.uint8),
    "gaussian noise": lambda rng: np.clip(rng.normal(128, 40, (256, 256)), 0, 255).astype(np.uint8),
    "smooth noise": lambda rng: _smooth_noise(rng, 8.0),
    "multi-scale noise": lambda rng: sum(_smooth_noise(rng, s) / s for s in (2.0, 6.0, 18.0)),
    "horizontal gradient": lambda rng: _grid()[0] + rng.normal(0, 0.02, (256, 256)),
    "radial gradient": lambda rng: -np.hypot(*_grid()) + rng.normal(0, 0.02, (256, 256)),
    "checkerboard": lambda rng: ((np.indices((256, 256)) // 16).sum(axis=0) % 2 * 255).astype(np.uint8),
    "sine grating": lambda rng: np.sin(12 * (_grid()[0] + _grid()[1])),
    "rectangles": _rectangles,
    "circles": _circles,
    "salt and pepper": lambda rng: np.where(rng.random((256, 256)) < 0.5, 0, 255).astype(np.uint8),
    "nearly constant": lambda rng: np.clip(rng.normal(128, 1.0, (256, 256)), 0, 255).astype(np.uint8),
    "wide banner": lambda rng: rng.integers(0, 256, (64, 640)).astype(np.uint8),
    "text-like scribbles": _scribbles,
}


# Mild perturbations of an X-ray that must not change the gate's answer.
def _rotate(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angle = float(rng.choice([-1.0, 1.0]) * rng.uniform(2.0, 5.0))
    height, width = gray.shape
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    return cv2.warpAffine(gray, matrix, (width, height), borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _gamma(gray: np.ndarray, gamma: float) -> np.ndarray:
    table = np.round(255.0 * (np.arange(256) / 255.0) ** gamma).astype(np.uint8)
    return table[gray]


def _crop(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = gray.shape
    top, bottom, left, right = (rng.uniform(0.0, 0.06, 4) * [height, height, width, width]).astype(int)
    return gray[top : height - bottom, left : width - right]


def _contrast(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    factor = float(rng.uniform(0.85, 1.15))
    return np.clip((gray.astype(np.float64) - 128.0) * factor + 128.0, 0, 255).astype(np.uint8)


def _jpeg(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="JPEG", quality=int(rng.integers(60, 80)))
    return np.asarray(Image.open(buffer).convert("L"))


PERTURBATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "rotate 2-5 degrees": _rotate,
    "gamma 0.9": lambda gray, rng: _gamma(gray, 0.9),
    "gamma 1.1": lambda gray, rng: _gamma(gray, 1.1),
    "crop up to 6 % per side": _crop,
    "contrast +-15 %": _contrast,
    "JPEG quality 60-80": _jpeg,
}


def perturb(gray: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    """Apply the mild perturbation ``name`` (a key of :data:`PERTURBATIONS`) to a 2-D uint8 image."""
    if name not in PERTURBATIONS:
        raise ValueError(f"Unknown perturbation {name!r}; known: {', '.join(PERTURBATIONS)}.")
    return PERTURBATIONS[name](gray, rng)


# --- Fitting a model's gate and measuring it ----------------------------------------------------------


def fit_gate_dir(
    directory: Path, data_dir: Path, split_file: Path = data.DEFAULT_SPLIT_FILE, measure: bool = True
) -> GateParams:
    """Fit the gate of a model directory on its training split, measure it, write and seal its files.

    Args:
        directory: A sealed model directory (``models/<name>``).
        data_dir: The dataset folder holding the split's images.
        split_file: The split the model was trained with (its hash must match the model's config).
        measure: Also measure the figures of :class:`~pneumo_core.gate.GateReport` (the internal test
            split, its perturbed copies, the negative set and the cost) and store them in ``gate.json``.

    Returns:
        The fitted gate, as saved.

    Raises:
        ValueError: If the split is not the model's, or an image of the split cannot be read.
    """
    loaded = artifacts.load_model_dir(directory)
    frame = data.model_split_frame(
        split_file, data_dir, loaded.config.data.split_hash, loaded.spec.name, purpose="the gate"
    )
    layer = feature_layer_of(loaded.model)
    network = compiled(two_output_model(loaded.model, layer))
    inputs = {}
    for split in ("train", "val"):
        rows = frame[frame["split"] == split]
        inputs[split] = GateInputs()
        for grays, labels in _decoded_batches(rows["path"].tolist(), data.labels_of(rows)):
            _, features = forward(network, loaded.spec.model_input, np.stack([loaded.square(g) for g in grays]))
            inputs[split].add(grays, features, labels)
        LOGGER.info("Gate of %s: %d %s images read", loaded.spec.name, len(inputs[split].labels), split)
    params = fit(loaded.spec.name, layer, inputs["train"], inputs["val"], loaded.config.data.split_hash)
    if measure:
        test = frame[frame["split"] == "test"]
        report = measure_gate(Gate(loaded, params), test["path"].tolist(), data.labels_of(test))
        params = dataclasses.replace(params, settings=dataclasses.replace(params.settings, report=report))
    save_gate(directory, params)
    LOGGER.info(
        "Wrote the gate of %s (validation acceptance %.3f)", loaded.spec.name, params.settings.fitted_on.val_acceptance
    )
    return params


def _decoded_batches(paths: Sequence[str], labels: np.ndarray) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
    """Decoded grayscale images in batches, decoded by a few threads."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        for start in range(0, len(paths), BATCH_SIZE):
            chunk = paths[start : start + BATCH_SIZE]
            yield list(pool.map(_read_gray, chunk)), labels[start : start + BATCH_SIZE]


def _read_gray(path: str) -> np.ndarray:
    try:
        return read_xray_file(Path(path)).gray
    except ImageRejected as error:
        raise ValueError(f"{path}: {error}") from error


def measure_gate(gate: Gate, test_paths: Sequence[str], test_labels: np.ndarray) -> GateReport:
    """The figures of a fitted gate: acceptance of the internal test split, of perturbed copies of it and
    of the sample X-rays, refusal of the negative set, and its cost."""
    from pneumo_core.diagnosis import list_samples

    class_names = gate.loaded.spec.class_names
    rng = np.random.default_rng(PERTURBATION_SEED)
    kinds = list(PERTURBATIONS)
    test_accepted, perturbed_accepted, perturbed_kind, first_grays = [], [], [], []
    for grays, _ in _decoded_batches(test_paths, np.asarray(test_labels)):
        first_grays = first_grays or grays[:4]
        test_accepted += _accepted(gate, grays)
        copies, copy_kinds = [], []
        for gray in grays:
            kind = kinds[(len(perturbed_kind) + len(copy_kinds)) % len(kinds)]
            copies.append(perturb(gray, kind, rng))
            copy_kinds.append(kind)
        perturbed_accepted += _accepted(gate, copies)
        perturbed_kind += copy_kinds
    test_accepted, perturbed_accepted = np.asarray(test_accepted), np.asarray(perturbed_accepted)
    perturbed_kind = np.asarray(perturbed_kind)
    labels = np.asarray(test_labels)
    sample_grays = [read_xray_file(sample.path).gray for sample in list_samples()]
    return GateReport(
        internal_test=_acceptance(test_accepted),
        internal_test_by_class={name: _acceptance(test_accepted[labels == i]) for i, name in enumerate(class_names)},
        perturbed_test=_acceptance(perturbed_accepted),
        perturbed_by_kind={kind: _acceptance(perturbed_accepted[perturbed_kind == kind]) for kind in kinds},
        samples=_acceptance(np.asarray(_accepted(gate, sample_grays))) if sample_grays else _acceptance(np.zeros(0)),
        **measure_negatives(gate),
        cost=measure_cost(gate, sample_grays or first_grays),
    )


def _accepted(gate: Gate, grays: Sequence[np.ndarray]) -> list[bool]:
    if not grays:
        return []
    return [verdict.accepted for verdict in gate.assess(grays)[1]]


def _acceptance(accepted: np.ndarray) -> Acceptance:
    n, count = len(accepted), int(np.count_nonzero(accepted))
    return Acceptance(n=n, accepted=count, rate=count / n if n else 0.0)


def _refusal(refused: Sequence[bool]) -> Refusal:
    n, count = len(refused), int(np.count_nonzero(refused))
    return Refusal(n=n, refused=count, rate=count / n if n else 0.0)


def plain_gray(png: bytes) -> np.ndarray:
    """The pixels of an image as 8-bit luminance, without the reader's checks (for the gate-alone figure)."""
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("L"))


def negative_grays(negatives: Sequence[tuple[str, bytes]]) -> list[tuple[str, np.ndarray, bool]]:
    """``(name, gray, refused by the reader)`` per negative: the reader's grayscale when it accepts the
    file, else the plain luminance of its pixels, so the gate is judged on every image."""
    out = []
    for name, png in negatives:
        try:
            out.append((name, read_xray(png).gray, False))
        except ImageRejected:
            out.append((name, plain_gray(png), True))
    return out


def measure_negatives(gate: Gate) -> dict:
    """Refusal of the negative set by the gate alone, by the reader or the gate, and per source."""
    cases = negative_grays(negative_set())
    verdicts = gate.assess([gray for _, gray, _ in cases])[1]
    refused = [not verdict.accepted for verdict in verdicts]
    by_reader_or_gate = [gate_refused or reader for gate_refused, (_, _, reader) in zip(refused, cases, strict=True)]
    sources = sorted({name.split(":", 1)[0] for name, _, _ in cases})
    return {
        "negatives": _refusal(refused),
        "negatives_with_reader": _refusal(by_reader_or_gate),
        "negatives_by_source": {
            source: _refusal([r for r, (name, _, _) in zip(refused, cases, strict=True) if name.startswith(source)])
            for source in sources
        },
        "negatives_accepted": tuple(name for r, (name, _, _) in zip(refused, cases, strict=True) if not r),
    }


def measure_cost(gate: Gate, grays: Sequence[np.ndarray], repeats: int = 10) -> GateCost:
    """Milliseconds the gate adds per image: its checks on the features, and the extra feature output.

    The extra output is timed as the compiled two-output model against the compiled model alone,
    interleaved image by image so that other load on the machine affects both alike.
    """
    squares = np.stack([gate.loaded.square(gray) for gray in grays])
    _, features = gate.forward(squares)
    judge = []
    for _ in range(repeats):
        for index, gray in enumerate(grays):
            started = time.perf_counter()
            gate.judge([gray], features[index : index + 1])
            judge.append(time.perf_counter() - started)
    large = cv2.resize(grays[0], (2000, 2500), interpolation=cv2.INTER_LINEAR)
    large_times = []
    for _ in range(repeats):
        started = time.perf_counter()
        gate.judge([large], features[:1])
        large_times.append(time.perf_counter() - started)
    alone, model_input = compiled(gate.loaded.model), gate.loaded.spec.model_input
    plain, with_features = [], []
    for _ in range(repeats + 1):
        for square in squares:
            batch = model_input(square[None])
            started = time.perf_counter()
            np.asarray(alone(batch))
            plain.append(time.perf_counter() - started)
            started = time.perf_counter()
            [np.asarray(output) for output in gate.network(batch)]
            with_features.append(time.perf_counter() - started)
    warm = len(squares)  # The first pass traces the graphs.
    return GateCost(
        judge_median_ms=round(1000 * float(np.median(judge)), 2),
        judge_p95_ms=round(1000 * float(np.percentile(judge, 95)), 2),
        judge_large_image_ms=round(1000 * float(np.median(large_times)), 2),
        two_output_overhead_ms=round(1000 * float(np.median(with_features[warm:]) - np.median(plain[warm:])), 2),
        cpus=os.cpu_count() or 0,
    )


# --- The figures as a table -------------------------------------------------------------------------


def gate_table(models_dir: Path = artifacts.MODELS_DIR) -> pd.DataFrame:
    """One row per shipped model with a measured gate: what it accepts, what it refuses, what it costs.

    Columns: model, validation X-rays accepted, internal test X-rays accepted, perturbed test X-rays
    accepted, negative images refused (gate alone), negative images refused (reader or gate), gate
    cost (ms per image). Rates are fractions in [0, 1]. Reads only ``gate.json`` (no TensorFlow).
    """
    rows = []
    for name, directory in artifacts.shipped_model_dirs(models_dir).items():
        settings = read_gate_settings(directory)
        if settings is None or settings.report is None:
            continue
        report = settings.report
        rows.append(
            {
                "model": name,
                "validation X-rays accepted": settings.fitted_on.val_acceptance,
                "internal test X-rays accepted": report.internal_test.rate,
                "perturbed test X-rays accepted": report.perturbed_test.rate,
                "negative images refused (gate)": report.negatives.rate,
                "negative images refused (reader or gate)": report.negatives_with_reader.rate,
                "negative images": report.negatives.n,
                "gate cost (ms per image)": report.cost.judge_median_ms + max(report.cost.two_output_overhead_ms, 0.0),
            }
        )
    return pd.DataFrame(rows)
