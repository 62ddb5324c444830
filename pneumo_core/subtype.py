"""Bacterial or viral: a second head on a trained model's frozen features.

The binary model and its operating threshold stay exactly as they are, so telling NORMAL from
PNEUMONIA is unchanged by construction. After training, a logistic regression (scikit-learn) learns
``q = P(bacterial | pneumonia)`` from the model's own features of the training split's pneumonia
images:

- **Features**: the input of the binary output layer (``head``), the Grad-CAM layer's activations
  averaged over the image (``pooled``), or both. Which one, and the L2 strength, are chosen on the
  validation split's pneumonia images (highest bacterial-vs-viral ROC AUC), never on the test split.
- **Calibration**: Platt scaling on the validation split, kept only when it lowers the expected
  calibration error in a cross-validation on that split.
- **Uncertain band**: when neither subtype reaches :data:`CONFIDENT` calibrated probability, the
  reading says "uncertain" instead of naming a subtype.
- **Three classes** for the figures: ``P(normal) = 1 - p``, ``P(bacteria) = p q``, ``P(virus) = p (1 - q)``
  with ``p`` the model's calibrated pneumonia probability; the predicted class is NORMAL when
  ``p`` is below the operating threshold, else the more likely subtype.

The head lives in the model directory (``subtype.npz``: the weights, with the standardisation and the
calibration folded in; ``subtype.json``: settings, the candidates tried and the measured figures),
sealed with the rest of its files (:func:`pneumo_core.artifacts.seal`). A directory without these files
has no subtype head, and the app then says nothing about subtypes. At inference the head is one
``Dense`` layer on the model's own graph, so the probability, the gate's features and ``q`` come from
one forward pass, and Grad-CAM can explain the subtype logit.

Usage:
    python -m pneumo_core fit-subtype --model cnn --data DIR
    head = load_subtype(loaded)                       # None for a model directory without a head
    probabilities, bacteria, gate_features = head.forward(squares)
    head.reading(float(bacteria[0])).call             # "bacteria", "virus" or "uncertain"
"""

from __future__ import annotations

import dataclasses
import io
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pneumo_core import artifacts, data
from pneumo_core.artifacts import RocCurve
from pneumo_core.metrics import compute_metrics, expected_calibration_error

if TYPE_CHECKING:  # Keras is imported only to build the head's graph.
    import keras

    from pneumo_core.artifacts import LoadedModel

LOGGER = logging.getLogger(__name__)
SUBTYPE_FILE = "subtype.json"
SUBTYPE_ARRAYS_FILE = "subtype.npz"
SUBTYPE_FILES = (SUBTYPE_ARRAYS_FILE, SUBTYPE_FILE)
SUBTYPE_SCHEMA_VERSION = 1
SUBTYPES = ("bacteria", "virus")  # q is the probability of the first, given pneumonia
THREE_CLASSES = ("normal", "bacteria", "virus")
EXPLAIN_TARGETS = {"virus": 0, "bacteria": 1}  # index in the two logits of :meth:`SubtypeHead.explain_model`
EXPLAIN_TITLES = {"bacteria": "BACTERIAL (vs viral)", "virus": "VIRAL (vs bacterial)"}  # heatmap targets, as shown
UNCERTAIN = "uncertain"
FEATURE_SOURCES = ("pooled", "head")  # the Grad-CAM layer, averaged over the image; the output layer's input
FEATURE_SETS = ("head", "pooled", "pooled+head")
L2_GRID = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # C of scikit-learn: inverse L2 strength
CONFIDENT = 0.65  # the more likely subtype needs at least this calibrated probability to be named
PLATT_FOLDS = 5
MIN_TRAIN_PER_SUBTYPE = 2
MIN_VAL_PER_SUBTYPE = 1
MIN_VAL_FOR_PLATT = 10  # per subtype; fewer validation images leave the head uncalibrated
BATCH_SIZE = 32
DECODE_CHUNK = 256  # images decoded at once while extracting features
SEED = 0


class NotEnoughSubtypes(ValueError):
    """The split has too few bacterial or viral images to fit or choose a subtype head."""


# --- Settings and figures (subtype.json) ----------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One (feature set, L2 strength) tried, with its figures on the validation split's pneumonia images."""

    features: str
    l2_c: float
    val_roc_auc: float | None
    val_log_loss: float


@dataclass(frozen=True)
class SubtypeCalibration:
    """How ``q`` was calibrated: ``q = sigmoid(scale * z + shift)`` on the regression's logit ``z``."""

    method: str  # "platt (validation split)" or "none"
    scale: float
    shift: float
    val_ece_uncalibrated: float | None  # ECE of the raw regression on the validation pneumonia images
    val_ece_platt_cv: float | None  # ECE of Platt scaling, each fold calibrated on the others
    rule: str


