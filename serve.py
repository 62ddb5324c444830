"""Server entry point: the app of ``app.py`` with the default model loaded and warmed up at server start.

``make run`` starts this file. Loading TensorFlow and the recommended model, and tracing its first
call, happen in a background thread as the server starts, so the first doctor's first click does
not pay for them; the pages render meanwhile (they need no TensorFlow until an image is read).

Usage:
    streamlit run serve.py [--server.address 0.0.0.0]
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager

import streamlit as st


def warm_up() -> None:
    """Load the recommended model into the pages' shared cache and run it once on a sample."""
    from pages.common import get_catalog, get_reader
    from pneumo_core.catalog import best_model
    from pneumo_core.diagnosis import list_samples
    from pneumo_core.imaging import read_xray_file

    best = best_model(get_catalog())
    samples = list_samples()
    if best is None or not samples:
        return
    reader = get_reader(str(best.directory))
    reader.read(read_xray_file(samples[0].path))


@asynccontextmanager
async def lifespan(_app):
    """Start the warm-up without delaying the server's start."""
    threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
    yield


app = st.App("app.py", lifespan=lifespan)
