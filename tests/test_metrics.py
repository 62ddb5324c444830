"""Tests of pneumo_core.metrics: agreement with scikit-learn, hand-checked cases, ECE, the threshold rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from pneumo_core.metrics import (
    MIN_SENSITIVITY,
    ROC_POINTS,
    choose_threshold,
    compute_metrics,
    expected_calibration_error,
)


@pytest.fixture(scope="module")
def scored() -> tuple[np.ndarray, np.ndarray]:
    """500 fixed targets and continuous, overlapping probabilities (no ties)."""
    rng = np.random.default_rng(2024)
    y = (rng.random(500) < 0.6).astype(int)
    logits = rng.normal(loc=np.where(y == 1, 1.2, -1.0), scale=1.3)
    return y, 1.0 / (1.0 + np.exp(-logits))


def rates_at(y: np.ndarray, prob: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) when calling pneumonia at prob >= threshold."""
    predicted = prob >= threshold
    return float(predicted[y == 1].mean()), float((~predicted[y == 0]).mean())


def test_compute_metrics_agrees_with_sklearn(scored):
    """Every headline figure equals scikit-learn's on a fixed fixture."""
    y, prob = scored
    threshold = 0.42
    result = compute_metrics(y, prob, threshold)
    predicted = (prob >= threshold).astype(int)
    assert result["n"] == 500
    assert result["n_per_class"] == {"NORMAL": int((y == 0).sum()), "PNEUMONIA": int((y == 1).sum())}
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted))
    assert result["precision"] == pytest.approx(skm.precision_score(y, predicted))
    assert result["recall"] == pytest.approx(skm.recall_score(y, predicted))
    assert result["sensitivity"] == pytest.approx(skm.recall_score(y, predicted))
    assert result["specificity"] == pytest.approx(skm.recall_score(y, predicted, pos_label=0))
    assert result["f1"] == pytest.approx(skm.f1_score(y, predicted))
    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(y, prob))
    assert result["pr_auc"] == pytest.approx(skm.average_precision_score(y, prob))
    assert result["log_loss"] == pytest.approx(skm.log_loss(y, prob))
    assert result["brier"] == pytest.approx(skm.brier_score_loss(y, prob))
    assert result["confusion_at_threshold"]["matrix"] == skm.confusion_matrix(y, predicted).tolist()
    at_half = (prob >= 0.5).astype(int)
    assert result["confusion_at_0.5"]["matrix"] == skm.confusion_matrix(y, at_half).tolist()
    assert result["confusion_at_0.5"]["accuracy"] == pytest.approx(skm.accuracy_score(y, at_half))
    assert result["threshold"] == threshold
    json.dumps(result)  # JSON-serialisable, as written to metrics.json


