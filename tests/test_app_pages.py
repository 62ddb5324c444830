"""Headless tests of the Streamlit pages through ``streamlit.testing.v1.AppTest``.

The app runs against ``trained_models_dir`` (tiny one-epoch ``cnn`` and ``mlp`` models from
conftest) through ``PNEUMO_MODELS_DIR``, so no shipped model is needed. Uploads go through
AppTest's own file uploader (``FileUploader.set_value``), which registers the bytes in the
in-memory uploaded-file manager exactly as the browser's upload would.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.runtime.state.common import user_key_from_element_id
from streamlit.testing.v1 import AppTest

from pneumo_core.diagnosis import list_samples

APP = Path(__file__).resolve().parent.parent / "app.py"
TIMEOUT_S = 60
SAMPLE = next(s for s in list_samples() if s.label == "PNEUMONIA")
RESULT_LABELS = ["Model's reading", "Probability of pneumonia", "Operating threshold"]


def encode(image: Image.Image, fmt: str) -> bytes:
    """Save a Pillow image to bytes in ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def good_upload() -> tuple[str, bytes, str]:
    """A real sample X-ray as an upload ``(name, bytes, mime type)``."""
    return (SAMPLE.path.name, SAMPLE.path.read_bytes(), "image/jpeg")


@pytest.fixture
def app(trained_models_dir, monkeypatch) -> AppTest:
    """The app after its first run, on the Diagnose page, with the tiny test models."""
    monkeypatch.setenv("PNEUMO_MODELS_DIR", str(trained_models_dir))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    at.run()
    assert not at.exception, at.exception
    return at


def upload(at: AppTest, name: str, data: bytes, mime: str) -> AppTest:
    """Upload one file through the Diagnose page's uploader and rerun."""
    at.file_uploader(key="upload").set_value((name, data, mime))
    return at.run()


def result_shown(at: AppTest) -> bool:
    """Whether the page shows the three result metrics and the images (original, overlay and its colour scale)."""
    return [m.label for m in at.metric] == RESULT_LABELS and len(at.get("image")) == 3


# --- Every page renders ---------------------------------------------------------------------


def test_diagnose_page_renders(app):
    """The default page is Diagnose: title, uploader and one button per sample, no exception."""
    assert app.title[0].value == "Pneumonia check on a chest X-ray"
    assert len(app.file_uploader) == 1
    sample_keys = {button.key for button in app.button}
    assert {f"sample_{sample.key}" for sample in list_samples()} <= sample_keys
    assert not app.error


def test_compare_page_renders(app):
    """The Compare models page runs without exception and shows its metrics table."""
    app.switch_page("pages/compare.py").run()
    assert not app.exception, app.exception
    assert app.title[0].value == "Compare models"
    assert not app.error
    assert sorted(app.dataframe[0].value.index) == ["cnn", "mlp"]
    assert any(text.value.startswith("The app recommends `") for text in app.markdown)


def test_cards_page_renders(app):
    """The Model cards page runs without exception: one expander per registered model."""
    app.switch_page("pages/cards.py").run()
    assert not app.exception, app.exception
    assert app.title[0].value == "Model cards"
    titles = [expander.label for expander in app.expander]
    assert any(title.startswith("cnn:") for title in titles)
    assert any(title.startswith("mlp:") for title in titles)
    assert any(title.startswith("densenet201:") for title in titles)


def test_compare_page_draws_one_confusion_matrix_per_model(app):
    """The Compare page draws a plotly confusion matrix for each shipped model (cnn and mlp)."""
    app.switch_page("pages/compare.py").run()
    keys = [user_key_from_element_id(chart.proto.id) for chart in app.get("plotly_chart")]
    assert sorted(key for key in keys if key.startswith("confusion_")) == ["confusion_cnn", "confusion_mlp"]
    assert "roc" in keys


# --- Diagnose page ------------------------------------------------------------------------------


def test_diagnose_starts_with_an_info_message(app):
    """Before any input, Diagnose asks for an X-ray and shows no result."""
    assert [info.value for info in app.info] == ["Upload an X-ray or pick a sample to start."]
    assert not app.metric
    assert not app.get("image")


def test_sample_button_shows_metrics_and_images(app):
    """Clicking a sample button shows the reading, probability and threshold metrics and two images."""
    app.button(key=f"sample_{SAMPLE.key}").click().run()
    assert not app.exception, app.exception
    assert not app.error
    assert result_shown(app)
    reading, probability, threshold = (metric.value for metric in app.metric)
    assert reading in {"NORMAL", "PNEUMONIA"}
    assert probability.endswith("%")
    assert threshold.endswith("%")
    assert not app.info


def test_heatmap_settings_rerun_without_recomputing_the_prediction(app, monkeypatch):
    """Moving the opacity slider or changing the colormap keeps the result and does not predict again."""
    app.button(key=f"sample_{SAMPLE.key}").click().run()
    before = [metric.value for metric in app.metric]
    from pneumo_core.reading import Reader

    def forbidden(*_args, **_kwargs):
        raise AssertionError("the prediction was recomputed")

    monkeypatch.setattr(Reader, "read_many", forbidden)
    app.slider(key="opacity").set_value(0.8).run()
    app.selectbox(key="colormap").set_value("viridis").run()
    assert not app.exception, app.exception
    assert [metric.value for metric in app.metric] == before
    assert result_shown(app)


