"""What the app knows about the models: which are shipped, which is best, their typed metrics.

Everything is read from ``models/<name>/`` artifacts, verified against their ``SHA256SUMS``
(see :mod:`pneumo_core.artifacts`); nothing is typed by hand. A model whose folder does not
verify is listed with its ``refused_reason`` instead of raising, so one broken model never
takes the pages down. ``PNEUMO_MODELS_DIR`` overrides the models folder (the tests use it).
Reading the catalog imports no TensorFlow.

Usage:
    entries = catalog()
    default = best_model(entries)
    for entry in entries:
        if entry.refused:
            print(entry.refused_reason)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from pneumo_core import artifacts
from pneumo_core.artifacts import ModelConfig, ModelMetrics, ModelRefused
from pneumo_core.metrics import VALIDATION_AUC_MARGIN
from pneumo_core.registry import REGISTRY, ModelSpec
from pneumo_core.robustness import framing_10_max_flip_rate, read_robustness


@dataclass(frozen=True)
class ModelEntry:
    """One registered model and, when its folder exists, its verified artifacts or why it was refused."""

    spec: ModelSpec
    directory: Path | None
    config: ModelConfig | None = None
    metrics: ModelMetrics | None = None
    history: tuple[dict, ...] | None = None
    refused_reason: str | None = None
    validation_framing_flip_rate: float = math.inf  # largest framing +-10 % flip rate, validation; inf: not measured
    validation_targets_met: int = -1  # issue 8's six robustness targets met on the validation split; -1: not measured

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def shipped(self) -> bool:
        """Whether the model is trained and its artifacts verified (it can be selected)."""
        return self.directory is not None and self.refused_reason is None

    @property
    def refused(self) -> bool:
        """Whether the model's folder exists but failed verification (show ``refused_reason``)."""
        return self.refused_reason is not None

    @property
    def unavailable_reason(self) -> str:
        """Why the model cannot be selected (empty when shipped)."""
        if self.shipped:
            return ""
        if self.spec.assembled_from:
            command = f"`python -m pneumo_core train --model {self.name} --members DIR DIR`"
            members = f"the folders of trained {self.spec.assembled_from}"
            return self.refused_reason or f"Not assembled yet: run {command} with {members}."
        return (
            self.refused_reason
            or self.spec.unavailable_reason
            or f"Not trained yet: run `python -m pneumo_core train --model {self.name}`."
        )


def models_dir() -> Path:
    """The models folder: ``$PNEUMO_MODELS_DIR`` or the repository's ``models/``."""
    return Path(os.environ.get("PNEUMO_MODELS_DIR", artifacts.MODELS_DIR))


def catalog(directory: Path | None = None) -> list[ModelEntry]:
    """Every registered model, in registry order, with the verified artifacts of shipped ones.

    The JSON files and the card are hashed against ``SHA256SUMS``; ``model.keras`` is hashed when
    the model is loaded (:func:`pneumo_core.artifacts.load_model_dir`).
    """
    directory = directory or models_dir()
    present = artifacts.shipped_model_dirs(directory)
    return [entry_for(spec, present.get(name)) for name, spec in REGISTRY.items()]


def entry_for(spec: ModelSpec, model_dir: Path | None) -> ModelEntry:
    """The catalog entry of one model: its artifacts, or the reason they were refused."""
    if model_dir is None:
        return ModelEntry(spec, None)
    try:
        found = artifacts.read_model_dir(model_dir)
        robustness = read_robustness(model_dir, split="val")
    except ModelRefused as error:
        return ModelEntry(spec, model_dir, refused_reason=str(error))
    if found.config.spec.name != spec.name:
        reason = f"The folder models/{model_dir.name} holds the model {found.config.spec.name!r}, not {spec.name!r}."
        return ModelEntry(spec, model_dir, refused_reason=reason)
    measured = {}
    if robustness is not None:
        measured = {
            "validation_framing_flip_rate": framing_10_max_flip_rate(robustness),
            "validation_targets_met": robustness.summary.targets_met,
        }
    return ModelEntry(spec, model_dir, found.config, found.metrics, found.history, **measured)


RECOMMENDATION_HELP = (
    "The recommended model is chosen on the validation images only: the one meeting the most robustness targets "
    "(its reading changes least when the same X-ray is framed or exposed differently), then the best ranking. "
    "The Compare models page shows every model's figures."
)


def best_model(entries: list[ModelEntry]) -> ModelEntry | None:
    """The recommended model, chosen on the validation split only (never on test).

    First the robustness targets the default model must meet (issue 8: framing +-10 % and gamma 0.7 to 1.4
    each flip at most 3 % of readings and move specificity by at most 0.03, ROC AUC >= 0.99, ECE under
    shift <= 0.05), counted on the validation images (``ModelEntry.validation_targets_met``; a model not
    measured there ranks last): a model that meets more of them is preferred, because a reading that flips
    when the same chest is framed or exposed differently cannot be trusted on another hospital's X-rays,
    however well it ranks the training pool's. Among the models meeting the most, those whose validation
    ROC AUC is within :data:`VALIDATION_AUC_MARGIN` of the highest (closer is noise); of these, the one
    whose readings flip least under framing +-10 % (``ModelEntry.validation_framing_flip_rate``); then the
    higher validation ROC AUC.
    """
    shipped = [entry for entry in entries if entry.shipped]
    if not shipped:
        return None
    most = max(entry.validation_targets_met for entry in shipped)
    leaders = [entry for entry in shipped if entry.validation_targets_met == most]
    top = max(_validation_auc(entry) for entry in leaders)
    tied = [entry for entry in leaders if _validation_auc(entry) >= top - VALIDATION_AUC_MARGIN]
    return min(tied, key=lambda entry: (entry.validation_framing_flip_rate, -_validation_auc(entry)))


def recommendation_text(best: ModelEntry) -> str:
    """Why the app recommends ``best`` (the result of :func:`best_model`), in one Markdown sentence."""
    if best.validation_targets_met < 0:
        return (
            f"The app recommends `{best.name}` (marked in the model lists): no model's robustness was measured on "
            "the validation images, so it has the best validation ROC AUC (`robustness --split val` measures it)."
        )
    return (
        f"The app recommends `{best.name}` (marked in the model lists): on the validation images it meets "
        f"{best.validation_targets_met} of the six robustness targets and no model meets more; of those meeting as "
        f"many, it ranks within {VALIDATION_AUC_MARGIN} of the best validation ROC AUC and flips least under framing "
        "±10 %. The test split plays no part in this choice."
    )


def _validation_auc(entry: ModelEntry) -> float:
    return entry.metrics.validation.roc_auc or 0.0
