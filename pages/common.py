"""Streamlit caching around pneumo_core, shared by the pages (UI only, no logic)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import streamlit as st

from pneumo_core.catalog import ModelEntry, catalog, models_dir
from pneumo_core.serving import RESULTS, WORK_QUEUE

if TYPE_CHECKING:  # TensorFlow is imported only by the pages that run a model.
    from pneumo_core.reading import Reader

T = TypeVar("T")


def keep_upload_replies_across_reruns() -> None:
    """Stop Streamlit from dropping the upload URLs it owes a browser when a script run starts.

    Dropping a file in the uploader makes the browser ask for upload URLs (``file_urls_request``) and
    wait, without a time limit, for the reply before it sends the file. When a script run starts (a
    rerun from another widget, such as switching model), Streamlit clears the session's unsent
    messages except lifecycle ones, so a reply queued but not yet sent is lost: the file is never
    sent, no rerun follows and the uploader shows nothing, silently. The gap between the reply and
    the next send is milliseconds on an idle server and seconds under load (10 sessions on 2 cores:
    7 of 10 uploads lost this way, proven in the load test's server event log). This keeps those
    replies, and only them, through the clear. Process-wide and idempotent. It wraps a private Streamlit
    class (1.67); ``tests/test_load.py`` fails when Streamlit changes it or fixes the defect upstream.
    """
    from streamlit.runtime.forward_msg_queue import ForwardMsgQueue

    clear = ForwardMsgQueue.clear
    if getattr(clear, "keeps_upload_replies", False):
        return

    def clear_keeping_upload_replies(
        self: ForwardMsgQueue, retain_lifecycle_msgs: bool = False, fragment_ids_this_run: list[str] | None = None
    ) -> None:
        replies = [msg for msg in self._queue if msg.WhichOneof("type") == "file_urls_response"]
        clear(self, retain_lifecycle_msgs=retain_lifecycle_msgs, fragment_ids_this_run=fragment_ids_this_run)
        if retain_lifecycle_msgs:  # A script run starts; a plain clear() is the flush that sends them.
            self._queue.extend([msg for msg in replies if msg not in self._queue])

    clear_keeping_upload_replies.keeps_upload_replies = True
    clear_keeping_upload_replies.__wrapped__ = clear
    ForwardMsgQueue.clear = clear_keeping_upload_replies


@st.cache_resource(show_spinner=False)
def _catalog(directory: str) -> list[ModelEntry]:
    return catalog(Path(directory))


def get_catalog() -> list[ModelEntry]:
    """All registered models and the artifacts of the shipped ones (read once per process)."""
    return _catalog(str(models_dir()))


@st.cache_resource(show_spinner="Loading the model (once per server)…")
def get_reader(directory: str) -> Reader:
    """A trained model, loaded and checksum-verified once per process, with its heatmaps; use read-only."""
    from pneumo_core.artifacts import load_model_dir
    from pneumo_core.reading import Reader

    return Reader(load_model_dir(Path(directory)))


def _warm_up() -> None:
    """Load the recommended model into the shared cache and run it once on a sample (first call traced)."""
    from pneumo_core.catalog import best_model
    from pneumo_core.diagnosis import list_samples
    from pneumo_core.imaging import read_xray_file

    best, samples = best_model(get_catalog()), list_samples()
    if best is not None and samples:
        get_reader(str(best.directory)).read(read_xray_file(samples[0].path))


@st.cache_resource(show_spinner=False)
def start_warm_up() -> threading.Thread:
    """Warm the recommended model in the background, once per server, as soon as the first page is shown.

    The page renders meanwhile (it needs no TensorFlow until an image is read), so the first reading does
    not pay for importing TensorFlow, loading the model and tracing its first call.
    """
    thread = threading.Thread(target=_warm_up, name="warm-up", daemon=True)
    thread.start()
    return thread


def session_memo(slot: str, key: Hashable, compute: Callable[[], T]) -> T:
    """The value last computed for ``key`` in this browser session, recomputed only when ``key`` changes.

    Widget changes rerun the page; this keeps them from reading the image file again. One value per
    slot is kept, in memory only.
    """
    stored = st.session_state.get(slot)
    if stored is None or stored[0] != key:
        stored = (key, compute())
        st.session_state[slot] = stored
    return stored[1]


def shared_result(key: Hashable, compute: Callable[[], T], doing: str) -> T:
    """A heavy result (reading, heatmap) shared by every session, computed through the work queue.

    While other sessions' work runs first, the page says how many requests are ahead instead of
    showing a frozen spinner. Results live in memory only, keyed by the image's hash.
    """
    cached = RESULTS.get(key)
    if cached is not None:
        return cached
    status = st.empty()

    def tell_position(ahead: int) -> None:
        status.info(f":material/hourglass_top: Waiting for the model: {ahead} request(s) ahead of yours.")

    with st.spinner(doing):
        value = WORK_QUEUE.run(compute, on_wait=tell_position)
    status.empty()
    RESULTS.put(key, value)
    return value
