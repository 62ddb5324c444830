"""Streamlit caching and layout around pneumo_core, shared by the pages (UI only, no logic)."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import streamlit as st

from pneumo_core.catalog import RECOMMENDATION_HELP, ModelEntry, catalog, models_dir
from pneumo_core.serving import RESULTS, URGENT, WORK_QUEUE

if TYPE_CHECKING:  # TensorFlow is imported only by the pages that run a model.
    from pneumo_core.imaging import XRay
    from pneumo_core.reading import Reader, Reading

T = TypeVar("T")
_LOGGER = logging.getLogger(__name__)


APP_ENTRY_KEY = "_through_app"  # Session state: this session has passed app.py's sign-in and navigation.


def mark_app_entry() -> None:
    """Record that this session reached its page through ``app.py`` (call it right before ``navigation.run()``)."""
    st.session_state[APP_ENTRY_KEY] = True


def require_app_entry() -> None:
    """Rerun through ``app.py`` when Streamlit ran this page file directly; every page calls it first.

    A folder named ``pages/`` next to ``app.py`` puts a fresh server in Streamlit's old multipage mode
    until ``app.py`` has once called ``st.navigation``: until then a visitor who opens a page's own
    address (``/compare``) gets that file run on its own, without ``app.py``'s sign-in, and a sidebar
    listing every file of ``pages/``. This switches the server to ``st.navigation`` and reruns, so the
    page is reached through ``app.py``. A page run as the main script (AppTest) is left alone, and so is
    a session that has been through ``app.py`` (AppTest runs later reruns of a page directly).
    """
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    context = get_script_run_ctx()
    if context is None or Path(context.main_script_path).name != "app.py" or st.session_state.get(APP_ENTRY_KEY):
        return
    PagesManager.uses_pages_directory = False
    st.rerun()


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


def keep_keras_state_across_reruns() -> None:
    """Stop Streamlit from resetting Keras after every script run.

    After each run Streamlit calls ``keras.backend.clear_session()`` when Keras is imported: a full
    garbage collection of TensorFlow's heap and a reset of its kernel caches, on the script thread,
    while other sessions' models run. Under load (10 sessions on 2 cores) that was the server's
    largest cost after the models themselves. The models here are built once and shared, so there is
    no per-run Keras state to clear. Matplotlib's figures are still closed, as Streamlit does.
    Process-wide and idempotent. It replaces a private Streamlit function (1.67);
    ``tests/test_load.py`` fails when Streamlit changes it.
    """
    from streamlit.runtime.scriptrunner import script_runner

    clean = script_runner._clean_problem_modules
    if getattr(clean, "keeps_keras_state", False):
        return

    def clean_without_resetting_keras() -> None:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close("all")

    clean_without_resetting_keras.keeps_keras_state = True
    clean_without_resetting_keras.__wrapped__ = clean
    script_runner._clean_problem_modules = clean_without_resetting_keras


@st.cache_resource(show_spinner=False)
def _catalog(directory: str) -> list[ModelEntry]:
    return catalog(Path(directory))


def get_catalog() -> list[ModelEntry]:
    """All registered models and the artifacts of the shipped ones (read once per process)."""
    return _catalog(str(models_dir()))


_LOADED: set[str] = set()  # Model folders whose reader is in the shared cache.


@st.cache_resource(show_spinner=False)
def _load_reader(directory: str) -> Reader:
    from pneumo_core.artifacts import load_model_dir
    from pneumo_core.reading import Reader

    reader = Reader(load_model_dir(Path(directory)))
    _LOADED.add(directory)
    return reader


def get_reader(directory: str) -> Reader:
    """A trained model, loaded and checksum-verified once per process, with its heatmaps; use read-only.

    A page that has to wait for the model to load (or for the warm-up loading it) says so.
    """
    if directory in _LOADED:
        return _load_reader(directory)
    with st.spinner("Loading the model (once per server)…"):
        return _load_reader(directory)


def _warm_up() -> None:
    """Load every shipped model into the shared cache, the recommended one first, and run each once on a sample.

    Each model reads the sample and computes its default heatmap through the work queue (so a user who
    arrives meanwhile waits their turn rather than sharing the cores with it): TensorFlow is imported, the
    models deserialised and their first calls traced before anyone needs them. A model that fails here is
    logged and left for the page, which shows the reason.
    """
    from pneumo_core.catalog import best_model
    from pneumo_core.diagnosis import list_samples
    from pneumo_core.gradcam import methods_for
    from pneumo_core.imaging import read_xray_file

    entries = [entry for entry in get_catalog() if entry.shipped]
    samples = list_samples()
    if not entries or not samples:
        return
    best = best_model(entries)
    xray = read_xray_file(samples[0].path)
    for entry in sorted(entries, key=lambda candidate: candidate is not best):
        try:
            reader = _load_reader(str(entry.directory))  # No page to show a spinner on.
            WORK_QUEUE.run(lambda r=reader: (r.read(xray), r.heatmap(xray, methods_for(r.loaded)[0], 1)))
        except Exception as error:  # The page shows a refused model's reason; the warm-up must not stop.
            _LOGGER.warning("Warm-up of the %s model failed: %s", entry.name, error)


@st.cache_resource(show_spinner=False)
def start_warm_up() -> threading.Thread:
    """Warm the shipped models in the background, once per server, once the first page has been drawn.

    The page renders meanwhile (it needs no TensorFlow until an image is read), so no reading pays for
    importing TensorFlow, loading a model or tracing its first call.
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
    """A heavy result (heatmap, comparison) shared by every session, computed through the work queue.

    While other sessions' work runs first, the page says how many requests are ahead instead of
    showing a frozen spinner. A request for work already queued by another session waits for it.
    Results live in memory only, keyed by the image's hash.
    """
    cached = RESULTS.get(key)
    if cached is not None:
        return cached
    value = _queued(doing, lambda tell_position: WORK_QUEUE.run(compute, on_wait=tell_position, key=key))
    RESULTS.put(key, value)
    return value


