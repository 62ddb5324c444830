"""Should a retrained model replace the shipped one? Validation and robustness, side by side.

A candidate (for example cnn retrained with the best settings of its hyper-parameter search) replaces
the shipped model only if it is no worse on the validation split, no less robust there, and better in
at least one respect:

- its validation ROC AUC is at most :data:`VALIDATION_AUC_MARGIN` below the shipped model's (on ~780 X-rays a
  smaller difference is noise; the first rule, "higher", kept a far less steady model over 0.0009);
- its framing +-10 % largest flip rate and its mean flip rate over every perturbation, measured on the
  validation split's images, are no higher;
- when both have a bacterial-vs-viral head, the candidate's ROC AUC on the validation split's pneumonia
  images is at most :data:`SUBTYPE_AUC_MARGIN` below;
- and its ROC AUC is higher, or one of the two flip rates is lower.

The internal test split plays no part. Both
directories need ``metrics.json`` and ``robustness_val.json`` (``python -m pneumo_core robustness --split val``).
The verdict is written next to the shipped model (``candidate.json``, sealed) and shown on its card.

Usage:
    python -m pneumo_core candidate --model cnn --candidate runs/cnn_tuned/cnn --label "tuned settings"
"""

from __future__ import annotations

from pathlib import Path

from pneumo_core import artifacts
from pneumo_core.metrics import VALIDATION_AUC_MARGIN
from pneumo_core.robustness import VALIDATION_ROBUSTNESS_FILE, framing_10_max_flip_rate, read_robustness
from pneumo_core.subtype import read_subtype_settings

CANDIDATE_FILE = "candidate.json"
SUBTYPE_AUC_MARGIN = 0.01  # VALIDATION_AUC_MARGIN's counterpart for bacterial vs viral (~580 pneumonia X-rays)
RULE = (
    "Replace the shipped model only if, on the validation split, the candidate's ROC AUC is at most "
    f"{VALIDATION_AUC_MARGIN} below the shipped model's, its framing +-10 % flip rate and mean flip rate "
    "over all perturbations are no higher, (when both have a subtype head) its bacterial-vs-viral ROC AUC "
    f"is at most {SUBTYPE_AUC_MARGIN} below, and it is better in one of ROC AUC, framing flip rate or "
    "mean flip rate (internal test split not used)."
)


def model_figures(directory: Path) -> dict:
    """Validation ROC AUC, sensitivity, specificity and ECE, and the validation split's robustness figures.

    Raises:
        ValueError: If the directory has no robustness_val.json (measure it first).
    """
    found = artifacts.read_model_dir(directory)
    robustness = read_robustness(directory, split="val")
    if robustness is None:
        raise ValueError(
            f"{artifacts.repo_relative(directory)} has no {VALIDATION_ROBUSTNESS_FILE}: run "
            "`python -m pneumo_core robustness --split val` on it first."
        )
    validation = found.metrics.validation
    return {
        "directory": artifacts.repo_relative(directory),
        "model_sha256": robustness.model_sha256,
        "validation": {
            "roc_auc": validation.roc_auc,
            "sensitivity": validation.sensitivity,
            "specificity": validation.specificity,
            "ece": validation.ece,
            "threshold": validation.threshold,
        },
        "robustness": {
            "framing_10_max_flip_rate": framing_10_max_flip_rate(robustness),
            "mean_flip_rate": sum(item.flip_rate for item in robustness.perturbations) / len(robustness.perturbations),
            "ece_under_shift": robustness.summary.ece_under_shift,
            "criteria_passed": robustness.summary.targets_met,
            "criteria": len(robustness.summary.criteria),
        },
        "training_seconds": found.config.provenance.training_seconds,
        "subtype_val_roc_auc": subtype_val_roc_auc(directory),
    }


def subtype_val_roc_auc(directory: Path) -> float | None:
    """The bacterial-vs-viral ROC AUC of the directory's subtype head on the validation split, or None."""
    settings = read_subtype_settings(directory)
    return None if settings is None else settings.validation.pneumonia.roc_auc


