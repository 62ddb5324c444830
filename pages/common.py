"""Streamlit caching around pneumo_core, shared by the pages (UI only, no logic)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pneumo_core.artifacts import LoadedModel, load_model_dir
from pneumo_core.catalog import ModelEntry, catalog, models_dir
from pneumo_core.gradcam import Explainer


@st.cache_resource(show_spinner=False)
def _catalog(directory: str) -> list[ModelEntry]:
    return catalog(Path(directory))


def get_catalog() -> list[ModelEntry]:
    """All registered models and the artifacts of the shipped ones (read once per process)."""
    return _catalog(str(models_dir()))


@st.cache_resource(show_spinner="Loading the model (once per server)…")
def load_model(directory: str) -> LoadedModel:
    """A trained model, loaded and checksum-verified once per process; use read-only."""
    return load_model_dir(Path(directory))


@st.cache_resource(show_spinner="Preparing the heatmap methods (once per model)…")
def get_explainer(directory: str) -> Explainer:
    """The Grad-CAM family for one model, built once per process."""
    return Explainer(load_model(directory))
