"""Evaluation metrics and the operating-threshold rule.

Usage:
    threshold = choose_threshold(y_val, p_val)
    report = compute_metrics(y_test, p_test, threshold, subtypes=test["subtype"])
"""

from __future__ import annotations

import numpy as np

VALIDATION_AUC_MARGIN = 0.002  # validation ROC AUCs closer than this are a tie: on ~780 X-rays the gap is noise

MIN_SENSITIVITY = 0.95
THRESHOLD_RULE = (
    f"Highest validation specificity with validation sensitivity >= {MIN_SENSITIVITY}; "
    "chosen on the calibrated probabilities of the validation split."
)
ECE_BINS = 10
ROC_POINTS = 200


def choose_threshold(y_true: np.ndarray, prob: np.ndarray, min_sensitivity: float = MIN_SENSITIVITY) -> float:
    """Pick the operating threshold: the highest specificity keeping sensitivity >= ``min_sensitivity``.

    Args:
        y_true: 0/1 targets of the validation split (1 = pneumonia).
        prob: Predicted pneumonia probabilities.
        min_sensitivity: The sensitivity floor.

    Returns:
        A threshold; an image is called pneumonia when its probability is >= it.
    """
    from sklearn import metrics as skm

    if len(np.unique(y_true)) < 2:
        raise ValueError("Choosing a threshold needs both classes in the validation split.")
    fpr, tpr, thresholds = skm.roc_curve(y_true, prob, drop_intermediate=False)
    admissible = np.flatnonzero(tpr >= min_sensitivity)
    best = admissible[np.argmin(fpr[admissible])]
    return float(min(thresholds[best], 1.0))


def confusion(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> dict:
    """Confusion matrix and the rates derived from it at one threshold.

    Returns:
        A dict with ``matrix`` ([[TN, FP], [FN, TP]], rows = truth NORMAL, PNEUMONIA),
        accuracy, precision, recall, sensitivity, specificity and F1.
    """
    from sklearn import metrics as skm

    y_pred = (prob >= threshold).astype(int)
    (tn, fp), (fn, tp) = skm.confusion_matrix(y_true, y_pred, labels=[0, 1])
    sensitivity = _ratio(tp, tp + fn)
    return {
        "threshold": float(threshold),
        "matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": sensitivity,
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the pneumonia probability over equal-width bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            error += in_bin.mean() * abs(prob[in_bin].mean() - y_true[in_bin].mean())
    return float(error)


def compute_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float, subtypes: np.ndarray | None = None) -> dict:
    """All evaluation figures for one model on one set of images.

    Args:
        y_true: 0/1 targets (1 = pneumonia).
        prob: Predicted pneumonia probabilities.
        threshold: The model's operating threshold.
        subtypes: Optional per-image subtype (``bacteria``/``virus``/``normal``) for
            the sensitivity per pneumonia subtype.

    Returns:
        A JSON-serialisable dict (see ``metrics.json`` of any shipped model).
    """
    from sklearn import metrics as skm

    y_true = np.asarray(y_true, dtype=int)
    prob = np.clip(np.asarray(prob, dtype=float), 0.0, 1.0)
    if y_true.shape != prob.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and prob must be 1-D and the same length, got {y_true.shape} and {prob.shape}.")
    both = len(np.unique(y_true)) == 2
    operating = confusion(y_true, prob, threshold)
    result = {
        "n": len(y_true),
        "n_per_class": {"NORMAL": int((y_true == 0).sum()), "PNEUMONIA": int((y_true == 1).sum())},
        **{key: operating[key] for key in ("accuracy", "precision", "recall", "sensitivity", "specificity", "f1")},
        "roc_auc": float(skm.roc_auc_score(y_true, prob)) if both else None,
        "pr_auc": float(skm.average_precision_score(y_true, prob)) if both else None,
        "log_loss": float(skm.log_loss(y_true, prob, labels=[0, 1])),
        "brier": float(skm.brier_score_loss(y_true, prob)),
        "ece": expected_calibration_error(y_true, prob),
        "threshold": float(threshold),
        "confusion_at_threshold": operating,
        "confusion_at_0.5": confusion(y_true, prob, 0.5),
        "roc_curve": _roc_points(y_true, prob) if both else None,
        "sensitivity_by_subtype": _sensitivity_by_subtype(y_true, prob, threshold, subtypes),
    }
    return result


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator else None


def _roc_points(y_true: np.ndarray, prob: np.ndarray) -> dict:
    """ROC curve, thinned to at most ``ROC_POINTS`` points (always keeping both ends)."""
    from sklearn import metrics as skm

    fpr, tpr, thresholds = skm.roc_curve(y_true, prob)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), ROC_POINTS)).round().astype(int))
    return {
        "fpr": fpr[keep].round(5).tolist(),
        "tpr": tpr[keep].round(5).tolist(),
        "thresholds": np.minimum(thresholds[keep], 1.0).round(5).tolist(),
    }


def _sensitivity_by_subtype(y_true, prob, threshold, subtypes) -> dict:
    if subtypes is None:
        return {}
    subtypes = np.asarray(subtypes, dtype=object)
    out = {}
    for subtype in ("bacteria", "virus"):
        chosen = (subtypes == subtype) & (y_true == 1)
        if chosen.any():
            out[subtype] = {"n": int(chosen.sum()), "sensitivity": float((prob[chosen] >= threshold).mean())}
    return out
