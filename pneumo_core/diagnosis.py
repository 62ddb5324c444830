"""What the clinician reads: formatting a reading, and running every model on one image.

Usage:
    reading = Reader(loaded).read(xray)
    print(reading.label, percent(reading.probability), explain_probability(reading))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from pneumo_core.artifacts import ModelConfig, ModelMetrics
from pneumo_core.imaging import XRay
from pneumo_core.reading import Reader, Reading

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
SAMPLES_FILE = ASSETS_DIR / "samples" / "samples.json"
DISCLAIMER = (
    "Decision support for clinicians, not a diagnosis and not a medical device. Trained on "
    "pediatric chest X-rays (ages 1-5) from one hospital; not validated on adults."
)


def disclaimer(config: ModelConfig) -> str:
    """The one-line disclaimer, with the training population read from the model's artifacts."""
    population = config.population
    return (
        f"Decision support for clinicians, not a diagnosis and not a medical device. Trained on "
        f"{population.summary}; not validated on {population.not_validated_on}."
    )


def percent(probability: float) -> str:
    """A probability as a percentage with one decimal, never claiming 0% or 100%."""
    if probability > 0.999:
        return ">99.9%"
    if probability < 0.001:
        return "<0.1%"
    return f"{probability:.1%}"


BAND_LEVEL = 0.99


@dataclass(frozen=True)
class Band:
    """The scores around the operating threshold where a reading is indeterminate.

    Derived from the validation ROC curve: ``low`` is the highest score below which at most
    1 - ``level`` of validation pneumonia cases fell, ``high`` the lowest score above which at most
    1 - ``level`` of validation normal cases fell. Between them both classes were common.
    """

    low: float
    high: float
    level: float = BAND_LEVEL

    def contains(self, probability: float) -> bool:
        """Whether a score lies inside the band."""
        return self.low <= probability < self.high


def indeterminate_band(
    fpr: list[float], tpr: list[float], thresholds: list[float], threshold: float, level: float = BAND_LEVEL
) -> Band:
    """The indeterminate band from a validation ROC curve (see :class:`Band`), always containing ``threshold``.

    Args:
        fpr: False-positive rates of the ROC curve, in scikit-learn's order (decreasing thresholds).
        tpr: True-positive rates, same order.
        thresholds: Score thresholds, same order.
        threshold: The operating threshold.
        level: The sensitivity (below the band) and specificity (above it) the edges guarantee on validation.
    """
    fpr, tpr, cuts = (np.asarray(values, dtype=float) for values in (fpr, tpr, thresholds))
    if not (len(fpr) == len(tpr) == len(cuts)) or len(cuts) == 0:
        raise ValueError("The ROC curve needs equally long, non-empty fpr, tpr and thresholds.")
    sensitive = cuts[tpr >= level]
    specific = cuts[fpr <= 1.0 - level]
    low = float(sensitive.max()) if len(sensitive) else 0.0
    high = float(specific.min()) if len(specific) else 1.0
    return Band(low=min(low, threshold), high=max(min(high, 1.0), threshold), level=level)


@dataclass(frozen=True)
class OperatingFacts:
    """What the training pipeline recorded about a model's operating point, for explaining a reading."""

    min_sensitivity: float  # the validation sensitivity the threshold guarantees
    prevalence: float  # share of pneumonia among the validation images the calibration was fitted on
    band: Band | None


def operating_facts(config: ModelConfig, metrics: ModelMetrics) -> OperatingFacts:
    """The operating facts of a shipped model, read from its artifacts (nothing re-typed)."""
    validation = metrics.validation
    positives = validation.n_per_class.get("PNEUMONIA", 0)
    curve = validation.roc_curve
    band = indeterminate_band(curve.fpr, curve.tpr, curve.thresholds, config.threshold) if curve else None
    return OperatingFacts(
        min_sensitivity=config.min_sensitivity, prevalence=positives / max(validation.n, 1), band=band
    )