@dataclass(frozen=True)
class UncertainBand:
    """Values of ``q`` for which the reading says "uncertain" (``low < q < high``)."""

    low: float
    high: float
    rule: str

    def contains(self, bacteria: float) -> bool:
        """Whether ``q = P(bacterial | pneumonia)`` lies inside the band."""
        return self.low < bacteria < self.high


@dataclass(frozen=True)
class ClassFigures:
    """Sensitivity and precision of one class of the three-class view (None when undefined)."""

    n: int
    sensitivity: float | None
    precision: float | None


@dataclass(frozen=True)
class ThreeClassFigures:
    """Normal / bacterial / viral at the binary model's operating threshold."""

    n: int
    classes: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]  # rows: true class, columns: predicted class, in ``classes`` order
    accuracy: float | None
    by_class: dict[str, ClassFigures]
    macro_roc_auc: float | None  # one-vs-rest, unweighted mean over the classes


@dataclass(frozen=True)
class PneumoniaFigures:
    """Bacterial vs viral on the pneumonia images alone (whatever the binary model said)."""

    n: int
    n_bacteria: int
    n_virus: int
    accuracy: float | None  # the more likely subtype (q >= 0.5)
    roc_auc: float | None  # of q for bacterial
    ece: float | None  # of q
    roc_curve: RocCurve | None
    confident_share: float | None  # share outside the uncertain band
    confident_accuracy: float | None  # accuracy on those


@dataclass(frozen=True)
class SubtypeSplitFigures:
    """The figures of the head on one split."""

    three_class: ThreeClassFigures
    pneumonia: PneumoniaFigures


@dataclass(frozen=True)
class SubtypeFitFacts:
    """What the head was fitted and chosen on."""

    split_hash: str
    train_by_subtype: dict[str, int]
    val_by_subtype: dict[str, int]
    rule: str


@dataclass(frozen=True)
class SubtypeSettings:
    """``subtype.json``: everything but the weights."""

    schema_version: int
    model: str
    features: str  # one of FEATURE_SETS
    pooled_layer: str | None  # the layer averaged for "pooled" (the model's Grad-CAM layer)
    feature_dims: int
    l2_c: float
    candidates: tuple[Candidate, ...]
    calibration: SubtypeCalibration
    band: UncertainBand
    threshold: float  # the binary model's operating threshold the three-class figures use
    fitted_on: SubtypeFitFacts
    validation: SubtypeSplitFigures
    test: SubtypeSplitFigures | None


@dataclass(frozen=True)
class SubtypeParams:
    """A fitted head: its settings and the logit's weights over the chosen features."""

    settings: SubtypeSettings
    weights: np.ndarray  # (feature_dims,)
    bias: float

    def logits(self, features: np.ndarray) -> np.ndarray:
        """The calibrated logit of ``q`` for rows of the chosen features."""
        return np.asarray(features, dtype=np.float64) @ self.weights + self.bias

    def bacteria(self, features: np.ndarray) -> np.ndarray:
        """``q = P(bacterial | pneumonia)`` for rows of the chosen features."""
        return _sigmoid(self.logits(features))


# --- What a reading shows ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubtypeReading:
    """The subtype of one image read as pneumonia: calibrated probabilities, and the call."""

    bacteria: float  # P(bacterial | pneumonia), calibrated
    band: UncertainBand

    @property
    def virus(self) -> float:
        """P(viral | pneumonia)."""
        return 1.0 - self.bacteria

    @property
    def uncertain(self) -> bool:
        """Whether neither subtype is clearly ahead (``q`` inside the uncertain band)."""
        return self.band.contains(self.bacteria)

    @property
    def call(self) -> str:
        """``"bacteria"``, ``"virus"`` or ``"uncertain"``."""
        if self.uncertain:
            return UNCERTAIN
        return SUBTYPES[0] if self.bacteria >= 0.5 else SUBTYPES[1]

    def probabilities(self) -> dict[str, float]:
        """``{"bacteria": q, "virus": 1 - q}``, rounded for output."""
        return {"bacteria": round(self.bacteria, 6), "virus": round(self.virus, 6)}


def _percent(value: float) -> str:
    return f"{value:.0%}" if 0.005 <= value <= 0.995 else ("<1%" if value < 0.5 else ">99%")


def subtype_summary(subtype: SubtypeReading) -> str:
    """One line for the clinician: both calibrated probabilities and the call (Markdown)."""
    shares = f"Bacterial {_percent(subtype.bacteria)} · Viral {_percent(subtype.virus)}"
    if subtype.uncertain:
        low, high = subtype.band.low, subtype.band.high
        return (
            f"**Subtype: uncertain.** {shares} (given pneumonia): neither subtype is clearly ahead "
            f"(both between {low:.0%} and {high:.0%})."
        )
    name = "bacterial" if subtype.call == SUBTYPES[0] else "viral"
    return f"**Subtype: more likely {name}.** {shares} (given pneumonia)."


