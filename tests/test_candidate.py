"""The rule that decides whether a retrained model replaces the shipped one."""

from __future__ import annotations

import pytest

from pneumo_core.candidate import candidate_markdown, verdict


def figures(auc: float, framing: float, mean_flip: float) -> dict:
    return {
        "validation": {"roc_auc": auc, "specificity": 0.95},
        "robustness": {"framing_10_max_flip_rate": framing, "mean_flip_rate": mean_flip, "ece_under_shift": 0.05},
    }


@pytest.mark.parametrize(
    ("candidate", "replace"),
    [
        (figures(0.995, 0.10, 0.04), True),  # better everywhere
        (figures(0.998, 0.34, 0.09), False),  # better on validation, less robust (the tuned cnn)
        (figures(0.990, 0.05, 0.02), False),  # more robust, clearly worse on validation
        (figures(0.9915, 0.05, 0.02), True),  # more robust, validation ROC AUC lower by noise only
        (figures(0.993, 0.10, 0.04), True),  # a tie on validation, more robust
        (figures(0.993, 0.18, 0.06), False),  # a tie everywhere: nothing gained
        (figures(0.9925, 0.18, 0.06), False),  # slightly worse, nothing gained
    ],
)
def test_a_candidate_replaces_the_model_only_if_no_worse_no_less_robust_and_better_somewhere(candidate, replace):
    assert verdict(figures(0.993, 0.18, 0.06), candidate)["replace"] is replace


def test_the_card_section_names_the_failed_checks_and_shows_both_models():
    shipped, candidate = figures(0.993, 0.18, 0.06), figures(0.998, 0.34, 0.09)
    payload = {"label": "tuned", "rule": "RULE.", "shipped": shipped, "candidate": candidate}
    text = candidate_markdown({**payload, **verdict(shipped, candidate)})
    assert "It was not shipped." in text and "framing +-10 % flip rate no higher" in text
    assert "| validation images, framing +-10 %: largest flip rate | 18.0% | 34.0% |" in text
    assert "targets met" not in text  # figures recorded before the targets were counted


def test_the_card_section_counts_the_targets_each_model_meets():
    shipped, candidate = figures(0.993, 0.18, 0.06), figures(0.990, 0.04, 0.07)
    for side, met in ((shipped, 2), (candidate, 4)):
        side["robustness"].update(criteria=6, criteria_passed=met)
    text = candidate_markdown(
        {"label": "swap", "rule": "RULE.", "shipped": shipped, "candidate": candidate, **verdict(shipped, candidate)}
    )
    assert "| validation images: targets met (framing, gamma, ROC AUC, ECE) | 2 of 6 | 4 of 6 |" in text


def test_a_candidate_with_a_weaker_subtype_head_is_not_shipped():
    """When both models have a bacterial-vs-viral head, the candidate's may not be worse on validation beyond noise."""
    shipped = {**figures(0.993, 0.18, 0.06), "subtype_val_roc_auc": 0.79}
    weaker = {**figures(0.995, 0.10, 0.04), "subtype_val_roc_auc": 0.75}
    outcome = verdict(shipped, weaker)
    check = "bacterial-vs-viral validation ROC AUC at most 0.01 lower"
    assert outcome["replace"] is False and outcome["checks"][check] is False
    assert verdict(shipped, {**weaker, "subtype_val_roc_auc": 0.785})["replace"] is True
    assert verdict(shipped, {**weaker, "subtype_val_roc_auc": 0.85})["replace"] is True
    text = candidate_markdown({"label": "joint", "rule": "RULE.", "shipped": shipped, "candidate": weaker, **outcome})
    assert "| validation bacterial-vs-viral ROC AUC | 0.7900 | 0.7500 |" in text


def recommendable(name: str, auc: float, framing_flips: float, targets_met: int = 3):
    """A stand-in catalog entry with the figures :func:`catalog.best_model` reads."""
    from types import SimpleNamespace

    metrics = SimpleNamespace(validation=SimpleNamespace(roc_auc=auc))
    return SimpleNamespace(
        name=name,
        shipped=True,
        metrics=metrics,
        validation_framing_flip_rate=framing_flips,
        validation_targets_met=targets_met,
    )


def test_the_app_recommends_the_steadiest_model_among_those_tied_on_validation():
    """Meeting as many targets: within 0.002 of the best validation ROC AUC the lowest framing flip rate wins."""
    from pneumo_core import catalog

    sharp, steady = recommendable("sharp", 0.9939, 0.197), recommendable("steady", 0.9926, 0.063)
    unmeasured = recommendable("unmeasured", 0.9945, float("inf"), targets_met=-1)
    weak = recommendable("weak", 0.9700, 0.010)
    assert catalog.best_model([sharp, steady, unmeasured, weak]).name == "steady"
    assert catalog.best_model([sharp, unmeasured, weak]).name == "sharp"
    assert catalog.best_model([sharp, recommendable("steadier but worse", 0.9915, 0.01)]).name == "sharp"
    assert catalog.best_model([recommendable("a", 0.99, 0.05), recommendable("b", 0.991, 0.05)]).name == "b"
    assert catalog.best_model([unmeasured]).name == "unmeasured"
    assert catalog.best_model([]) is None


def test_the_app_recommends_a_model_meeting_more_robustness_targets_even_if_it_ranks_lower():
    """The robustness targets come first: 4 of 6 met beats 3 of 6, whatever the ROC AUC; then the usual rule."""
    from pneumo_core import catalog

    sharp = recommendable("sharp", 0.9939, 0.197, targets_met=3)
    robust = recommendable("robust", 0.9890, 0.037, targets_met=4)
    robust_ensemble = recommendable("robust ensemble", 0.9897, 0.037, targets_met=4)
    assert catalog.best_model([sharp, robust]).name == "robust"
    assert catalog.best_model([sharp, robust, robust_ensemble]).name == "robust ensemble"
    assert catalog.best_model([sharp, recommendable("worse on all", 0.97, 0.20, targets_met=2)]).name == "sharp"


def test_the_shipped_recommendation_follows_the_rule_on_the_committed_figures():
    from pneumo_core.catalog import best_model, catalog, recommendation_text
    from pneumo_core.metrics import VALIDATION_AUC_MARGIN

    shipped = [entry for entry in catalog() if entry.shipped]
    best = best_model(shipped)
    assert best.validation_targets_met == max(entry.validation_targets_met for entry in shipped) >= 0
    leaders = [entry for entry in shipped if entry.validation_targets_met == best.validation_targets_met]
    top = max(entry.metrics.validation.roc_auc for entry in leaders)
    assert best.metrics.validation.roc_auc >= top - VALIDATION_AUC_MARGIN
    tied = [entry for entry in leaders if entry.metrics.validation.roc_auc >= top - VALIDATION_AUC_MARGIN]
    assert best.validation_framing_flip_rate == min(entry.validation_framing_flip_rate for entry in tied)
    why = recommendation_text(best)
    assert why.startswith(f"The app recommends `{best.name}`") and f"meets {best.validation_targets_met} of" in why
