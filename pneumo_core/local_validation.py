"""Local validation: how a model does on a site's own labelled images, with the uncertainty of the estimate.

Labels come from the folders (``.../NORMAL/x.png``, ``.../PNEUMONIA/y.dcm``) or from a CSV with the
columns ``file,label``. The figures are those of the Compare page (metrics at the shipped threshold,
confusion matrix, ROC curve with the operating point), computed by :mod:`pneumo_core.metrics` and drawn
by :mod:`pneumo_core.figures`, plus the threshold that would give a sensitivity of at least 95% on these
images and Wilson 95% confidence intervals that say how much such a small sample can tell.

Usage:
    truth = label_from_path("site/PNEUMONIA/x.png")                     # "PNEUMONIA"
    validation = validate_locally(truths, probabilities, loaded.threshold)
    print(validation.summary())
    figure = local_roc_figure(entry, validation)
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from scipy.stats import binomtest

from pneumo_core.artifacts import SplitMetrics, from_json
from pneumo_core.catalog import ModelEntry
from pneumo_core.figures import TABLE_COLUMNS, confusion_figure, formatted, roc_figure
from pneumo_core.metrics import MIN_SENSITIVITY, choose_threshold, compute_metrics, confusion

CLASS_NAMES = ("NORMAL", "PNEUMONIA")
CONFIDENCE = 0.95
# An interval wider than this cannot support a decision on the threshold.
WIDE_INTERVAL = 0.1
_LABEL_ALIASES = {"normal": "NORMAL", "0": "NORMAL", "pneumonia": "PNEUMONIA", "1": "PNEUMONIA"}
MAX_LABELS_BYTES = 20 * 1024**2
FIGURE_HEIGHT = 460


class LabelsError(ValueError):
    """A labels CSV that cannot be used; ``str(error)`` says what to fix."""


def label_from_path(path: str) -> str | None:
    """The true label given by the nearest folder named NORMAL or PNEUMONIA (any case), else ``None``."""
    folders = path.replace("\\", "/").split("/")[:-1]
    for folder in reversed(folders):
        if folder.upper() in CLASS_NAMES:
            return folder.upper()
    return None


def read_labels_csv(data: bytes) -> dict[str, str]:
    """Read a CSV of true labels.

    Args:
        data: CSV bytes with a header holding ``file`` and ``label`` (any case; other columns are
            ignored). Labels are NORMAL or PNEUMONIA (any case) or 0/1.

    Returns:
        ``{file: "NORMAL" | "PNEUMONIA"}``.

    Raises:
        LabelsError: If the CSV is too large, unreadable, lacks a column, has an unknown label or
            gives one file two different labels.
    """
    if len(data) > MAX_LABELS_BYTES:
        raise LabelsError(f"The labels CSV is larger than {MAX_LABELS_BYTES // 1024**2} MB.")
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, skipinitialspace=True)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise LabelsError("The labels file is not a readable CSV (expected the columns file,label).") from error
    frame.columns = [str(column).strip().lower() for column in frame.columns]
    missing = [column for column in ("file", "label") if column not in frame.columns]
    if missing:
        raise LabelsError(f"The labels CSV has no {' or '.join(missing)} column (expected the header file,label).")
    labels: dict[str, str] = {}
    for line, (file, label) in enumerate(zip(frame["file"].str.strip(), frame["label"].str.strip(), strict=True), 2):
        if not file:
            continue
        canonical = _LABEL_ALIASES.get(label.lower())
        if canonical is None:
            raise LabelsError(f"Line {line} of the labels CSV has the label {label!r}; use NORMAL or PNEUMONIA.")
        if labels.setdefault(file, canonical) != canonical:
            raise LabelsError(f"The labels CSV gives {file!r} two different labels.")
    if not labels:
        raise LabelsError("The labels CSV lists no files.")
    return labels


def match_label(name: str, labels: Mapping[str, str]) -> str | None:
    """The label of ``name`` in a labels table: by its full path, else by its file name alone."""
    cleaned = name.replace("\\", "/")
    if cleaned in labels:
        return labels[cleaned]
    return labels.get(cleaned.rsplit("/", 1)[-1])


@dataclass(frozen=True)
class Interval:
    """A proportion ``successes / trials`` with its Wilson confidence interval."""

    successes: int
    trials: int
    low: float
    high: float

    @property
    def estimate(self) -> float:
        return self.successes / self.trials

    @property
    def wide(self) -> bool:
        """Whether the interval is too wide to base a decision on."""
        return self.high - self.low > WIDE_INTERVAL

    def describe(self) -> str:
        """E.g. ``96.3% (77 of 80; 95% CI 89.5% to 98.7%)``."""
        return (
            f"{self.estimate:.1%} ({self.successes} of {self.trials}; "
            f"{CONFIDENCE:.0%} CI {self.low:.1%} to {self.high:.1%})"
        )


def wilson_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> Interval | None:
    """The Wilson score interval of a proportion (``None`` when there are no trials)."""
    if trials <= 0:
        return None
    interval = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(int(successes), int(trials), float(interval.low), float(interval.high))


@dataclass(frozen=True)
class OperatingPoint:
    """Sensitivity and specificity, with their intervals, at one threshold."""

    threshold: float
    sensitivity: Interval | None
    specificity: Interval | None


@dataclass(frozen=True)
class LocalValidation:
    """A model's figures on a site's labelled images.

    Attributes:
        metrics: The figures of :func:`pneumo_core.metrics.compute_metrics` at the shipped threshold.
        shipped: The shipped threshold's operating point on these images.
        suggested: The threshold with the highest specificity among those with sensitivity >= 95%
            on these images, or ``None`` when the images do not hold both classes.
        min_sensitivity: The sensitivity floor of ``suggested``.
        n_refused: Labelled images that were refused (unreadable or out of scope), not counted.
    """

    metrics: SplitMetrics
    shipped: OperatingPoint
    suggested: OperatingPoint | None
    min_sensitivity: float
    n_refused: int = 0

    @property
    def n_pneumonia(self) -> int:
        return self.metrics.n_per_class["PNEUMONIA"]

    @property
    def n_normal(self) -> int:
        return self.metrics.n_per_class["NORMAL"]

    @property
    def both_classes(self) -> bool:
        return self.n_pneumonia > 0 and self.n_normal > 0

    def summary(self) -> list[str]:
        """Plain-language sentences: what the figures rest on, and how far to trust them."""
        sentences = [
            f"These figures rest on {self.metrics.n} labelled images "
            f"({self.n_pneumonia} pneumonia, {self.n_normal} normal)"
            + (f"; {self.n_refused} labelled images were refused and are not counted." if self.n_refused else ".")
        ]
        sentences.append(f"At the shipped threshold of {self.shipped.threshold:.1%}: " + _describe(self.shipped) + ".")
        if self.suggested is None:
            sentences.append(
                "A threshold for this site needs both NORMAL and PNEUMONIA images; only one class was found."
            )
            return sentences
        sentences.append(
            f"A sensitivity of at least {self.min_sensitivity:.0%} on these images needs a threshold of "
            f"{self.suggested.threshold:.1%}: " + _describe(self.suggested) + ". It was chosen on these same "
            "images, so its sensitivity is optimistic."
        )
        intervals = [self.suggested.sensitivity, self.suggested.specificity]
        if any(interval is None or interval.wide for interval in intervals):
            sentences.append(
                f"Too few images to change the threshold on: a {CONFIDENCE:.0%} confidence interval is wider "
                f"than {WIDE_INTERVAL * 100:.0f} percentage points. Collect more labelled images of both classes "
                "before relying on a different threshold."
            )
        return sentences


def _describe(point: OperatingPoint) -> str:
    parts = []
    if point.sensitivity is not None:
        parts.append(f"sensitivity {point.sensitivity.describe()}")
    if point.specificity is not None:
        parts.append(f"specificity {point.specificity.describe()}")
    return ", ".join(parts)


def validate_locally(
    truths: Sequence[str],
    probabilities: Sequence[float],
    threshold: float,
    min_sensitivity: float = MIN_SENSITIVITY,
    n_refused: int = 0,
) -> LocalValidation:
    """Figures of one model on labelled images that it accepted.

    Args:
        truths: ``"NORMAL"`` or ``"PNEUMONIA"`` per image.
        probabilities: The model's pneumonia probability per image.
        threshold: The model's shipped operating threshold.
        min_sensitivity: The sensitivity floor of the suggested threshold.
        n_refused: How many labelled images were refused (only reported).

    Raises:
        ValueError: If there are no images, a label is unknown or the lengths differ.
    """
    unknown = sorted(set(truths) - set(CLASS_NAMES))
    if unknown:
        raise ValueError(f"Unknown true labels {unknown}; use NORMAL or PNEUMONIA.")
    if not truths or len(truths) != len(probabilities):
        raise ValueError("Local validation needs at least one labelled image with a probability each.")
    y_true = np.array([CLASS_NAMES.index(truth) for truth in truths], dtype=int)
    prob = np.asarray(probabilities, dtype=float)
    metrics = from_json(SplitMetrics, compute_metrics(y_true, prob, threshold), "local validation")
    suggested = None
    if len(np.unique(y_true)) == 2:
        suggested = operating_point(y_true, prob, choose_threshold(y_true, prob, min_sensitivity))
    return LocalValidation(
        metrics=metrics,
        shipped=operating_point(y_true, prob, threshold),
        suggested=suggested,
        min_sensitivity=min_sensitivity,
        n_refused=n_refused,
    )


def operating_point(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> OperatingPoint:
    """Sensitivity and specificity with Wilson intervals at ``threshold``."""
    (tn, fp), (fn, tp) = confusion(y_true, prob, threshold)["matrix"]
    return OperatingPoint(
        threshold=float(threshold),
        sensitivity=wilson_interval(tp, tp + fn),
        specificity=wilson_interval(tn, tn + fp),
    )


def metrics_table(validation: LocalValidation, model: str) -> pd.DataFrame:
    """The Compare page's metric columns for these images, formatted for display (one row)."""
    row = {label: getattr(validation.metrics, key) for key, label in TABLE_COLUMNS.items()}
    row["Threshold"] = validation.shipped.threshold
    return formatted(pd.DataFrame.from_dict({model: row}, orient="index"))