def subtype_caveat(settings: SubtypeSettings) -> str:
    """Why the subtype is a hint, with the head's measured figures (read from ``subtype.json``)."""
    figures = settings.test.pneumonia if settings.test is not None else settings.validation.pneumonia
    where = "internal test split" if settings.test is not None else "validation split"
    measured = (
        f"on the {where}'s {figures.n} pneumonia images this head separated bacterial from viral with ROC AUC "
        f"{_fmt(figures.roc_auc)} and accuracy {_fmt(figures.accuracy, percent=True)}"
    )
    counts = settings.fitted_on.val_by_subtype
    bacterial_share = counts.get(SUBTYPES[0], 0) / max(sum(counts.values()), 1)
    return (
        "Radiographs alone separate bacterial from viral pneumonia poorly: "
        f"{measured}. The probabilities are given pneumonia, checked for calibration on validation images "
        f"(expected calibration error {_fmt(figures.ece)} on the {where}) where {bacterial_share:.0%} of pneumonia "
        "cases were bacterial; where viral pneumonia is more common, the same image is more likely viral. "
        "Treat the subtype as a hint, to be weighed with the clinical picture and laboratory findings."
    )


def subtype_line(subtype: SubtypeReading, settings: SubtypeSettings) -> str:
    """The subtype in one plain sentence (the PDF case report)."""
    figures = settings.test.pneumonia if settings.test is not None else settings.validation.pneumonia
    call = {"bacteria": "more likely bacterial", "virus": "more likely viral"}.get(subtype.call, "uncertain")
    return (
        f"{call}: bacterial {_percent(subtype.bacteria)}, viral {_percent(subtype.virus)} given pneumonia. "
        f"Radiographs alone separate the two poorly (ROC AUC {_fmt(figures.roc_auc)} on "
        f"{figures.n} pneumonia images)."
    )


def _fmt(value: float | None, percent: bool = False, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{max(digits - 2, 0)}%}" if percent else f"{value:.{digits}f}"


# --- Features -------------------------------------------------------------------------------------------


def available_sources(pooled_layer: str | None) -> tuple[str, ...]:
    """The feature sources a model offers: ``pooled`` needs a Grad-CAM layer (the MLP has none)."""
    return FEATURE_SOURCES if pooled_layer else ("head",)


def feature_sets_for(sources: Sequence[str]) -> tuple[str, ...]:
    """The candidate feature sets made of the given sources."""
    return tuple(name for name in FEATURE_SETS if set(name.split("+")) <= set(sources))


def combine(features: Mapping[str, np.ndarray], feature_set: str) -> np.ndarray:
    """The rows of one feature set: its sources side by side, in the order of its name."""
    return np.concatenate([np.asarray(features[source], dtype=np.float64) for source in feature_set.split("+")], axis=1)


def feature_tensors(model: keras.Model, sources: Sequence[str], pooled_layer: str | None) -> list:
    """The symbolic feature tensors of ``model`` for the given sources (same order)."""
    import keras

    from pneumo_core.models import OUTPUT_LAYER

    tensors = []
    for source in sources:
        if source == "pooled":
            activations = model.get_layer(pooled_layer).output
            tensors.append(keras.layers.GlobalAveragePooling2D(name="subtype_pool")(activations))
        elif source == "head":
            tensors.append(model.get_layer(OUTPUT_LAYER).input)
        else:
            raise ValueError(f"Unknown subtype feature source {source!r}; known: {', '.join(FEATURE_SOURCES)}.")
    return tensors


def feature_network(loaded: LoadedModel, sources: Sequence[str]):
    """``squares -> [p, *features]`` for uint8 squares, compiled with the model's preprocessing."""
    import keras

    from pneumo_core.forward import compiled_forward

    tensors = feature_tensors(loaded.model, sources, loaded.spec.gradcam_layer)
    network = keras.Model(loaded.model.input, [loaded.model.output, *tensors], name=f"{loaded.spec.name}_features")
    return compiled_forward(network, loaded.spec)


@dataclass
class SplitFeatures:
    """What the head is fitted or measured on, for one split: p, features per source, true subtype."""

    probability: np.ndarray  # (n,) the binary model's calibrated pneumonia probability
    features: dict[str, np.ndarray]  # source -> (n, d)
    subtype: np.ndarray  # (n,) "normal", "bacteria" or "virus"

    def pneumonia(self) -> SplitFeatures:
        """The rows of the bacterial and viral images only."""
        keep = np.isin(self.subtype, SUBTYPES)
        return SplitFeatures(
            self.probability[keep], {name: values[keep] for name, values in self.features.items()}, self.subtype[keep]
        )

    def counts(self) -> dict[str, int]:
        """Images per subtype (bacteria, virus)."""
        return {name: int(np.count_nonzero(self.subtype == name)) for name in SUBTYPES}


