"""Real-browser tests: the app served by ``streamlit run`` and driven through Chromium.

The server runs the tiny conftest models (``PNEUMO_MODELS_DIR=trained_models_dir``) for speed.
Its output is in ``tests/artifacts/browser_server.log``; every test leaves a full-page
screenshot in ``tests/artifacts/screenshots/``.
"""

from __future__ import annotations

import pytest
from browser_support import (
    RESULT_TIMEOUT_MS,
    SAMPLES_DIR,
    app_page,
    choose_model,
    save_screenshot,
    streamlit_server,
    upload,
    wait_for_result,
    wait_until_idle,
)

pytestmark = pytest.mark.browser

SAMPLE = SAMPLES_DIR / "person1371_virus_2361.jpeg"
NOT_AN_IMAGE = "This file is not an image we can read"


@pytest.fixture(scope="module")
def server(browser, trained_models_dir):
    """The app served on a free port with the tiny test models."""
    with streamlit_server(trained_models_dir, "browser_server.log") as running:
        yield running


def assert_no_exception(page) -> None:
    """No Python traceback (st.exception) is shown anywhere on the page."""
    assert page.get_by_test_id("stException").count() == 0


def test_upload_shows_prediction_and_heatmap(browser, server):
    """Uploading a sample X-ray with the cnn model shows the reading, its probability and a Grad-CAM overlay."""
    with app_page(browser, server.url, "diagnose_upload_cnn") as page:
        choose_model(page, "cnn")
        wait_until_idle(page)
        upload(page, SAMPLE)
        wait_for_result(page)

        metrics = page.get_by_test_id("stMetric")
        reading = metrics.filter(has_text="Model's reading").get_by_test_id("stMetricValue").inner_text()
        assert reading.strip() in {"NORMAL", "PNEUMONIA"}
        probability = metrics.filter(has_text="Probability of pneumonia").get_by_test_id("stMetricValue")
        assert probability.inner_text().strip().endswith("%")

        captions = page.get_by_test_id("stImageCaption").all_inner_texts()
        assert captions[0] == "Original"
        assert any("Grad-CAM" in caption for caption in captions), captions
        assert page.get_by_test_id("stImage").locator("img").count() >= 2
        assert_no_exception(page)


def test_compare_page_draws_confusion_matrices(browser, server):
    """The "Compare models" page, opened from the sidebar, draws plotly confusion matrices."""
    with app_page(browser, server.url, "compare_models") as page:
        page.get_by_test_id("stSidebarNav").get_by_role("link", name="Compare models").click()
        page.get_by_role("heading", name="Compare models").wait_for()
        page.locator(".js-plotly-plot").first.wait_for(timeout=RESULT_TIMEOUT_MS)
        page.get_by_text("% of row").first.wait_for()
        wait_until_idle(page)
        # One confusion matrix per shipped model (cnn, mlp), the ROC curves, one history per model.
        assert page.get_by_test_id("stPlotlyChart").count() == 5
        # Four cells (counts and row percentages) in each of the two confusion matrices.
        assert page.get_by_text("% of row").count() == 8
        assert_no_exception(page)


def test_bad_upload_shows_clear_error_then_good_upload_works(browser, server, tmp_path):
    """A text file renamed .png gives one clear error (no traceback); a good X-ray afterwards gives a result."""
    fake = tmp_path / "report.png"
    fake.write_text("Patient notes: this is plain text, not an X-ray.\n" * 20)
    with app_page(browser, server.url, "diagnose_bad_then_good_upload") as page:
        upload(page, fake)
        error = page.get_by_test_id("stAlertContentError")
        error.first.wait_for(timeout=RESULT_TIMEOUT_MS)
        wait_until_idle(page)
        assert error.count() == 1
        assert NOT_AN_IMAGE in error.inner_text()
        assert page.get_by_test_id("stMetric").count() == 0
        assert_no_exception(page)
        save_screenshot(page, "diagnose_bad_upload_error")

        upload(page, SAMPLE)
        wait_for_result(page)
        assert page.get_by_test_id("stAlertContentError").count() == 0
        assert page.get_by_test_id("stMetric").filter(has_text="Probability of pneumonia").count() == 1
        assert_no_exception(page)


