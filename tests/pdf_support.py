"""Helpers to check PDF files in tests with Debian's poppler-utils (``pdftotext``, ``pdfinfo``, ``pdftoppm``).

Everything goes through pipes: the PDF is never written to disk. When poppler-utils is missing the
PDF tests are skipped locally but fail under ``CI=true`` (``make test`` installs it), as the browser
tests do for Chromium.

Usage (e.g. in the browser test of the Diagnose page's "Download report (PDF)" button):
    require_poppler()
    text = check_case_report(pdf_bytes, model="cnn", label="PNEUMONIA")
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

POPPLER_TOOLS = ("pdftotext", "pdfinfo", "pdftoppm")
TIMEOUT_S = 60
A4_ASPECT = 297 / 210
# Texts every case report holds, whatever the reading.
CASE_REPORT_TEXTS = (
    "case report",
    "Input check",
    "sha256 of",
    "model.keras",
    "Headline metrics",
    "Intended use",
    "not a medical device",
    "Software pneumo-xray",
)


def require_poppler() -> None:
    """Skip (locally) or fail (under ``CI=true``) when poppler-utils is not installed."""
    missing = [tool for tool in POPPLER_TOOLS if shutil.which(tool) is None]
    if not missing:
        return
    reason = f"{', '.join(missing)} missing: install Debian's poppler-utils (apt-get install poppler-utils)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"PDF tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"PDF tests skipped: {reason}")


def _run(command: list[str], data: bytes) -> bytes:
    result = subprocess.run(command, input=data, capture_output=True, timeout=TIMEOUT_S, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{command[0]} failed ({result.returncode}): {result.stderr.decode(errors='replace')}")
    return result.stdout


def pdf_text(data: bytes) -> str:
    """The PDF's text in reading order, whitespace collapsed to single spaces."""
    return " ".join(_run(["pdftotext", "-enc", "UTF-8", "-", "-"], data).decode("utf-8").split())


def pdf_info(data: bytes) -> dict[str, str]:
    """``pdfinfo`` fields (Title, Creator, Pages, Page size, ...)."""
    lines = _run(["pdfinfo", "-"], data).decode("utf-8", errors="replace").splitlines()
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in lines) if value}


def render_first_page(data: bytes, dpi: int = 50) -> Image.Image:
    """The PDF's first page rendered to an RGB image by ``pdftoppm``."""
    png = _run(["pdftoppm", "-png", "-r", str(dpi), "-f", "1", "-l", "1", "-singlefile", "-"], data)
    return Image.open(io.BytesIO(png)).convert("RGB")


def check_case_report(data: bytes, *, model: str, label: str | None = None) -> str:
    """Assert that bytes are a one-page A4 case report of ``model`` that renders to a real picture.

    Args:
        data: The downloaded PDF bytes.
        model: The model name the report must name.
        label: The reading the report must state (``None`` to skip that check).

    Returns:
        The report's text (whitespace collapsed) for further checks.
    """
    assert data.startswith(b"%PDF-"), "not a PDF file"
    info = pdf_info(data)
    assert info.get("Pages") == "1", info
    assert "A4" in info.get("Page size", ""), info
    text = pdf_text(data)
    for expected in (*CASE_REPORT_TEXTS, f"{model}:"):
        assert expected in text, f"{expected!r} not in the report text: {text}"
    if label is not None:
        assert f"Model's reading: {label}" in text, text
    page = np.asarray(render_first_page(data))
    height, width, _ = page.shape
    assert abs(height / width - A4_ASPECT) < 0.02, page.shape
    # The X-ray and the overlay: dark pixels, and coloured ones (the heatmap), not only text on white.
    assert (page.min(axis=2) < 60).mean() > 0.02, "no image on the page"
    assert ((page.max(axis=2).astype(int) - page.min(axis=2)) > 80).mean() > 0.005, "no coloured overlay on the page"
    return text
