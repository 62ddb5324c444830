"""Turning a prediction into what the clinician reads, and running every model on one image.

Usage:
    result = diagnose(loaded, gray)
    print(result.label, result.probability, explain_probability(result))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo_core.artifacts import LoadedModel
from pneumo_core.inference import predict_gray

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
SAMPLES_FILE = ASSETS_DIR / "samples" / "samples.json"
DISCLAIMER = (
    "Decision support for clinicians, not a diagnosis and not a medical device. Trained on "
    "pediatric chest X-rays (ages 1-5) from one hospital; not validated on adults."
)


@dataclass(frozen=True)
class Diagnosis:
    """One model's reading of one image."""

    model: str
    probability: float
    threshold: float
    label: str

    @property
    def target_class(self) -> int:
        """Index of the predicted class (1 = PNEUMONIA)."""
        return int(self.probability >= self.threshold)


def diagnose(loaded: LoadedModel, gray: np.ndarray) -> Diagnosis:
    """Predict one decoded image with one model at its operating threshold."""
    probability = predict_gray(loaded, gray)
    return Diagnosis(loaded.spec.name, probability, loaded.threshold, loaded.label(probability))


def percent(probability: float) -> str:
    """A probability as a percentage with one decimal, never claiming 0% or 100%."""
    if probability > 0.999:
        return ">99.9%"
    if probability < 0.001:
        return "<0.1%"
    return f"{probability:.1%}"


def explain_probability(result: Diagnosis) -> str:
    """A plain-language sentence on what the probability and the threshold mean."""
    side = "at or above" if result.target_class else "below"
    if percent(result.probability) == percent(result.threshold):
        side = "just " + side
    return (
        f"The model estimates a {percent(result.probability)} probability of pneumonia. This is "
        f"{side} its operating threshold of {percent(result.threshold)}, chosen on validation images so "
        f"that at least 95% of pneumonia cases are flagged; hence the label {result.label}. "
        "The probability was calibrated on images from the training hospital and may be less "
        "reliable elsewhere. This is decision support, not a diagnosis: read the image yourself."
    )


def compare_models(models: list[LoadedModel], gray: np.ndarray) -> tuple[pd.DataFrame, bool]:
    """Run every model on one image.

    Returns:
        A table (model, probability, threshold, label) and whether all labels agree.
    """
    results = [diagnose(loaded, gray) for loaded in models]
    table = pd.DataFrame(
        [
            {
                "model": r.model,
                "P(pneumonia)": round(r.probability, 3),
                "threshold": round(r.threshold, 3),
                "label": r.label,
            }
            for r in results
        ]
    )
    return table, len({r.label for r in results}) == 1


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