def extract(
    loaded: LoadedModel, paths: Sequence[str], subtypes: Sequence[str], sources: Sequence[str]
) -> SplitFeatures:
    """Decode images and run the model once over them, keeping its probability and the feature sources."""
    network = feature_network(loaded, sources)
    probabilities, features = [], {source: [] for source in sources}
    for start in range(0, len(paths), DECODE_CHUNK):
        squares = data.load_arrays(
            list(paths[start : start + DECODE_CHUNK]), loaded.spec.input_size, framing=loaded.framing
        )
        for batch_start in range(0, len(squares), BATCH_SIZE):
            outputs = network(squares[batch_start : batch_start + BATCH_SIZE])
            probabilities.append(np.asarray(outputs[0])[:, 0])
            for source, values in zip(sources, outputs[1:], strict=True):
                features[source].append(np.asarray(values, dtype=np.float32))
    return SplitFeatures(
        probability=np.concatenate(probabilities) if probabilities else np.zeros(0),
        features={source: np.concatenate(v) if v else np.zeros((0, 0)) for source, v in features.items()},
        subtype=np.asarray(subtypes, dtype=object),
    )


# --- Fitting ----------------------------------------------------------------------------------------


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


def _is_bacteria(subtype: np.ndarray) -> np.ndarray:
    return (np.asarray(subtype) == SUBTYPES[0]).astype(int)


def _check_counts(train: SplitFeatures, val: SplitFeatures) -> None:
    for split, counts, needed in (
        ("training", train.counts(), MIN_TRAIN_PER_SUBTYPE),
        ("validation", val.counts(), MIN_VAL_PER_SUBTYPE),
    ):
        short = [f"{count} {name}" for name, count in counts.items() if count < needed]
        if short:
            raise NotEnoughSubtypes(
                f"The {split} split has too few pneumonia images of a subtype to fit a subtype head "
                f"({', '.join(short)}; at least {needed} of each are needed)."
            )


def fit_logistic(x: np.ndarray, y: np.ndarray, l2_c: float) -> tuple[np.ndarray, float]:
    """An L2 logistic regression on standardised features, folded back to the raw features.

    Returns:
        ``(weights, bias)`` such that the logit is ``x @ weights + bias``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    regression = LogisticRegression(C=l2_c, max_iter=5000).fit(scaler.transform(x), y)
    coef = regression.coef_[0] / scaler.scale_
    return coef, float(regression.intercept_[0] - coef @ scaler.mean_)


def _log_loss(y: np.ndarray, q: np.ndarray) -> float:
    from sklearn import metrics as skm

    return float(skm.log_loss(y, np.clip(q, 1e-7, 1 - 1e-7), labels=[0, 1]))


def _roc_auc(y: np.ndarray, score: np.ndarray) -> float | None:
    from sklearn import metrics as skm

    return float(skm.roc_auc_score(y, score)) if len(np.unique(y)) == 2 else None


def choose_candidate(
    train: SplitFeatures, val: SplitFeatures, feature_sets: Sequence[str], grid: Sequence[float] = L2_GRID
) -> tuple[Candidate, tuple[Candidate, ...], tuple[np.ndarray, float]]:
    """Fit every (feature set, L2 strength) on the training pneumonia images; keep the best on validation.

    The best has the highest validation ROC AUC of bacterial vs viral, then the lowest log loss.

    Returns:
        The chosen candidate, every candidate tried, and the chosen ``(weights, bias)``.
    """
    y_train, y_val = _is_bacteria(train.subtype), _is_bacteria(val.subtype)
    tried, fitted = [], {}
    for feature_set in feature_sets:
        x_train, x_val = combine(train.features, feature_set), combine(val.features, feature_set)
        for l2_c in grid:
            weights, bias = fit_logistic(x_train, y_train, l2_c)
            q = _sigmoid(x_val @ weights + bias)
            candidate = Candidate(feature_set, float(l2_c), _roc_auc(y_val, q), _log_loss(y_val, q))
            tried.append(candidate)
            fitted[(feature_set, l2_c)] = (weights, bias)
    best = min(tried, key=lambda c: (-(c.val_roc_auc or 0.0), c.val_log_loss))
    return best, tuple(tried), fitted[(best.features, best.l2_c)]


def calibrate(logits: np.ndarray, y: np.ndarray) -> SubtypeCalibration:
    """Platt scaling of the validation logits, kept only if it lowers the ECE in a cross-validation.

    Each of :data:`PLATT_FOLDS` folds of the validation pneumonia images is calibrated on the others; the
    ECE of those held-out probabilities is compared with the ECE of the uncalibrated regression.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    rule = (
        f"Platt scaling fitted on the validation split's pneumonia images, kept only if its {PLATT_FOLDS}-fold "
        "cross-validated ECE there is lower than the uncalibrated ECE"
    )
    raw = expected_calibration_error(y, _sigmoid(logits)) if len(y) else None
    if min(np.count_nonzero(y == 1), np.count_nonzero(y == 0)) < MIN_VAL_FOR_PLATT:
        return SubtypeCalibration("none", 1.0, 0.0, raw, None, rule + "; too few validation images to calibrate")
    held_out = np.zeros(len(y))
    folds = StratifiedKFold(n_splits=PLATT_FOLDS, shuffle=True, random_state=SEED)
    for fit_rows, held_rows in folds.split(logits, y):
        platt = LogisticRegression(C=1e4).fit(logits[fit_rows, None], y[fit_rows])
        held_out[held_rows] = platt.predict_proba(logits[held_rows, None])[:, 1]
    cross_validated = expected_calibration_error(y, held_out)
    platt = LogisticRegression(C=1e4).fit(logits[:, None], y)
    scale, shift = float(platt.coef_[0, 0]), float(platt.intercept_[0])
    if cross_validated >= raw or scale <= 0:
        return SubtypeCalibration("none", 1.0, 0.0, raw, cross_validated, rule)
    return SubtypeCalibration("platt (validation split)", scale, shift, raw, cross_validated, rule)


