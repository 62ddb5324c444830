"""What the clinician reads: probability formatting, the explanation, the indeterminate band and the gauge."""

from __future__ import annotations

import pytest

from pneumo_core.diagnosis import (
    Band,
    OperatingFacts,
    explain_probability,
    gauge_figure,
    indeterminate_band,
    percent,
    verdict,
)
from pneumo_core.reading import Reading

# A validation ROC curve in scikit-learn's order: 99 % sensitivity is reached at 0.30, 99 % specificity at 0.95.
ROC = {
    "fpr": [0.0, 0.0, 0.01, 0.05, 0.20, 1.0],
    "tpr": [0.0, 0.80, 0.90, 0.96, 0.99, 1.0],
    "thresholds": [1.0, 0.97, 0.95, 0.85, 0.30, 0.01],
}


FACTS = OperatingFacts(min_sensitivity=0.95, prevalence=0.742, band=Band(0.30, 0.95))


def reading(probability: float, threshold: float = 0.85) -> Reading:
    label = "PNEUMONIA" if probability >= threshold else "NORMAL"
    return Reading(model="cnn", threshold=threshold, probability=probability, label=label)


def test_percent_never_claims_certainty():
    """Extreme probabilities are shown as bounds, others with one decimal."""
    assert percent(0.9996) == ">99.9%"
    assert percent(0.0002) == "<0.1%"
    assert percent(0.8304) == "83.0%"


def test_explanation_states_probability_threshold_and_label():
    """The sentence gives the probability, the side of the threshold, the label and the caveat."""
    text = explain_probability(reading(0.912, 0.83), FACTS)
    assert "91.2%" in text and "at or above" in text and "83.0%" in text and "PNEUMONIA" in text
    assert "at least 95%" in text and "74% showed pneumonia" in text
    assert "inside the grey band" in text and "30.0% to 95.0%" in text
    assert "not a diagnosis" in text


def test_explanation_does_not_contradict_itself_near_the_threshold():
    """When probability and threshold print alike, the text says 'just below' instead of 'below 62%'."""
    text = explain_probability(reading(0.61521, 0.61539), FACTS)
    assert "just below" in text


def test_band_edges_come_from_the_validation_roc_curve():
    """The band runs from the 99 %-sensitivity score to the 99 %-specificity score."""
    band = indeterminate_band(**ROC, threshold=0.85)
    assert (band.low, band.high) == (0.30, 0.95)


def test_band_always_contains_the_threshold():
    """A threshold outside the ROC-derived edges widens the band to include it."""
    band = indeterminate_band(**ROC, threshold=0.97)
    assert band.low <= 0.97 <= band.high


def test_band_needs_a_curve():
    """An empty or ragged ROC curve is refused with a clear message."""
    with pytest.raises(ValueError, match="ROC curve"):
        indeterminate_band([], [], [], threshold=0.5)


@pytest.mark.parametrize(
    ("probability", "expected"),
    [(0.10, "NORMAL"), (0.682, "INDETERMINATE"), (0.86, "INDETERMINATE"), (0.99, "PNEUMONIA")],
)
def test_verdict_reads_indeterminate_inside_the_band(probability, expected):
    """A 68.2 % score under an 85 % threshold no longer reads a bare NORMAL: it is indeterminate."""
    assert verdict(reading(probability), Band(0.30, 0.95)) == expected


def test_gauge_marks_the_threshold_and_the_band():
    """The gauge shows the score in percent, a threshold line and the three shaded ranges."""
    figure = gauge_figure(reading(0.682), Band(0.30, 0.95))
    indicator = figure.data[0]
    assert indicator.value == pytest.approx(68.2)
    assert indicator.gauge.threshold.value == pytest.approx(85.0)
    assert [step.range for step in indicator.gauge.steps] == [(0, 30.0), (30.0, 95.0), (95.0, 100)]


@pytest.mark.parametrize(("probability", "shown"), [(0.9996, ">99.9%"), (0.0004, "<0.1%"), (0.682, "68.2%")])
def test_gauge_number_reads_as_the_text_beside_it(probability, shown):
    """Plotly's own number would show 100.0% where the text says >99.9%; the gauge writes the same text."""
    figure = gauge_figure(reading(probability), Band(0.30, 0.95))
    assert "number" not in figure.data[0].mode
    assert [annotation.text for annotation in figure.layout.annotations] == [shown]
