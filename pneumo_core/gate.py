"""The out-of-distribution gate: know when not to answer.

Every shipped model reads any picture as a chest X-ray. The gate scores how far an input lies from
the training X-rays and refuses it beyond a threshold, so that a photo, a document, a CT slice or a
texture gets a refusal with a reason instead of a confident "PNEUMONIA".

Three checks, all fitted on the training split's X-rays only:

1. **Image limits** on the decoded grayscale: contrast (grey-level standard deviation), number of
   distinct grey levels and aspect ratio, each with a wide margin around what the training X-rays show.
2. **Appearance**: a small descriptor of the image (8x8 brightness layout, intensity histogram,
   gradient and Laplacian statistics at three scales, 4x4 local contrast, left-right symmetry) and
   its Mahalanobis distance to the training X-rays.
3. **Model features**: the Mahalanobis distance of the model's own pooled features (the ``gap``
   layer, or the input of the output layer when there is none), taken from the same forward pass
   as the prediction, to the training X-rays (Lee et al. 2018, FRODO: class-conditional Gaussians
   with one shared Ledoit-Wolf covariance, after PCA when the features are wide).

Each distance is divided by its value at the refusal threshold, and the larger one is the
``ood_score``: 1.0 is the threshold, chosen on the validation split so that at least 99 % of
validation X-rays pass (:data:`VAL_ACCEPTANCE`). No image that is not a chest X-ray is used to fit
or tune anything here (see :mod:`pneumo_core.gate_figures` for how the gate is tested).

The parameters live in the model directory (``gate.npz`` arrays, ``gate.json`` settings and
measured figures), sealed with the rest of its files (:func:`pneumo_core.artifacts.seal`).

Usage:
    gate = load_gate(loaded)                         # None for a model directory without a gate
    probabilities, features = gate.forward(squares)  # one forward pass for both
    verdicts = gate.judge([xray.gray for xray in xrays], features)
    python -m pneumo_core fit-gate --model cnn --data DIR
"""

from __future__ import annotations

import io
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pneumo_core import artifacts
from pneumo_core.imaging import resize_square

if TYPE_CHECKING:  # Keras is imported only to build the two-output model.
    import keras

    from pneumo_core.artifacts import LoadedModel

LOGGER = logging.getLogger(__name__)
GATE_ARRAYS_FILE = "gate.npz"
GATE_FILE = "gate.json"
GATE_FILES = (GATE_ARRAYS_FILE, GATE_FILE)
GATE_SCHEMA_VERSION = 1
DESCRIPTOR_VERSION = 1
VAL_ACCEPTANCE = 0.995  # fraction of validation X-rays that pass (the issue asks for at least 0.99)
CAUTION_QUANTILE = 0.95  # accepted images above this validation quantile of the score get a caution
MAX_FEATURE_DIMS = 256  # wider features are reduced by PCA fitted on the training features
FEATURE_LAYER = "gap"  # pooled features; models without it use the input of the output layer
LIMIT_MARGIN = 2.0  # contrast and grey levels may be this many times lower, aspect ratios this much wider
DESCRIPTOR_SIZE = 128
MAX_SIDE_LOOKED_AT = 512  # px; larger images are looked at through every k-th row and column


# --- Descriptor and image statistics ------------------------------------------------------------------


def bounded_view(gray: np.ndarray, max_side: int = MAX_SIDE_LOOKED_AT) -> np.ndarray:
    """Every k-th row and column of ``gray`` (k the smallest that keeps both sides <= ``max_side``).

    The gate's checks look at this view, so their cost does not grow with the upload's size.
    """
    step = max(1, math.ceil(max(gray.shape) / max_side))
    return gray if step == 1 else np.ascontiguousarray(gray[::step, ::step])