def test_roc_curve_is_thinned_and_keeps_both_ends(scored):
    """The stored ROC curve has at most ROC_POINTS points, starts at (0, 0) and ends at (1, 1)."""
    y, prob = scored
    roc = compute_metrics(y, prob, 0.5)["roc_curve"]
    assert 2 < len(roc["fpr"]) <= ROC_POINTS
    assert len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"])
    assert (roc["fpr"][0], roc["tpr"][0]) == (0.0, 0.0)
    assert (roc["fpr"][-1], roc["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(roc["fpr"]) >= 0)
    assert np.all(np.diff(roc["tpr"]) >= 0)
    assert max(roc["thresholds"]) <= 1.0


def test_hand_checked_case():
    """4 normals and 6 pneumonias with TN=3, FP=1, FN=1, TP=5 at 0.5, checked by hand."""
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    prob = np.array([0.1, 0.2, 0.3, 0.7, 0.4, 0.6, 0.8, 0.9, 0.95, 0.55])
    result = compute_metrics(y, prob, 0.5)
    assert result["n_per_class"] == {"NORMAL": 4, "PNEUMONIA": 6}
    assert result["confusion_at_threshold"]["matrix"] == [[3, 1], [1, 5]]
    assert result["accuracy"] == pytest.approx(0.8)
    assert result["precision"] == pytest.approx(5 / 6)
    assert result["sensitivity"] == pytest.approx(5 / 6)
    assert result["specificity"] == pytest.approx(3 / 4)
    assert result["f1"] == pytest.approx(5 / 6)
    # 21 of the 24 (pneumonia, normal) pairs are ranked correctly.
    assert result["roc_auc"] == pytest.approx(21 / 24)
    # (0.01 + 0.04 + 0.09 + 0.49 + 0.36 + 0.16 + 0.04 + 0.01 + 0.0025 + 0.2025) / 10
    assert result["brier"] == pytest.approx(0.1405)
    # At 0.35 the 0.4 pneumonia is caught: TN=3, FP=1, FN=0, TP=6.
    lower = compute_metrics(y, prob, 0.35)["confusion_at_threshold"]
    assert lower["matrix"] == [[3, 1], [0, 6]]
    assert lower["sensitivity"] == 1.0
    assert lower["specificity"] == 0.75


def test_single_class_and_bad_shapes():
    """One class: AUCs, ROC curve and undefined rates are None. Mismatched shapes raise ValueError."""
    y = np.ones(5, dtype=int)
    result = compute_metrics(y, np.array([0.2, 0.6, 0.7, 0.8, 0.9]), 0.5)
    assert result["roc_auc"] is None
    assert result["pr_auc"] is None
    assert result["roc_curve"] is None
    assert result["specificity"] is None
    assert result["sensitivity"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="same length"):
        compute_metrics(np.array([0, 1, 1]), np.array([0.1, 0.9]), 0.5)


def test_ece_of_perfectly_calibrated_bins_is_zero():
    """Bins whose mean probability equals their positive rate give an ECE of 0."""
    prob = np.array([0.25] * 4 + [0.75] * 4 + [0.05] * 20)
    y = np.array([1, 0, 0, 0] + [1, 1, 1, 0] + [1] + [0] * 19)
    assert expected_calibration_error(y, prob) == pytest.approx(0.0, abs=1e-12)
    assert compute_metrics(y, prob, 0.5)["ece"] == pytest.approx(0.0, abs=1e-12)


def test_ece_of_miscalibrated_case_matches_hand_value():
    """Half the images at p=0.9 with 50 % positives (gap 0.4), half at p=0.2 with none (gap 0.2): ECE 0.3."""
    prob = np.array([0.9] * 4 + [0.2] * 4)
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    assert expected_calibration_error(y, prob) == pytest.approx(0.5 * 0.4 + 0.5 * 0.2)


def test_ece_handles_probabilities_at_the_edges():
    """p = 0 and p = 1 fall in the first and last bins: confident and right gives ECE 0."""
    assert expected_calibration_error(np.array([0, 0, 1, 1]), np.array([0.0, 0.0, 1.0, 1.0])) == 0.0
    assert expected_calibration_error(np.array([1, 1]), np.array([0.0, 0.0])) == pytest.approx(1.0)


def test_choose_threshold_meets_sensitivity_with_max_specificity(scored):
    """The threshold keeps sensitivity >= 0.95 on its own data; no threshold that does is more specific."""
    y, prob = scored
    threshold = choose_threshold(y, prob)
    sensitivity, specificity = rates_at(y, prob, threshold)
    assert sensitivity >= MIN_SENSITIVITY
    candidates = [rates_at(y, prob, t) for t in np.unique(prob)]
    best = max(spec for sens, spec in candidates if sens >= MIN_SENSITIVITY)
    assert specificity == pytest.approx(best)
    assert 0.0 <= threshold <= 1.0


@pytest.mark.parametrize("floor", [0.8, 0.99, 1.0])
def test_choose_threshold_other_floors(scored, floor):
    """Other sensitivity floors are met too, with the most specific admissible threshold."""
    y, prob = scored
    sensitivity, specificity = rates_at(y, prob, choose_threshold(y, prob, min_sensitivity=floor))
    assert sensitivity >= floor
    best = max(spec for sens, spec in (rates_at(y, prob, t) for t in np.unique(prob)) if sens >= floor)
    assert specificity == pytest.approx(best)


def test_choose_threshold_separable_data():
    """Perfectly separated scores give a threshold with sensitivity 1 and specificity 1."""
    y = np.array([0, 0, 0, 1, 1, 1])
    prob = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert rates_at(y, prob, choose_threshold(y, prob)) == (1.0, 1.0)


def test_choose_threshold_needs_both_classes():
    """A validation split with one class cannot set a threshold."""
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.ones(4, dtype=int), np.array([0.1, 0.5, 0.6, 0.9]))


def test_sensitivity_by_subtype():
    """Sensitivity per pneumonia subtype counts only pneumonia images of that subtype."""
    y = np.array([1, 1, 1, 1, 1, 0, 0])
    prob = np.array([0.9, 0.8, 0.3, 0.7, 0.1, 0.9, 0.2])
    subtypes = np.array(["bacteria", "bacteria", "bacteria", "virus", "virus", "normal", "normal"])
    by_subtype = compute_metrics(y, prob, 0.5, subtypes=subtypes)["sensitivity_by_subtype"]
    assert by_subtype == {
        "bacteria": {"n": 3, "sensitivity": pytest.approx(2 / 3)},
        "virus": {"n": 2, "sensitivity": pytest.approx(0.5)},
    }
    assert compute_metrics(y, prob, 0.5)["sensitivity_by_subtype"] == {}
    only_bacteria = compute_metrics(y, prob, 0.5, subtypes=np.array(["bacteria"] * 5 + ["normal"] * 2))
    assert set(only_bacteria["sensitivity_by_subtype"]) == {"bacteria"}


def test_ties_in_the_metrics_table_highlight_every_tied_model():
    """Two models at 0.995 ROC AUC (as displayed) are both the best; lowest wins for ECE."""
    import pandas as pd

    from pneumo_core.figures import best_per_column

    table = pd.DataFrame(
        {"ROC AUC": [0.9951, 0.9949, 0.966], "ECE": [0.013, 0.0131, 0.034]}, index=["cnn", "xception", "mlp"]
    )
    best = best_per_column(table)
    assert best["ROC AUC"] == {"cnn", "xception"}
    assert best["ECE"] == {"cnn", "xception"}