def default_band() -> UncertainBand:
    """The uncertain band: neither subtype reaches :data:`CONFIDENT` calibrated probability."""
    return UncertainBand(
        low=round(1.0 - CONFIDENT, 6),
        high=CONFIDENT,
        rule=(
            f"uncertain when neither subtype reaches {CONFIDENT:.0%} calibrated probability given pneumonia "
            f"({1 - CONFIDENT:.0%} < P(bacterial) < {CONFIDENT:.0%})"
        ),
    )


def three_class_probabilities(probability: np.ndarray, bacteria: np.ndarray) -> np.ndarray:
    """``(n, 3)`` probabilities of normal, bacterial and viral from ``p`` and ``q``."""
    p, q = np.asarray(probability, dtype=np.float64), np.asarray(bacteria, dtype=np.float64)
    return np.stack([1.0 - p, p * q, p * (1.0 - q)], axis=1)


def three_class_predictions(probability: np.ndarray, bacteria: np.ndarray, threshold: float) -> np.ndarray:
    """NORMAL below the operating threshold, else the more likely subtype (class names of :data:`THREE_CLASSES`)."""
    subtype = np.where(np.asarray(bacteria) >= 0.5, SUBTYPES[0], SUBTYPES[1])
    return np.where(np.asarray(probability) >= threshold, subtype, THREE_CLASSES[0]).astype(object)


def three_class_figures(
    probability: np.ndarray, bacteria: np.ndarray, truth: np.ndarray, threshold: float
) -> ThreeClassFigures:
    """Confusion matrix, per-class sensitivity and precision, accuracy and macro one-vs-rest ROC AUC."""
    from sklearn import metrics as skm

    truth = np.asarray(truth, dtype=object)
    predicted = three_class_predictions(probability, bacteria, threshold)
    matrix = skm.confusion_matrix(truth, predicted, labels=list(THREE_CLASSES))
    by_class = {
        name: ClassFigures(
            n=int(matrix[i].sum()),
            sensitivity=float(matrix[i, i] / matrix[i].sum()) if matrix[i].sum() else None,
            precision=float(matrix[i, i] / matrix[:, i].sum()) if matrix[:, i].sum() else None,
        )
        for i, name in enumerate(THREE_CLASSES)
    }
    present = set(truth)
    macro = None
    if present == set(THREE_CLASSES):
        scores = three_class_probabilities(probability, bacteria)
        index = np.array([THREE_CLASSES.index(name) for name in truth])
        macro = float(skm.roc_auc_score(index, scores, labels=[0, 1, 2], multi_class="ovr", average="macro"))
    return ThreeClassFigures(
        n=len(truth),
        classes=THREE_CLASSES,
        confusion=tuple(tuple(int(value) for value in row) for row in matrix),
        accuracy=float(np.trace(matrix) / matrix.sum()) if matrix.sum() else None,
        by_class=by_class,
        macro_roc_auc=macro,
    )


def pneumonia_figures(bacteria: np.ndarray, truth: np.ndarray, band: UncertainBand) -> PneumoniaFigures:
    """Bacterial vs viral on the pneumonia images of ``truth`` (other rows are ignored)."""
    keep = np.isin(np.asarray(truth, dtype=object), SUBTYPES)
    q, y = np.asarray(bacteria, dtype=np.float64)[keep], _is_bacteria(np.asarray(truth, dtype=object)[keep])
    n = len(y)
    if not n:
        return PneumoniaFigures(0, 0, 0, None, None, None, None, None, None)
    figures = compute_metrics(y, q, 0.5)
    confident = np.array([not band.contains(value) for value in q])
    correct = (q >= 0.5).astype(int) == y
    curve = figures["roc_curve"]
    return PneumoniaFigures(
        n=n,
        n_bacteria=int(y.sum()),
        n_virus=int(n - y.sum()),
        accuracy=figures["accuracy"],
        roc_auc=figures["roc_auc"],
        ece=figures["ece"],
        roc_curve=None if curve is None else artifacts.from_json(RocCurve, curve),
        confident_share=float(confident.mean()),
        confident_accuracy=float(correct[confident].mean()) if confident.any() else None,
    )


