"""Streamlit caching around pneumo_core, shared by the pages (UI only, no logic)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TypeVar

import streamlit as st

from pneumo_core.artifacts import LoadedModel, load_model_dir
from pneumo_core.catalog import ModelEntry, catalog, models_dir
from pneumo_core.gradcam import Explainer

T = TypeVar("T")


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


def session_memo(slot: str, key: Hashable, compute: Callable[[], T]) -> T:
    """The value last computed for ``key`` in this browser session, recomputed only when ``key`` changes.

    Widget changes rerun the page; this keeps them from redoing the decode, the prediction or the
    heatmap. One value per slot is kept, in memory only.
    """
    stored = st.session_state.get(slot)
    if stored is None or stored[0] != key:
        stored = (key, compute())
        st.session_state[slot] = stored
    return stored[1]
