"""Real-browser test of the Batch page: a zip of labelled sample X-rays through Chromium.

The server runs the tiny conftest models (``PNEUMO_MODELS_DIR=trained_models_dir``); its output is in
``tests/artifacts/browser_batch_server.log`` and the test leaves full-page screenshots in
``tests/artifacts/screenshots/``.
"""

from __future__ import annotations

import csv
import io
import zipfile

import pytest
from browser_support import (
    RESULT_TIMEOUT_MS,
    SAMPLES_DIR,
    app_page,
    save_screenshot,
    streamlit_server,
    wait_until_idle,
)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(browser, trained_models_dir):
    """The app served on a free port with the tiny test models."""
    with streamlit_server(trained_models_dir, "browser_batch_server.log") as running:
        yield running


@pytest.fixture
def labelled_zip(tmp_path):
    """``site.zip`` with the four sample X-rays in ``site/NORMAL/`` and ``site/PNEUMONIA/``, and a stray note."""
    path = tmp_path / "site.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for sample in sorted(SAMPLES_DIR.glob("*.jpeg")):
            label = "NORMAL" if sample.name.startswith("NORMAL") else "PNEUMONIA"
            archive.write(sample, f"site/{label}/{sample.name}")
        archive.writestr("site/notes.txt", "exported for the local validation")
    return path


def open_batch_page(page) -> None:
    """Go to the Batch page through the sidebar navigation."""
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Batch and local validation").click()
    page.get_by_role("heading", name="Many X-rays at once").wait_for()
    wait_until_idle(page)


def test_labelled_zip_gives_table_csv_and_local_validation(browser, server, labelled_zip):
    """Upload a zip of NORMAL/ and PNEUMONIA/ samples: the table, the CSV download and the validation figures."""
    with app_page(browser, server.url, "batch_labelled_zip") as page:
        open_batch_page(page)
        page.get_by_test_id("stFileUploaderDropzoneInput").first.set_input_files(str(labelled_zip))
        page.get_by_text("image(s) to read").wait_for(timeout=RESULT_TIMEOUT_MS)
        wait_until_idle(page)
        assert "1 file(s) skipped" in page.get_by_test_id("stMain").inner_text()
        page.get_by_role("button", name="Read 4 image(s)").click()

        page.get_by_test_id("stMetric").filter(has_text="Images read").wait_for(timeout=RESULT_TIMEOUT_MS)
        page.locator(".js-plotly-plot").nth(1).wait_for(timeout=RESULT_TIMEOUT_MS)
        wait_until_idle(page)
        main = page.get_by_test_id("stMain")
        assert main.get_by_test_id("stDataFrame").count() >= 2  # the readings and the metrics
        assert "rest on 4 labelled images (2 pneumonia, 2 normal)" in main.inner_text()
        assert main.get_by_test_id("stPlotlyChart").count() == 2  # confusion matrix and ROC
        assert page.get_by_text("% of row").count() == 4
        assert page.get_by_test_id("stException").count() == 0

        with page.expect_download() as download_info:
            page.get_by_test_id("stDownloadButton").get_by_role("button").click()
        download = download_info.value
        assert download.suggested_filename.startswith("readings_") and download.suggested_filename.endswith(".csv")
        rows = list(csv.DictReader(io.StringIO(download.path().read_text())))
        assert sorted(row["image"].rsplit("/", 1)[-1] for row in rows) == sorted(
            p.name for p in SAMPLES_DIR.glob("*.jpeg")
        )
        assert sorted(row["truth"] for row in rows) == ["NORMAL", "NORMAL", "PNEUMONIA", "PNEUMONIA"]
        assert all(row["accepted"] == "True" and 0.0 <= float(row["probability"]) <= 1.0 for row in rows)
        save_screenshot(page, "batch_labelled_zip_results")


def test_zip_with_parent_paths_is_refused_in_the_browser(browser, server, tmp_path):
    """A zip whose member climbs out with ../ gets one clear error and no Read button."""
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../../outside.jpeg", (SAMPLES_DIR / "person1371_virus_2361.jpeg").read_bytes())
    with app_page(browser, server.url, "batch_path_traversal_zip") as page:
        open_batch_page(page)
        page.get_by_test_id("stFileUploaderDropzoneInput").first.set_input_files(str(evil))
        error = page.get_by_test_id("stAlertContentError")
        error.first.wait_for(timeout=RESULT_TIMEOUT_MS)
        wait_until_idle(page)
        assert error.count() == 1 and "points outside the archive" in error.inner_text()
        assert page.get_by_role("button", name="Read").count() == 0
        assert page.get_by_test_id("stException").count() == 0