def test_upload_shows_metrics_and_images(app):
    """Uploading a JPEG through the file uploader shows the result and both images."""
    upload(app, *good_upload())
    assert not app.exception, app.exception
    assert not app.error
    assert result_shown(app)
    captions = [image.proto.imgs[0].caption for image in app.get("image")]
    assert captions[0] == "Original"


def test_run_every_model_shows_a_table(app):
    """ "Run every shipped model" shows a table with one row per shipped model."""
    app.button(key=f"sample_{SAMPLE.key}").click().run()
    app.button(key="run_all").click().run()
    assert not app.exception, app.exception
    assert len(app.dataframe) == 1
    table = app.dataframe[0].value
    assert sorted(table["model"]) == ["cnn", "mlp"]
    assert set(table["reading"]) <= {"NORMAL", "PNEUMONIA", "refused"}
    assert all(value.endswith("%") for value in table["P(pneumonia)"] if value)
    assert len(app.success) + len(app.warning) == 1


def test_only_usable_models_are_offered(app):
    """Diagnose offers the shipped models only; densenet201 (not shipped) is explained on the model cards."""
    options = app.selectbox(key="model").options
    assert sorted(option.split(" ")[0] for option in options) == ["cnn", "mlp"]
    assert not any("densenet201" in option for option in options)


def test_the_recommended_model_is_marked_and_named_in_the_sidebar(app):
    """The recommended model carries a short mark (a long name plus "(recommended)" is cut off in the sidebar)."""
    from pneumo_core.catalog import best_model, catalog

    best = best_model([entry for entry in catalog() if entry.shipped]).name
    selectbox = app.selectbox(key="model")
    assert selectbox.value == best and f"{best} ★" in selectbox.options
    assert any(caption.value.startswith("★ Recommended:") for caption in app.sidebar.caption)
    other = next(option for option in selectbox.options if "★" not in option)
    selectbox.set_value(other).run()
    assert any(caption.value == f"★ marks the recommended model, {best}." for caption in app.sidebar.caption)


# --- Bad input ----------------------------------------------------------------------------------


def small_image() -> bytes:
    """A 40x40 PNG, below the 64 px minimum side."""
    return encode(Image.new("L", (40, 40), 128), "PNG")


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("notes.png", b"this is a text file, not an X-ray\n" * 20, "not an image we can read"),
        ("empty.png", b"", "The file is empty"),
        ("truncated.jpeg", SAMPLE.path.read_bytes()[:4000], "corrupt or truncated"),
        ("small.png", small_image(), "it needs at least 64 px on each side"),
    ],
    ids=["not-an-image", "empty", "truncated-jpeg", "40x40"],
)
def test_bad_upload_shows_exactly_one_error(app, name, data, message):
    """A file that cannot be used gives exactly one st.error naming the problem, and no exception."""
    upload(app, name, data, "image/png")
    assert not app.exception, app.exception
    errors = [error.value for error in app.error]
    assert len(errors) == 1, errors
    assert errors[0].startswith("Cannot use this file.")
    assert message in errors[0]
    assert not app.metric


def sixteen_bit_png() -> bytes:
    """A 128x100 16-bit grayscale PNG using the full 0-65535 range."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 65535, (128, 100)).astype(np.uint16))
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    return data


def cmyk_jpeg() -> bytes:
    """A 120x100 CMYK JPEG of a noisy gray image (a flat one is refused as blank)."""
    gray = np.random.default_rng(1).integers(30, 220, (100, 120)).astype(np.uint8)
    return encode(Image.fromarray(gray).convert("CMYK"), "JPEG")


@pytest.mark.parametrize(
    ("name", "data", "mime"),
    [("deep.png", sixteen_bit_png(), "image/png"), ("print.jpeg", cmyk_jpeg(), "image/jpeg")],
    ids=["16-bit-png", "cmyk-jpeg"],
)
def test_unusual_but_valid_images_are_accepted(app, name, data, mime):
    """16-bit PNGs and CMYK JPEGs are diagnosed, not refused, with one note on how they were converted."""
    upload(app, name, data, mime)
    assert not app.exception, app.exception
    assert not app.error
    assert result_shown(app)
    assert [info.value for info in app.info if "converted" in info.value or "stretched" in info.value]


def test_good_upload_works_after_a_bad_one(app):
    """After a refused file, uploading a good X-ray clears the error and shows the result."""
    upload(app, "notes.png", b"not an image", "image/png")
    assert len(app.error) == 1
    upload(app, *good_upload())
    assert not app.exception, app.exception
    assert not app.error
    assert result_shown(app)


def test_sample_works_after_a_bad_upload(app):
    """After a refused upload, clicking a sample shows its result instead of the error."""
    upload(app, "notes.png", b"not an image", "image/png")
    app.button(key=f"sample_{SAMPLE.key}").click().run()
    assert not app.exception, app.exception
    assert not app.error
    assert result_shown(app)
