"""Real-browser tests of how a reading is told: refusal and "show anyway", and a gauge that agrees with the label.

The refusal test runs the shipped models (their gates are fitted on the real training X-rays); the
threshold test runs the tiny conftest cnn, with two synthetic images found by bisection whose scores
lie just below and just above its operating threshold.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from browser_support import (
    REPO_ROOT,
    RESULT_TIMEOUT_MS,
    app_page,
    choose_model,
    save_screenshot,
    streamlit_server,
    upload,
    wait_until_idle,
)
from PIL import Image

from pneumo_core.artifacts import load_model_dir
from pneumo_core.imaging import read_xray
from pneumo_core.reading import Reader

pytestmark = pytest.mark.browser

GAUGE_READY_JS = "() => { const plot = document.querySelector('.js-plotly-plot'); return !!(plot && plot.data); }"
GAUGE_JS = (
    "() => { const gauge = document.querySelector('.js-plotly-plot').data[0];"
    " return [gauge.value, gauge.gauge.threshold.value]; }"
)


@pytest.fixture(scope="module")
def tiny_server(trained_models_dir):
    """The app on the tiny conftest models."""
    with streamlit_server(trained_models_dir, "browser_gauge_server.log") as running:
        yield running


def png_bytes(gray: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    return buffer.getvalue()


def photo(path: Path) -> Path:
    """A colour photo of an astronaut (scikit-image's sample), not an X-ray."""
    from skimage import data

    Image.fromarray(data.astronaut()).save(path)
    return path


def test_a_photo_is_refused_then_revealed_under_a_warning(browser, tmp_path):
    """A photo gets a refusal and no reading; the control reveals the reading under a warning that stays."""
    with (
        streamlit_server(REPO_ROOT / "models", "browser_reading_server.log") as server,
        app_page(browser, server.url, "diagnose_refused_photo") as page,
    ):
        upload(page, photo(tmp_path / "holiday.png"))
        page.get_by_text("The model did not read this image").wait_for(timeout=RESULT_TIMEOUT_MS)
        wait_until_idle(page)
        assert page.get_by_test_id("stMetric").count() == 0
        assert page.get_by_test_id("stImage").count() == 0
        page.get_by_text("Show the model's reading anyway").click()
        page.get_by_test_id("stMetric").first.wait_for(timeout=RESULT_TIMEOUT_MS)
        wait_until_idle(page)
        assert page.get_by_text("Shown although the image was refused").count() == 1
        page.get_by_role("slider").first.press("ArrowRight")  # Another rerun.
        wait_until_idle(page)
        assert page.get_by_text("Shown although the image was refused").count() == 1
        assert page.get_by_test_id("stException").count() == 0
        save_screenshot(page, "diagnose_refused_photo_revealed")


def image_with_score(reader: Reader, target: float, above: bool) -> np.ndarray:
    """A synthetic X-ray whose score is just above (or below) ``target``, by bisection on brightness."""
    rng = np.random.default_rng(7)
    texture = rng.normal(0.0, 12.0, (88, 72)) + np.linspace(-20.0, 20.0, 88)[:, None]
    low, high = 40.0, 200.0

    def make(level: float) -> np.ndarray:
        return np.clip(level + texture, 0, 255).astype(np.uint8)

    def score(level: float) -> float:
        return reader.read(read_xray(png_bytes(make(level)))).probability

    if not score(low) < target <= score(high):
        pytest.fail(f"the tiny model does not span the threshold {target} between brightness {low} and {high}")
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if score(middle) < target else (low, middle)
        if high - low < 1e-3:
            break
    return make(high if above else low)


@pytest.mark.parametrize("above", [False, True], ids=["just-below", "just-above"])
def test_label_and_gauge_agree_next_to_the_threshold(browser, tiny_server, trained_models_dir, tmp_path, above):
    """Just below the threshold the text says NORMAL and the needle is left of the red line; just above, PNEUMONIA."""
    reader = Reader(load_model_dir(trained_models_dir / "cnn"))
    gray = image_with_score(reader, reader.loaded.threshold, above)
    path = tmp_path / "edge.png"
    path.write_bytes(png_bytes(gray))
    expected = reader.read(read_xray(path.read_bytes()))
    with app_page(browser, tiny_server.url, f"diagnose_gauge_{'above' if above else 'below'}") as page:
        choose_model(page, "cnn")
        wait_until_idle(page)
        upload(page, path)
        page.get_by_test_id("stMetric").first.wait_for(timeout=RESULT_TIMEOUT_MS)
        wait_until_idle(page)
        page.wait_for_function(GAUGE_READY_JS, timeout=RESULT_TIMEOUT_MS)  # Plotly draws after the run ends.
        value, threshold = page.evaluate(GAUGE_JS)
        text = page.get_by_test_id("stMarkdown").filter(has_text="operating threshold").inner_text()
    assert (value >= threshold) is above
    assert expected.label == ("PNEUMONIA" if above else "NORMAL")
    assert f"hence the label {expected.label}" in text
    assert ("at or above" in text) is above