def verdict(shipped: dict, candidate: dict) -> dict:
    """Whether the candidate replaces the shipped model under :data:`RULE`, with the reasons."""
    auc = candidate["validation"]["roc_auc"], shipped["validation"]["roc_auc"]
    framing = (candidate["robustness"]["framing_10_max_flip_rate"], shipped["robustness"]["framing_10_max_flip_rate"])
    mean_flip = candidate["robustness"]["mean_flip_rate"], shipped["robustness"]["mean_flip_rate"]
    checks = {
        f"validation ROC AUC at most {VALIDATION_AUC_MARGIN} lower": auc[0] >= auc[1] - VALIDATION_AUC_MARGIN,
        "framing +-10 % flip rate no higher": framing[0] <= framing[1],
        "mean flip rate no higher": mean_flip[0] <= mean_flip[1],
        "better in ROC AUC or a flip rate": auc[0] > auc[1] or framing[0] < framing[1] or mean_flip[0] < mean_flip[1],
    }
    if shipped.get("subtype_val_roc_auc") is not None and candidate.get("subtype_val_roc_auc") is not None:
        checks[f"bacterial-vs-viral validation ROC AUC at most {SUBTYPE_AUC_MARGIN} lower"] = (
            candidate["subtype_val_roc_auc"] >= shipped["subtype_val_roc_auc"] - SUBTYPE_AUC_MARGIN
        )
    return {"replace": all(checks.values()), "checks": checks}


def judge_candidate(shipped_dir: Path, candidate_dir: Path, label: str) -> dict:
    """Compare, write ``candidate.json`` into the shipped directory and re-seal it."""
    shipped, candidate = model_figures(shipped_dir), model_figures(candidate_dir)
    payload = {"label": label, "rule": RULE, "shipped": shipped, "candidate": candidate, **verdict(shipped, candidate)}
    artifacts.write_json(shipped_dir / CANDIDATE_FILE, payload)
    artifacts.seal(shipped_dir, updated=[CANDIDATE_FILE])
    return payload


def read_candidate(directory: Path) -> dict | None:
    """The recorded verdict of a shipped model directory, or None."""
    path = Path(directory) / CANDIDATE_FILE
    return artifacts.read_json(path) if path.is_file() else None


def candidate_markdown(payload: dict) -> str:
    """A model-card section: the candidate, its figures beside the shipped model's, and the verdict."""
    rows = [
        ("validation ROC AUC", "validation", "roc_auc", "{:.4f}"),
        ("validation specificity", "validation", "specificity", "{:.3f}"),
        ("validation images, framing +-10 %: largest flip rate", "robustness", "framing_10_max_flip_rate", "{:.1%}"),
        ("validation images: mean flip rate (all perturbations)", "robustness", "mean_flip_rate", "{:.1%}"),
        ("validation images: ECE under shift", "robustness", "ece_under_shift", "{:.3f}"),
    ]
    table = "\n".join(
        f"| {name} | {fmt.format(payload['shipped'][group][key])} | {fmt.format(payload['candidate'][group][key])} |"
        for name, group, key, fmt in rows
    )
    targets = [payload[side]["robustness"].get("criteria_passed") for side in ("shipped", "candidate")]
    if None not in targets:
        shipped_met, candidate_met = (f"{met} of {payload['candidate']['robustness']['criteria']}" for met in targets)
        table += (
            f"\n| validation images: targets met (framing, gamma, ROC AUC, ECE) | {shipped_met} | {candidate_met} |"
        )
    subtype = [payload[side].get("subtype_val_roc_auc") for side in ("shipped", "candidate")]
    if None not in subtype:
        table += "\n| validation bacterial-vs-viral ROC AUC | {:.4f} | {:.4f} |".format(*subtype)
    outcome = "It replaced the shipped model." if payload["replace"] else "It was not shipped."
    failed = [name for name, passed in payload["checks"].items() if not passed]
    why = f" Failed: {', '.join(failed)}." if failed else ""
    return (
        f"## Retrained candidate: {payload['label']}\n"
        f"{payload['rule']} {outcome}{why}\n\n"
        "| figure | shipped | candidate |\n|---|---|---|\n"
        f"{table}\n"
    )
