"""What the clinician reads: probability formatting and the plain-language explanation."""

from __future__ import annotations

from pneumo_core.diagnosis import Diagnosis, explain_probability, percent


def test_percent_never_claims_certainty():
    """Extreme probabilities are shown as bounds, others with one decimal."""
    assert percent(0.9996) == ">99.9%"
    assert percent(0.0002) == "<0.1%"
    assert percent(0.8304) == "83.0%"


def test_explanation_states_probability_threshold_and_label():
    """The sentence gives the probability, the side of the threshold, the label and the caveat."""
    text = explain_probability(Diagnosis("cnn", 0.912, 0.83, "PNEUMONIA"))
    assert "91.2%" in text and "at or above" in text and "83.0%" in text and "PNEUMONIA" in text
    assert "not a diagnosis" in text


def test_explanation_does_not_contradict_itself_near_the_threshold():
    """When probability and threshold print alike, the text says 'just below' instead of 'below 62%'."""
    text = explain_probability(Diagnosis("cnn", 0.61521, 0.61539, "NORMAL"))
    assert "just below" in text