def split_figures(
    params: SubtypeParams, split: SplitFeatures, threshold: float, band: UncertainBand
) -> SubtypeSplitFigures:
    """The head's figures on one split (every image for the three classes, pneumonia images for the subtype)."""
    q = params.bacteria(combine(split.features, params.settings.features))
    return SubtypeSplitFigures(
        three_class=three_class_figures(split.probability, q, split.subtype, threshold),
        pneumonia=pneumonia_figures(q, split.subtype, band),
    )


def fit(
    model_name: str,
    pooled_layer: str | None,
    train: SplitFeatures,
    val: SplitFeatures,
    test: SplitFeatures | None,
    threshold: float,
    split_hash: str,
) -> SubtypeParams:
    """Fit, choose and calibrate a subtype head, then measure it on validation and test.

    Args:
        model_name: The model's registry name.
        pooled_layer: The layer the ``pooled`` source averages (None when the model has no Grad-CAM layer).
        train: Features of the training split (only its pneumonia images are used).
        val: Features of every validation image (the pneumonia ones choose and calibrate the head).
        test: Features of every internal test image, or None (measured once, never used to choose).
        threshold: The binary model's operating threshold.
        split_hash: The sha256 of the split file.

    Raises:
        NotEnoughSubtypes: If a split has too few bacterial or viral images.
    """
    train_pneumonia, val_pneumonia = train.pneumonia(), val.pneumonia()
    _check_counts(train_pneumonia, val_pneumonia)
    sources = [source for source in available_sources(pooled_layer) if source in train.features]
    best, tried, (weights, bias) = choose_candidate(train_pneumonia, val_pneumonia, feature_sets_for(sources))
    y_val = _is_bacteria(val_pneumonia.subtype)
    calibration = calibrate(combine(val_pneumonia.features, best.features) @ weights + bias, y_val)
    band = default_band()
    settings = SubtypeSettings(
        schema_version=SUBTYPE_SCHEMA_VERSION,
        model=model_name,
        features=best.features,
        pooled_layer=pooled_layer if "pooled" in best.features else None,
        feature_dims=len(weights),
        l2_c=best.l2_c,
        candidates=tried,
        calibration=calibration,
        band=band,
        threshold=float(threshold),
        fitted_on=SubtypeFitFacts(
            split_hash=split_hash,
            train_by_subtype=train_pneumonia.counts(),
            val_by_subtype=val_pneumonia.counts(),
            rule=(
                "logistic regression on the binary model's frozen features of the training split's pneumonia "
                "images; feature set and L2 strength chosen on the validation split's pneumonia images "
                "(highest bacterial-vs-viral ROC AUC, then lowest log loss)"
            ),
        ),
        validation=_placeholder_figures(),
        test=None,
    )
    params = SubtypeParams(
        settings=settings,
        weights=_as_stored(weights * calibration.scale),
        bias=float(bias * calibration.scale + calibration.shift),
    )
    measured = dataclasses.replace(
        settings,
        validation=split_figures(params, val, threshold, band),
        test=None if test is None else split_figures(params, test, threshold, band),
    )
    return dataclasses.replace(params, settings=measured)


def _placeholder_figures() -> SubtypeSplitFigures:
    empty = ThreeClassFigures(0, THREE_CLASSES, (), None, {}, None)
    return SubtypeSplitFigures(empty, PneumoniaFigures(0, 0, 0, None, None, None, None, None, None))


def _as_stored(array: np.ndarray) -> np.ndarray:
    """Weights as ``subtype.npz`` stores them (float32), so the figures are measured on the stored values."""
    return np.asarray(array, dtype=np.float32).astype(np.float64)


# --- Files --------------------------------------------------------------------------------------------