def appearance_descriptor(gray: np.ndarray) -> np.ndarray:
    """A 124-number description of how an image looks, comparable across sizes.

    Brightness layout (8x8 block means), a 16-bin intensity histogram, gradient-magnitude histograms
    and mean absolute Laplacian at 128, 64 and 32 px, 4x4 block standard deviations and the
    correlation of the image with its mirror image, all on the image (its :func:`bounded_view`)
    squashed to 128x128 in [0, 1].
    """
    image = resize_square(bounded_view(gray), DESCRIPTOR_SIZE).astype(np.float32) / 255.0
    parts = [
        cv2.resize(image, (8, 8), interpolation=cv2.INTER_AREA).ravel(),
        np.histogram(image, bins=16, range=(0.0, 1.0))[0] / image.size,
    ]
    for size in (128, 64, 32):
        scaled = image if size == DESCRIPTOR_SIZE else cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        magnitude = np.hypot(cv2.Sobel(scaled, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(scaled, cv2.CV_32F, 0, 1, ksize=3))
        parts.append(np.histogram(magnitude, bins=8, range=(0.0, 2.0))[0] / magnitude.size)
        parts.append([float(np.abs(cv2.Laplacian(scaled, cv2.CV_32F)).mean())])
    blocks = image.reshape(4, DESCRIPTOR_SIZE // 4, 4, DESCRIPTOR_SIZE // 4).std(axis=(1, 3))
    parts.append(blocks.ravel())
    parts.append([_mirror_correlation(image)])
    return np.concatenate([np.asarray(part, dtype=np.float64).ravel() for part in parts])


def _mirror_correlation(image: np.ndarray) -> float:
    centred = image - image.mean()
    energy = float((centred * centred).sum())
    return float((centred * centred[:, ::-1]).sum() / energy) if energy > 0 else 0.0


@dataclass(frozen=True)
class ImageStats:
    """What the image limits look at."""

    contrast: float  # standard deviation of the grey levels
    grey_levels: int  # number of distinct grey levels
    aspect: float  # width / height

    @classmethod
    def of(cls, gray: np.ndarray) -> ImageStats:
        """The statistics of a 2-D uint8 image (grey levels and contrast of its :func:`bounded_view`)."""
        view = bounded_view(gray)
        counts = cv2.calcHist([view], [0], None, [256], [0, 256]).ravel().astype(np.float64)
        levels = np.arange(256, dtype=np.float64)
        mean = float(counts @ levels) / view.size
        variance = float(counts @ (levels - mean) ** 2) / view.size
        return cls(
            contrast=math.sqrt(variance),
            grey_levels=int(np.count_nonzero(counts)),
            aspect=gray.shape[1] / gray.shape[0],
        )


# --- Parameters ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageLimits:
    """Bounds of the cheap checks, derived from the training X-rays with a wide margin."""

    min_contrast: float
    min_grey_levels: int
    min_aspect: float
    max_aspect: float
    rule: str  # how the bounds were derived, in one sentence

    def problem(self, stats: ImageStats) -> str | None:
        """The user-facing reason an image breaks a limit, or None."""
        if stats.contrast < self.min_contrast:
            return (
                f"The image has almost no contrast (grey-level spread {stats.contrast:.1f}; the training X-rays "
                f"all have more than {self.min_contrast:.0f})."
            )
        if stats.grey_levels < self.min_grey_levels:
            return (
                f"The image has only {stats.grey_levels} distinct grey levels (the training X-rays all have more "
                f"than {self.min_grey_levels}): it looks like a drawing, a mask or a posterised picture."
            )
        if not self.min_aspect <= stats.aspect <= self.max_aspect:
            return (
                f"The image's width is {stats.aspect:.2f} times its height, far outside the shapes of the "
                f"training X-rays (accepted: {self.min_aspect:.2f} to {self.max_aspect:.2f})."
            )
        return None


@dataclass(frozen=True)
class Gaussians:
    """Class-conditional Gaussians with one shared precision matrix, optionally after a PCA projection."""

    class_means: np.ndarray  # (classes, k)
    precision: np.ndarray  # (k, k)
    scale: float  # the distance at which the score is 1.0 (the refusal threshold)
    pca_mean: np.ndarray | None = None  # (d,)
    pca_components: np.ndarray | None = None  # (k, d)

    def distances(self, vectors: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row to the nearest class mean."""
        x = np.asarray(vectors, dtype=np.float64)
        if self.pca_components is not None:
            x = (x - self.pca_mean) @ self.pca_components.T
        squared = []
        for mean in self.class_means:
            centred = x - mean
            squared.append(np.einsum("ij,jk,ik->i", centred, self.precision, centred))
        return np.sqrt(np.maximum(np.min(squared, axis=0), 0.0))

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """Distances divided by the threshold distance (1.0 = refusal threshold)."""
        return self.distances(vectors) / self.scale


@dataclass(frozen=True)
class FitFacts:
    """What the gate was fitted and tuned on."""

    split_hash: str
    train_images: int
    val_images: int
    val_acceptance: float  # fraction of validation X-rays the fitted gate accepts
    rule: str


@dataclass(frozen=True)
class Acceptance:
    """How many of ``n`` images the gate accepted."""

    n: int
    accepted: int
    rate: float


@dataclass(frozen=True)
class Refusal:
    """How many of ``n`` images were refused."""

    n: int
    refused: int
    rate: float


@dataclass(frozen=True)
class GateCost:
    """Time the gate adds per image on this machine (milliseconds)."""

    judge_median_ms: float  # limits + appearance + feature distance, on the sample X-rays
    judge_p95_ms: float
    judge_large_image_ms: float  # the same on a 2500x2000 px image
    two_output_overhead_ms: float  # forward pass with features minus the plain forward pass, per image
    cpus: int


@dataclass(frozen=True)
class GateReport:
    """Measured figures of a fitted gate (see :mod:`pneumo_core.gate_figures`)."""

    internal_test: Acceptance
    internal_test_by_class: dict[str, Acceptance]
    perturbed_test: Acceptance
    perturbed_by_kind: dict[str, Acceptance]
    samples: Acceptance
    negatives: Refusal  # the gate alone, on the pixels of every negative image
    negatives_with_reader: Refusal  # refused by the image reader or by the gate
    negatives_by_source: dict[str, Refusal]
    negatives_accepted: tuple[str, ...]  # names of the negative images the gate let through
    cost: GateCost


@dataclass(frozen=True)
class GateSettings:
    """``gate.json``: everything but the arrays."""

    schema_version: int
    descriptor_version: int
    model: str
    feature_layer: str
    feature_dims: int
    pca_dims: int | None
    limits: ImageLimits
    appearance_scale: float
    feature_scale: float
    caution_score: float  # accepted images with an ood_score at or above this get a caution
    fitted_on: FitFacts
    report: GateReport | None = None


@dataclass(frozen=True)
class Verdict:
    """The gate's answer for one image."""

    accepted: bool
    ood_score: float  # 1.0 is the refusal threshold
    reason: str | None  # user-facing, None when accepted
    caution: bool = False  # accepted, but close to the threshold


# --- The gate -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateParams:
    """A fitted gate: the settings and the two sets of Gaussians."""

    settings: GateSettings
    appearance: Gaussians
    features: Gaussians

    def judge(self, grays: Sequence[np.ndarray], features: np.ndarray) -> list[Verdict]:
        """Verdicts for decoded images and their model features (same order)."""
        if len(grays) != len(features):
            raise ValueError(f"{len(grays)} images but {len(features)} feature rows.")
        if not len(grays):
            return []
        appearance = self.appearance.scores(np.stack([appearance_descriptor(gray) for gray in grays]))
        model = self.features.scores(features)
        return [self._verdict(gray, float(a), float(m)) for gray, a, m in zip(grays, appearance, model, strict=True)]

    def _verdict(self, gray: np.ndarray, appearance: float, model: float) -> Verdict:
        score = max(appearance, model)
        problem = self.settings.limits.problem(ImageStats.of(gray))
        if problem is None and score > 1.0:
            problem = _distance_reason(appearance, model)
        if problem is not None:
            return Verdict(accepted=False, ood_score=score, reason=problem)
        return Verdict(accepted=True, ood_score=score, reason=None, caution=score >= self.settings.caution_score)


def _distance_reason(appearance: float, model: float) -> str:
    what = (
        "its overall appearance (brightness layout, histogram, texture) is far from theirs"
        if appearance >= model
        else "the model's internal features for it are far from those of the training X-rays"
    )
    return (
        f"This image does not look like the frontal chest X-rays the model was trained on: {what} "
        f"(out-of-distribution score {max(appearance, model):.2f}; images above 1.00 are refused)."
    )


class Gate:
    """A fitted gate bound to a loaded model: one forward pass gives probabilities and features.

    Read-only after construction; share it across threads like the model.
    """

    def __init__(self, loaded: LoadedModel, params: GateParams) -> None:
        self.loaded = loaded
        self.params = params
        self._network = None
        self._lock = threading.Lock()

    @property
    def settings(self) -> GateSettings:
        """``gate.json``'s content."""
        return self.params.settings

    @property
    def caution_score(self) -> float:
        """Accepted images whose ood_score is at or above this get a caution."""
        return self.params.settings.caution_score

    @property
    def network(self):
        """The model's layers with two outputs (the probability and the gate's features), as a compiled graph."""
        with self._lock:
            if self._network is None:
                self._network = compiled(two_output_model(self.loaded.model, self.params.settings.feature_layer))
            return self._network

    def forward(self, squares: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities ``(n,)`` and gate features ``(n, d)`` of ``(n, size, size)`` uint8 squares."""
        return forward(self.network, self.loaded.spec.model_input, squares, batch_size)

    def judge(self, grays: Sequence[np.ndarray], features: np.ndarray) -> list[Verdict]:
        """Verdicts for decoded images and the features :meth:`forward` gave for them."""
        return self.params.judge(grays, features)

    def assess(self, grays: Sequence[np.ndarray]) -> tuple[np.ndarray, list[Verdict]]:
        """Probabilities and verdicts for decoded images (squashed here to the model's input)."""
        squares = np.stack([self.loaded.square(gray) for gray in grays])
        probabilities, features = self.forward(squares)
        return probabilities, self.judge(grays, features)


def feature_layer_of(model: keras.Model) -> str:
    """The layer whose output the gate models: ``gap`` when present, else the one feeding the output layer."""
    from pneumo_core.models import OUTPUT_LAYER

    names = [layer.name for layer in model.layers]
    if FEATURE_LAYER in names:
        return FEATURE_LAYER
    index = names.index(OUTPUT_LAYER)
    return names[index - 1]


def two_output_model(model: keras.Model, feature_layer: str) -> keras.Model:
    """A Functional model sharing ``model``'s layers that returns ``[probability, pooled features]``."""
    import keras

    try:
        features = model.get_layer(feature_layer).output
    except ValueError as error:
        raise ValueError(f"The gate's feature layer {feature_layer!r} is not in the model {model.name}.") from error
    if len(features.shape) == 4:
        features = keras.layers.GlobalAveragePooling2D(name="gate_pool")(features)
    return keras.Model(model.input, [model.output, features], name=f"{model.name}_with_features")


def compiled(model: keras.Model):
    """``model`` in inference mode as a TensorFlow graph function: several times faster than an eager call
    for one image, and safe to call from several threads. Batch sizes share one trace after the second."""
    import tensorflow as tf

    def infer(batch):
        return model(batch, training=False)

    return tf.function(infer, reduce_retracing=True, autograph=False)


def forward(network, model_input, squares: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Run a two-output network (a function of one batch, see :func:`compiled`) over squares in batches.

    Returns:
        Probabilities ``(n,)`` and features ``(n, d)``.
    """
    import keras

    probabilities, features = [], []
    for start in range(0, len(squares), batch_size):
        probability, feature = network(model_input(squares[start : start + batch_size]))
        probabilities.append(keras.ops.convert_to_numpy(probability)[:, 0])
        features.append(keras.ops.convert_to_numpy(feature))
    if not probabilities:
        return np.zeros(0, dtype=np.float32), np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(probabilities), np.concatenate(features)


# --- Fitting ------------------------------------------------------------------------------------------


@dataclass
class GateInputs:
    """What the gate is fitted on, for one split: per-image statistics, descriptors, features, labels."""

    stats: list[ImageStats] = field(default_factory=list)
    descriptors: list[np.ndarray] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def add(self, grays: Sequence[np.ndarray], features: np.ndarray, labels: Sequence[int]) -> None:
        """Add a batch of decoded images with their model features and 0/1 labels."""
        self.stats += [ImageStats.of(gray) for gray in grays]
        self.descriptors += [appearance_descriptor(gray) for gray in grays]
        self.features += list(np.asarray(features, dtype=np.float64))
        self.labels += [int(label) for label in labels]

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Descriptors, features and labels as arrays."""
        return np.stack(self.descriptors), np.stack(self.features), np.asarray(self.labels)


def fit_limits(train: Sequence[ImageStats], margin: float = LIMIT_MARGIN) -> ImageLimits:
    """Image limits: the training minimum contrast and grey levels divided by ``margin``, and the
    training aspect-ratio range widened by ``sqrt(margin)`` on each side."""
    widen = math.sqrt(margin)
    aspects = [stats.aspect for stats in train]
    return ImageLimits(
        min_contrast=min(stats.contrast for stats in train) / margin,
        min_grey_levels=int(min(stats.grey_levels for stats in train) // margin),
        min_aspect=min(aspects) / widen,
        max_aspect=max(aspects) * widen,
        rule=(
            f"contrast and distinct grey levels at least 1/{margin:g} of the training minimum; "
            f"aspect ratio within the training range widened by a factor {widen:.2f} on each side"
        ),
    )


def fit_gaussians(vectors: np.ndarray, labels: np.ndarray, max_dims: int = MAX_FEATURE_DIMS) -> Gaussians:
    """Class-conditional means and a shared Ledoit-Wolf precision (after PCA to ``max_dims`` if wider).

    The scale is 1.0 until :func:`fit` sets it on the validation split.
    """
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    x = np.asarray(vectors, dtype=np.float64)
    pca_mean = pca_components = None
    if x.shape[1] > max_dims:
        pca = PCA(n_components=max_dims, random_state=0).fit(x)
        pca_mean, pca_components = pca.mean_, pca.components_
        x = (x - pca_mean) @ pca_components.T
    classes = np.unique(labels)
    class_means = np.stack([x[labels == label].mean(axis=0) for label in classes])
    centred = x - class_means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    return Gaussians(
        _as_stored(class_means), _as_stored(precision), 1.0, _as_stored(pca_mean), _as_stored(pca_components)
    )


def _as_stored(array: np.ndarray | None) -> np.ndarray | None:
    """``array`` rounded to float32, as ``gate.npz`` stores it, so the threshold is set on the stored values."""
    return None if array is None else np.asarray(array, dtype=np.float32).astype(np.float64)


def fit(model_name: str, feature_layer: str, train: GateInputs, val: GateInputs, split_hash: str) -> GateParams:
    """Fit the gate on training X-rays and choose its threshold on validation X-rays.

    Each distance is first scaled by its own validation quantile :data:`VAL_ACCEPTANCE`; the threshold
    on the larger of the two is then the smallest value that lets at least :data:`VAL_ACCEPTANCE` of the
    validation X-rays through, image limits included.

    A validation acceptance under 99 % (only possible when the image limits refuse validation X-rays,
    e.g. on a tiny split) is logged as a warning and recorded in ``fitted_on``.

    Raises:
        ValueError: If a split is empty.
    """
    if not train.labels or not val.labels:
        raise ValueError("The gate needs training and validation X-rays to be fitted.")
    train_descriptors, train_features, train_labels = train.arrays()
    val_descriptors, val_features, _ = val.arrays()
    limits = fit_limits(train.stats)
    appearance = fit_gaussians(train_descriptors, train_labels)
    features = fit_gaussians(train_features, train_labels)
    quantile = 100.0 * VAL_ACCEPTANCE
    appearance_distance = appearance.distances(val_descriptors)
    feature_distance = features.distances(val_features)
    appearance_scale = float(np.percentile(appearance_distance, quantile))
    feature_scale = float(np.percentile(feature_distance, quantile))
    combined = np.maximum(appearance_distance / appearance_scale, feature_distance / feature_scale)
    within_limits = np.array([limits.problem(stats) is None for stats in val.stats])
    threshold = _threshold_for(combined, within_limits, VAL_ACCEPTANCE)
    appearance = _rescaled(appearance, appearance_scale * threshold)
    features = _rescaled(features, feature_scale * threshold)
    val_scores = combined / threshold
    accepted = within_limits & (val_scores <= 1.0)
    settings = GateSettings(
        schema_version=GATE_SCHEMA_VERSION,
        descriptor_version=DESCRIPTOR_VERSION,
        model=model_name,
        feature_layer=feature_layer,
        feature_dims=int(train_features.shape[1]),
        pca_dims=None if features.pca_components is None else int(features.pca_components.shape[0]),
        limits=limits,
        appearance_scale=appearance.scale,
        feature_scale=features.scale,
        caution_score=float(np.percentile(val_scores[accepted], 100.0 * CAUTION_QUANTILE)),
        fitted_on=FitFacts(
            split_hash=split_hash,
            train_images=len(train.labels),
            val_images=len(val.labels),
            val_acceptance=float(accepted.mean()),
            rule=(
                f"fitted on the training split's X-rays only; threshold chosen so that at least "
                f"{VAL_ACCEPTANCE:.1%} of the validation X-rays pass"
            ),
        ),
    )
    if settings.fitted_on.val_acceptance < 0.99:
        LOGGER.warning(
            "The gate of %s accepts only %.1f%% of the %d validation X-rays (at least 99%% are wanted): "
            "the image limits refuse some of them.",
            model_name,
            100 * settings.fitted_on.val_acceptance,
            len(val.labels),
        )
    return GateParams(settings=settings, appearance=appearance, features=features)


def _threshold_for(combined: np.ndarray, within_limits: np.ndarray, target: float) -> float:
    """The smallest threshold on ``combined`` that accepts at least ``target`` of all images."""
    needed = math.ceil(target * len(combined))
    candidates = np.sort(combined[within_limits])
    if needed > len(candidates):
        return float(candidates[-1]) if len(candidates) else 1.0
    return float(candidates[needed - 1])


def _rescaled(gaussians: Gaussians, scale: float) -> Gaussians:
    return Gaussians(gaussians.class_means, gaussians.precision, scale, gaussians.pca_mean, gaussians.pca_components)


# --- Files --------------------------------------------------------------------------------------------


def save_gate(directory: Path, params: GateParams) -> None:
    """Write ``gate.npz`` and ``gate.json`` into a model directory and seal it."""
    arrays = {
        "appearance_class_means": params.appearance.class_means,
        "appearance_precision": params.appearance.precision,
        "features_class_means": params.features.class_means,
        "features_precision": params.features.precision,
    }
    if params.features.pca_components is not None:
        arrays["features_pca_mean"] = params.features.pca_mean
        arrays["features_pca_components"] = params.features.pca_components
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{name: value.astype(np.float32) for name, value in arrays.items()})
    (directory / GATE_ARRAYS_FILE).write_bytes(buffer.getvalue())
    artifacts.write_json(directory / GATE_FILE, artifacts.to_json(params.settings))
    artifacts.seal(directory, updated=GATE_FILES)


def read_gate_settings(directory: Path) -> GateSettings | None:
    """``gate.json`` of a model directory (no TensorFlow needed), or None when it has no gate.

    The directory must already have been verified (``read_model_dir`` or ``load_model_dir``).
    """
    path = directory / GATE_FILE
    if not path.is_file():
        return None
    try:
        return artifacts.from_json(GateSettings, artifacts.read_json(path))
    except ValueError as error:
        raise artifacts.ModelRefused(f"The gate of models/{directory.name} cannot be read: {error}.") from None


def load_gate_params(directory: Path, checksums: dict[str, str] | None = None) -> GateParams | None:
    """The fitted gate of a model directory, or None when it has none.

    Args:
        directory: The model directory.
        checksums: The sha256 of each file as verified when the model was loaded (``config.checksums``);
            the gate files must match them.

    Raises:
        ModelRefused: If only one gate file is present, a file does not match its checksum, or its
            content is malformed or was fitted for another model or descriptor version.
    """
    present = [name for name in GATE_FILES if (directory / name).is_file()]
    if not present:
        return None
    where = f"models/{directory.name}"
    if len(present) != len(GATE_FILES):
        raise artifacts.ModelRefused(f"The gate of {where} is incomplete: only {present[0]} is present.")
    if checksums is not None:
        for name in GATE_FILES:
            if checksums.get(name) != artifacts.sha256_of(directory / name):
                raise artifacts.ModelRefused(f"The gate file {where}/{name} does not match its checksum.")
    settings = read_gate_settings(directory)
    if settings.descriptor_version != DESCRIPTOR_VERSION or settings.schema_version != GATE_SCHEMA_VERSION:
        raise artifacts.ModelRefused(f"The gate of {where} was fitted by another version; refit it with fit-gate.")
    with np.load(directory / GATE_ARRAYS_FILE, allow_pickle=False) as arrays:
        loaded = {name: arrays[name].astype(np.float64) for name in arrays.files}
    try:
        return GateParams(
            settings=settings,
            appearance=Gaussians(
                loaded["appearance_class_means"], loaded["appearance_precision"], settings.appearance_scale
            ),
            features=Gaussians(
                loaded["features_class_means"],
                loaded["features_precision"],
                settings.feature_scale,
                loaded.get("features_pca_mean"),
                loaded.get("features_pca_components"),
            ),
        )
    except KeyError as error:
        raise artifacts.ModelRefused(f"The gate of {where} misses the array {error}.") from None


def load_gate(loaded: LoadedModel) -> Gate | None:
    """The gate of a loaded model, bound to it, or None when its directory has no gate files."""
    params = load_gate_params(loaded.directory, loaded.config.checksums)
    if params is None:
        return None
    if params.settings.model != loaded.spec.name:
        raise artifacts.ModelRefused(
            f"The gate in models/{loaded.directory.name} was fitted for {params.settings.model}, "
            f"not {loaded.spec.name}."
        )
    return Gate(loaded, params)