def explain_probability(reading: Reading, facts: OperatingFacts) -> str:
    """Plain-language sentences on what the score, the threshold and the grey band mean."""
    if reading.probability is None:
        return f"No reading: {reading.reason}"
    side = "at or above" if reading.target_class else "below"
    if percent(reading.probability) == percent(reading.threshold):
        side = "just " + side
    text = (
        f"The score is {percent(reading.probability)}, {side} the operating threshold of "
        f"{percent(reading.threshold)} (chosen on validation images so that at least "
        f"{facts.min_sensitivity:.0%} of pneumonia cases are flagged), hence the label {reading.label}. "
    )
    if facts.band is not None:
        band = facts.band
        where = "inside" if band.contains(reading.probability) else "outside"
        text += (
            f"It lies {where} the grey band of indeterminate scores ({percent(band.low)} to {percent(band.high)}): "
            f"on validation images, {band.level:.0%} of pneumonia cases scored above its lower edge and "
            f"{band.level:.0%} of normal cases below its upper edge. "
        )
    return text + (
        f"The score is a probability calibrated on validation images of which {facts.prevalence:.0%} showed "
        "pneumonia; where pneumonia is rarer, the same score means a lower chance. "
        "This is decision support, not a diagnosis: read the image yourself."
    )


def verdict(reading: Reading, band: Band | None) -> str:
    """What the clinician reads first: the label, or "INDETERMINATE" inside the band."""
    if reading.probability is None:
        return "NO READING"
    if band is not None and band.contains(reading.probability):
        return "INDETERMINATE"
    return reading.label


def gauge_figure(reading: Reading, band: Band | None) -> go.Figure:
    """A 0-100 % gauge of the score with the threshold marked and the indeterminate band shaded.

    The number under the needle is :func:`percent`'s, as in the text beside it (Plotly's own number would
    round 99.96 % up to "100.0%").
    """
    threshold = reading.threshold * 100
    low, high = (band.low * 100, band.high * 100) if band else (threshold, threshold)
    figure = go.Figure(
        go.Indicator(
            mode="gauge",
            value=reading.probability * 100,
            gauge={
                "axis": {"range": [0, 100], "ticksuffix": "%"},
                "bar": {"color": "#1f2937", "thickness": 0.3},
                "steps": [
                    {"range": [0, low], "color": "#cfe8d5"},
                    {"range": [low, high], "color": "#e5e7eb"},
                    {"range": [high, 100], "color": "#f6d0cc"},
                ],
                "threshold": {"line": {"color": "#b91c1c", "width": 4}, "thickness": 0.9, "value": threshold},
            },
            title={"text": "Pneumonia score (red line: operating threshold)", "font": {"size": 15}},
        )
    )
    figure.add_annotation(
        text=percent(reading.probability),
        x=0.5,
        y=0.02,
        xref="paper",
        yref="paper",
        showarrow=False,
        font={"size": 34, "color": "#1f2937"},
    )
    figure.update_layout(height=240, margin={"t": 60, "b": 10, "l": 40, "r": 40})
    return figure


def compare_models(readers: list[Reader], xray: XRay) -> tuple[pd.DataFrame, bool]:
    """Run every model on one image.

    Returns:
        A table (model, reading, probability and threshold as percentages, note) and whether all
        models that accepted the image agree on its label.
    """
    readings = [reader.read(xray) for reader in readers]
    table = pd.DataFrame(
        [
            {
                "model": r.model,
                "reading": r.label if r.accepted else "refused",
                "P(pneumonia)": percent(r.probability) if r.probability is not None else "",
                "threshold": percent(r.threshold),
                "note": r.reason or "",
            }
            for r in readings
        ]
    )
    labels = {r.label for r in readings if r.accepted}
    return table, len(labels) == 1 and all(r.accepted for r in readings)


@dataclass(frozen=True)
class Sample:
    """A sample X-ray shipped in ``assets/samples``."""

    key: str
    path: Path
    label: str
    subtype: str
    title: str


def list_samples(samples_file: Path = SAMPLES_FILE) -> list[Sample]:
    """The sample images listed in ``assets/samples/samples.json``."""
    if not samples_file.is_file():
        return []
    entries = json.loads(samples_file.read_text())["samples"]
    return [
        Sample(
            key=Path(item["file"]).stem,
            path=samples_file.parent / item["file"],
            label=item["label"],
            subtype=item["subtype"],
            title=item["title"],
        )
        for item in entries
    ]


def samples_credit(samples_file: Path = SAMPLES_FILE) -> str:
    """Attribution line for the sample images."""
    if not samples_file.is_file():
        return ""
    return json.loads(samples_file.read_text())["credit"]