IDENTIFIERS = {
    "PatientName": "Zzyzx^Quentavia",
    "PatientID": "PID-99887766",
    "PatientBirthDate": "20190704",
    "AccessionNumber": "ACC-55443322",
    "InstitutionName": "Quentavia Children's Hospital",
}


def probability_shown(page) -> str:
    metric = page.get_by_test_id("stMetric").filter(has_text="Probability of pneumonia")
    return metric.get_by_test_id("stMetricValue").inner_text().strip()


def test_dicom_upload_reads_like_the_png_of_its_pixels_and_shows_no_identifiers(browser, server, tmp_path):
    """A 12-bit MONOCHROME1 DICOM full of identifiers reads as its PNG does; technical fields only are shown."""
    import numpy as np
    from dicom_fixtures import make_test_dicom
    from PIL import Image

    from pneumo_core.imaging import read_xray

    gray = read_xray(SAMPLE.read_bytes()).gray
    png = tmp_path / "same_pixels.png"
    Image.fromarray(gray).save(png)
    stored = ((255 - gray.astype(np.uint16)) * 16).astype(np.uint16)  # MONOCHROME1, 12 bits, full range
    dicom = tmp_path / "study"  # No extension: recognised by DICM at byte 128.
    dicom.write_bytes(
        make_test_dicom(stored, modality="CR", photometric="MONOCHROME1", bits_stored=12, identifiers=IDENTIFIERS)
    )
    with app_page(browser, server.url, "diagnose_dicom") as page:
        upload(page, png)
        wait_for_result(page)
        png_probability = probability_shown(page)
        upload(page, dicom)
        page.get_by_text("MONOCHROME1").first.wait_for(timeout=RESULT_TIMEOUT_MS)
        wait_for_result(page)
        difference = abs(float(probability_shown(page).rstrip("%")) - float(png_probability.rstrip("%")))
        assert difference <= 2.0, (probability_shown(page), png_probability)  # Within 0.02 as a probability.
        text = page.locator("body").inner_text()
        assert "CR" in text and "12" in text
        for value in IDENTIFIERS.values():
            assert value not in text
        assert_no_exception(page)


def test_pdf_report_downloads_from_the_diagnose_page(browser, server):
    """After a reading, "Download report (PDF)" gives a one-page A4 report: the reading, the image, no file name."""
    from pdf_support import check_case_report, require_poppler

    require_poppler()
    with app_page(browser, server.url, "diagnose_pdf_report") as page:
        choose_model(page, "cnn")
        wait_until_idle(page)
        upload(page, SAMPLE)
        wait_for_result(page)
        reading = page.get_by_test_id("stMetric").filter(has_text="Model's reading")
        shown = reading.get_by_test_id("stMetricValue").inner_text().strip()
        with page.expect_download(timeout=RESULT_TIMEOUT_MS) as download:
            page.get_by_role("button", name="Download report (PDF)").click()
        data = download.value.path().read_bytes()
        text = check_case_report(data, model="cnn", label=shown)
        assert SAMPLE.name not in text and SAMPLE.stem not in text
        assert_no_exception(page)


def test_a_fresh_servers_first_visitor_on_a_page_address_goes_through_the_app(browser, trained_models_dir):
    """Opening /compare first on a fresh server runs the page through app.py: its navigation, no file listing.

    (Streamlit alone runs pages/compare.py on its own there, without app.py's sign-in, and lists every file
    of pages/ in the sidebar; see pages.common.require_app_entry.)
    """
    with streamlit_server(trained_models_dir, "deep_link_server.log") as fresh:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()
            page.goto(fresh.url + "/compare")
            page.get_by_role("heading", name="Compare models").first.wait_for(timeout=RESULT_TIMEOUT_MS)
            navigation = page.get_by_test_id("stSidebarNav")
            navigation.get_by_text("Model cards").wait_for()
            assert "common" not in navigation.inner_text()
            assert_no_exception(page)
        finally:
            save_screenshot(page, "deep_link_compare")
            context.close()
