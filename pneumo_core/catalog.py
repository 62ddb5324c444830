"""What the app knows about the models: which are shipped, which is best, their metrics.

Everything is read from ``models/<name>/`` artifacts; nothing is typed by hand.
``PNEUMO_MODELS_DIR`` overrides the models folder (the tests use it).

Usage:
    entries = catalog()
    default = best_model(entries)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pneumo_core import artifacts
from pneumo_core.registry import REGISTRY, ModelSpec


@dataclass(frozen=True)
class ModelEntry:
    """One registered model and, when shipped, its artifacts."""

    spec: ModelSpec
    directory: Path | None
    config: dict | None
    metrics: dict | None
    history: list | None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def shipped(self) -> bool:
        return self.directory is not None

    @property
    def unavailable_reason(self) -> str:
        """Why the model cannot be selected (empty when shipped)."""
        if self.shipped:
            return ""
        return self.spec.unavailable_reason or (
            f"Not trained yet: run `python -m pneumo_core train --model {self.name}`."
        )


def models_dir() -> Path:
    """The models folder: ``$PNEUMO_MODELS_DIR`` or the repository's ``models/``."""
    return Path(os.environ.get("PNEUMO_MODELS_DIR", artifacts.MODELS_DIR))


def catalog(directory: Path | None = None) -> list[ModelEntry]:
    """Every registered model, in registry order, with the artifacts of shipped ones."""
    directory = directory or models_dir()
    shipped = artifacts.shipped_model_dirs(directory)
    entries = []
    for name, spec in REGISTRY.items():
        model_dir = shipped.get(name)
        if model_dir is None:
            entries.append(ModelEntry(spec, None, None, None, None))
            continue
        entries.append(
            ModelEntry(
                spec=spec,
                directory=model_dir,
                config=artifacts.read_json(model_dir / artifacts.CONFIG_FILE),
                metrics=artifacts.read_json(model_dir / artifacts.METRICS_FILE),
                history=artifacts.read_json(model_dir / artifacts.HISTORY_FILE),
            )
        )
    return entries


def best_model(entries: list[ModelEntry]) -> ModelEntry | None:
    """The shipped model with the highest *validation* ROC AUC (never chosen on test)."""
    shipped = [entry for entry in entries if entry.shipped]
    if not shipped:
        return None
    return max(shipped, key=lambda entry: entry.metrics["validation"]["roc_auc"] or 0.0)