def shared_reading(reader: Reader, xray: XRay, reveal_refused: bool = False) -> Reading:
    """The model's reading of ``xray``, shared by every session like :func:`shared_result`.

    Readings go before waiting heatmaps, and readings by the same model that wait together run as one
    batched forward pass (``Reader.read_many``): ten sessions uploading at once get their readings
    after about one batch, not after each other's heatmaps.
    """
    kind = "revealed" if reveal_refused else "reading"

    def key(image: XRay) -> tuple:
        return (kind, image.digest, reader.loaded.spec.name)

    def read_many(images: list[XRay]) -> list[Reading]:
        readings = reader.read_many(images, reveal_refused=reveal_refused)
        for image, reading in zip(images, readings, strict=True):
            RESULTS.put(key(image), reading)  # Also for callers whose page reran meanwhile.
        return readings

    cached = RESULTS.get(key(xray))
    if cached is not None:
        return cached
    return _queued(
        "Reading the image…",
        lambda tell_position: WORK_QUEUE.run_batched(
            (kind, id(reader)), xray, read_many, on_wait=tell_position, key=key(xray), priority=URGENT
        ),
    )


def _queued(doing: str, submit: Callable[[Callable[[int], None]], T]) -> T:
    """Run ``submit(tell_position)`` under a spinner, showing the queue position while it waits."""
    status = st.empty()

    def tell_position(ahead: int) -> None:
        status.info(f":material/hourglass_top: Waiting for the model: {ahead} request(s) ahead of yours.")

    with st.spinner(doing):
        value = submit(tell_position)
    status.empty()
    return value


def side_by_side(items: Sequence[T], per_row: int = 2) -> Iterator[tuple[object, T]]:
    """Each item with a column to draw it in, ``per_row`` columns to a row (so four figures stay legible)."""
    for start in range(0, len(items), per_row):
        yield from zip(st.columns(per_row), items[start : start + per_row], strict=False)


RECOMMENDED_MARK = "★"


def model_picker(shipped: dict[str, ModelEntry], best: ModelEntry, key: str) -> ModelEntry:
    """The sidebar's model selectbox, the recommended model preselected and marked; the chosen model's description."""
    with st.sidebar:
        st.header("Model")
        choice = st.selectbox(
            "Model to run",
            list(shipped),
            index=list(shipped).index(best.name),
            format_func=lambda name: f"{name} {RECOMMENDED_MARK}" if name == best.name else name,
            key=key,
            help=RECOMMENDATION_HELP,
        )
        # The mark, not the word, sits in the option: "xception_cnn_ensemble (recommended)" is cut off in the sidebar.
        if choice == best.name:
            st.caption(f"{RECOMMENDED_MARK} Recommended: it meets the most robustness targets on validation images.")
        else:
            st.caption(f"{RECOMMENDED_MARK} marks the recommended model, {best.name}.")
        st.caption(shipped[choice].spec.description)
    return shipped[choice]