def local_entry(entry: ModelEntry, validation: LocalValidation) -> ModelEntry:
    """The catalog entry with these images' figures in place of its test-split figures (for the plots)."""
    return dataclasses.replace(entry, metrics=dataclasses.replace(entry.metrics, test=validation.metrics))


def local_confusion_figure(entry: ModelEntry, validation: LocalValidation) -> go.Figure:
    """The Compare page's confusion matrix (counts and row percentages) on these images."""
    figure = confusion_figure(local_entry(entry, validation))
    figure.update_layout(
        title=f"{entry.name} on your images (threshold {validation.shipped.threshold:.3f})", height=FIGURE_HEIGHT
    )
    return figure


def local_roc_figure(entry: ModelEntry, validation: LocalValidation) -> go.Figure:
    """The Compare page's ROC curve on these images, with the shipped and the suggested operating points."""
    figure = roc_figure([local_entry(entry, validation)])
    suggested = validation.suggested
    if suggested is not None and suggested.sensitivity and suggested.specificity:
        figure.add_trace(
            go.Scatter(
                x=[1 - suggested.specificity.estimate],
                y=[suggested.sensitivity.estimate],
                mode="markers",
                marker={"size": 12, "symbol": "diamond-open", "line": {"width": 2}},
                name=f"threshold for sensitivity >= {validation.min_sensitivity:.0%} ({suggested.threshold:.3f})",
            )
        )
    figure.update_layout(
        title=f"{entry.name} on your images",
        height=FIGURE_HEIGHT,
        legend={"orientation": "h", "yanchor": "top", "y": -0.25, "x": 0},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    return figure