def save_subtype(directory: Path, params: SubtypeParams) -> None:
    """Write ``subtype.npz`` and ``subtype.json`` into a model directory and seal it."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, weights=params.weights.astype(np.float32), bias=np.array([params.bias], dtype=np.float64)
    )
    (directory / SUBTYPE_ARRAYS_FILE).write_bytes(buffer.getvalue())
    artifacts.write_json(directory / SUBTYPE_FILE, params.settings)
    artifacts.seal(directory, updated=SUBTYPE_FILES)


def read_subtype_settings(directory: Path) -> SubtypeSettings | None:
    """``subtype.json`` of a verified model directory (no TensorFlow needed), or None when it has no head.

    The directory must already have been verified (``read_model_dir`` or ``load_model_dir``).

    Raises:
        ModelRefused: If the file does not have the shape of :class:`SubtypeSettings`.
    """
    path = directory / SUBTYPE_FILE
    if not path.is_file():
        return None
    try:
        return artifacts.from_json(SubtypeSettings, artifacts.read_json(path))
    except ValueError as error:
        raise artifacts.ModelRefused(f"The subtype head of models/{directory.name} cannot be read: {error}.") from None


def load_subtype_params(
    directory: Path, checksums: Mapping[str, str] | None = None, threshold: float | None = None
) -> SubtypeParams | None:
    """The fitted head of a model directory, or None when it has none.

    Args:
        directory: The model directory.
        checksums: The sha256 of each file as verified when the model was loaded (``config.checksums``).
        threshold: The model's operating threshold; the head's figures must have been measured at it.

    Raises:
        ModelRefused: If only one file is present, a file does not match its checksum, or its content is
            malformed, of another schema version, or fitted for another threshold.
    """
    present = [name for name in SUBTYPE_FILES if (directory / name).is_file()]
    if not present:
        return None
    where = f"models/{directory.name}"
    if len(present) != len(SUBTYPE_FILES):
        raise artifacts.ModelRefused(f"The subtype head of {where} is incomplete: only {present[0]} is present.")
    if checksums is not None:
        for name in SUBTYPE_FILES:
            if checksums.get(name) != artifacts.sha256_of(directory / name):
                raise artifacts.ModelRefused(f"The subtype file {where}/{name} does not match its checksum.")
    settings = read_subtype_settings(directory)
    refit = "refit it with `python -m pneumo_core fit-subtype`"
    if settings.schema_version != SUBTYPE_SCHEMA_VERSION:
        raise artifacts.ModelRefused(f"The subtype head of {where} was fitted by another version; {refit}.")
    if threshold is not None and abs(settings.threshold - threshold) > 1e-9:
        raise artifacts.ModelRefused(f"The subtype head of {where} was fitted for another threshold; {refit}.")
    try:
        with np.load(directory / SUBTYPE_ARRAYS_FILE, allow_pickle=False) as arrays:
            weights = arrays["weights"].astype(np.float64)
            bias = float(arrays["bias"][0])
    except (KeyError, IndexError, ValueError, OSError) as error:
        raise artifacts.ModelRefused(f"The subtype weights of {where} cannot be read ({error}).") from None
    if weights.shape != (settings.feature_dims,) or not np.isfinite(weights).all() or not np.isfinite(bias):
        raise artifacts.ModelRefused(f"The subtype weights of {where} do not fit its settings; {refit}.")
    return SubtypeParams(settings=settings, weights=weights, bias=bias)


def load_subtype(loaded: LoadedModel, gate_layer: str | None = None) -> SubtypeHead | None:
    """The subtype head of a loaded model, bound to it, or None when its directory has none.

    Args:
        loaded: The verified, loaded model.
        gate_layer: The gate's feature layer, when the model has a gate: :meth:`SubtypeHead.forward`
            then returns the gate's features from the same forward pass.
    """
    params = load_subtype_params(loaded.directory, loaded.config.checksums, loaded.threshold)
    if params is None:
        return None
    if params.settings.model != loaded.spec.name:
        raise artifacts.ModelRefused(
            f"The subtype head in models/{loaded.directory.name} was fitted for {params.settings.model}, "
            f"not {loaded.spec.name}."
        )
    return SubtypeHead(loaded, params, gate_layer)


# --- The head bound to a model ----------------------------------------------------------------------


class SubtypeHead:
    """A fitted subtype head bound to a loaded model: one forward pass gives p, q and the gate's features.

    Read-only after construction; share it across threads like the model.
    """

    def __init__(self, loaded: LoadedModel, params: SubtypeParams, gate_layer: str | None = None) -> None:
        self.loaded = loaded
        self.params = params
        self.gate_layer = gate_layer
        self._network = None
        self._lock = threading.Lock()

    @property
    def settings(self) -> SubtypeSettings:
        """``subtype.json``'s content."""
        return self.params.settings

    def reading(self, bacteria: float) -> SubtypeReading:
        """The subtype reading of one image read as pneumonia, from its ``q``."""
        return SubtypeReading(bacteria=float(bacteria), band=self.settings.band)

    def logit_tensor(self, model: keras.Model):
        """The symbolic calibrated logit of ``q`` on ``model``'s graph (a ``Dense`` with the fitted weights)."""
        import keras

        sources = self.settings.features.split("+")
        tensors = feature_tensors(model, sources, self.settings.pooled_layer)
        joined = tensors[0] if len(tensors) == 1 else keras.layers.Concatenate(name="subtype_features")(tensors)
        dense = keras.layers.Dense(1, name="subtype_logit")
        logit = dense(joined)
        dense.set_weights([self.params.weights[:, None].astype(np.float32), np.array([self.params.bias], np.float32)])
        return logit

    def inference_model(self) -> keras.Model:
        """``[p, q]`` (plus the gate's features when bound to a gate layer), sharing the model's layers."""
        import keras

        model = self.loaded.model
        outputs = [model.output]
        if self.gate_layer is not None:
            from pneumo_core.gate import two_output_model

            outputs = list(two_output_model(model, self.gate_layer).outputs)
        bacteria = keras.layers.Activation("sigmoid", name="subtype")(self.logit_tensor(model))
        return keras.Model(model.input, [*outputs, bacteria], name=f"{model.name}_with_subtype")

    def explain_model(self) -> keras.Model:
        """The subtype logit ``z`` as two logits ``[-z/2, z/2]`` (viral, bacterial) for tf-keras-vis.

        Their softmax is ``[1 - q, q]``; see :data:`EXPLAIN_TARGETS` for the index of each subtype.
        """
        import keras
        from keras import layers

        logit = self.logit_tensor(self.loaded.model)
        pair = layers.Concatenate(name="subtype_two_logits")(
            [layers.Rescaling(-0.5, name="virus_logit")(logit), layers.Rescaling(0.5, name="bacteria_logit")(logit)]
        )
        return keras.Model(self.loaded.model.input, pair, name=f"{self.loaded.model.name}_explain_subtype")

    @property
    def network(self):
        """:meth:`inference_model` with the model's preprocessing, compiled once."""
        with self._lock:
            if self._network is None:
                from pneumo_core.forward import compiled_forward

                self._network = compiled_forward(self.inference_model(), self.loaded.spec)
            return self._network

    def forward(self, squares: np.ndarray, batch_size: int = BATCH_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Probabilities ``(n,)``, ``q`` ``(n,)`` and the gate's features ``(n, d)`` (``(n, 0)`` without a gate)."""
        probabilities, bacteria, features = [], [], []
        for start in range(0, len(squares), batch_size):
            outputs = self.network(squares[start : start + batch_size])
            probabilities.append(outputs[0][:, 0])
            bacteria.append(outputs[-1][:, 0])
            features.append(outputs[1] if self.gate_layer is not None else np.zeros((len(outputs[0]), 0)))
        if not probabilities:
            return np.zeros(0), np.zeros(0), np.zeros((0, 0))
        return np.concatenate(probabilities), np.concatenate(bacteria), np.concatenate(features)


# --- Fitting a model directory ---------------------------------------------------------------------


def fit_subtype_dir(
    directory: Path, data_dir: Path, split_file: Path = data.DEFAULT_SPLIT_FILE, refresh_card: bool = True
) -> SubtypeParams:
    """Fit the subtype head of a model directory on its split, measure it, write and seal its files.

    Re-running it on a retrained model directory replaces the head (the features are the new model's).

    Args:
        directory: A sealed model directory (``models/<name>``).
        data_dir: The dataset folder holding the split's images.
        split_file: The split the model was trained with (its hash must match the model's config).
        refresh_card: Re-render ``card.md`` with the head's section afterwards.

    Returns:
        The fitted head, as saved.

    Raises:
        ValueError: If the split is not the model's, or an image of the split cannot be read.
        NotEnoughSubtypes: If a split has too few bacterial or viral images.
    """
    loaded = artifacts.load_model_dir(directory)
    frame = data.model_split_frame(
        split_file, data_dir, loaded.config.data.split_hash, loaded.spec.name, purpose="its subtype head"
    )
    sources = available_sources(loaded.spec.gradcam_layer)
    features = {}
    for split in ("train", "val", "test"):
        rows = frame[frame["split"] == split]
        if split == "train":
            rows = rows[rows["subtype"].isin(SUBTYPES)]
        features[split] = extract(loaded, rows["path"].tolist(), rows["subtype"].tolist(), sources)
        LOGGER.info("Subtype head of %s: features of %d %s images", loaded.spec.name, len(rows), split)
    params = fit(
        loaded.spec.name,
        loaded.spec.gradcam_layer,
        features["train"],
        features["val"],
        features["test"] if len(features["test"].subtype) else None,
        loaded.threshold,
        loaded.config.data.split_hash,
    )
    save_subtype(directory, params)
    if refresh_card:
        from pneumo_core.report import refresh_card as rerender

        rerender(directory)
    LOGGER.info("Wrote the subtype head of %s (%s)", loaded.spec.name, describe(params.settings))
    return params


def describe(settings: SubtypeSettings) -> str:
    """The head's choice and headline figures in one line (for the command line and the log)."""
    parts = [f"features {settings.features}, C {settings.l2_c:g}, calibration {settings.calibration.method}"]
    for name, figures in (("validation", settings.validation), ("test", settings.test)):
        if figures is None:
            continue
        pneumonia, three = figures.pneumonia, figures.three_class
        parts.append(
            f"{name}: bacterial vs viral ROC AUC {_fmt(pneumonia.roc_auc, digits=3)}, accuracy "
            f"{_fmt(pneumonia.accuracy, digits=3)}, ECE {_fmt(pneumonia.ece, digits=3)}; three-class accuracy "
            f"{_fmt(three.accuracy, digits=3)}, macro ROC AUC {_fmt(three.macro_roc_auc, digits=3)}"
        )
    return "; ".join(parts)
