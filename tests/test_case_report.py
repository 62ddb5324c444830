"""The one-page PDF case report: its text (read back with pdftotext) and its page rendered to PNG."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from pdf_support import check_case_report, pdf_info, pdf_text, render_first_page, require_poppler

from pneumo_core.case_report import intended_use, model_version, render_case_report, software_version
from pneumo_core.catalog import catalog
from pneumo_core.diagnosis import disclaimer, list_samples
from pneumo_core.gradcam import overlay
from pneumo_core.imaging import fit_within, read_xray_file
from pneumo_core.reading import Reading

SAMPLE = next(sample for sample in list_samples() if sample.label == "PNEUMONIA")
CREATED = datetime(2026, 3, 14, 9, 26, tzinfo=UTC)


@pytest.fixture(autouse=True)
def poppler():
    """Every test here reads PDFs back with poppler-utils."""
    require_poppler()


@pytest.fixture(scope="module")
def entry(trained_models_dir):
    """The catalog entry of the tiny test cnn."""
    return next(entry for entry in catalog(trained_models_dir) if entry.name == "cnn")


def centred_heatmap(size: int = 40) -> np.ndarray:
    """A square heatmap in [0, 1] peaking in the middle."""
    yy, xx = np.mgrid[0:size, 0:size]
    return np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (size * 4))


def report(entry, reading: Reading, gray: np.ndarray | None = None, notes: tuple[str, ...] = ()) -> bytes:
    """A case report of the sample X-ray (or ``gray``) with a Grad-CAM-like overlay."""
    if gray is None:
        gray = fit_within(read_xray_file(SAMPLE.path).gray)
    return render_case_report(
        entry=entry,
        reading=reading,
        image=gray,
        overlay=overlay(gray, centred_heatmap()),
        method="Grad-CAM",
        explained="PNEUMONIA",
        notes=notes,
        created=CREATED,
    )


def accepted(entry, probability: float = 0.934, ood_score: float | None = 0.125) -> Reading:
    """An accepted reading of the cnn at its operating threshold."""
    threshold = entry.config.threshold
    label = "PNEUMONIA" if probability >= threshold else "NORMAL"
    return Reading(model="cnn", threshold=threshold, probability=probability, label=label, ood_score=ood_score)


def test_report_states_the_reading_the_model_and_the_disclaimer(entry):
    """Probability, threshold, label, gate result, model version, metrics, intended use, time, version, disclaimer."""
    reading = accepted(entry)
    text = check_case_report(report(entry, reading), model="cnn", label=reading.label)
    assert "93.4%" in text
    assert f"threshold {entry.config.threshold:.1%}" in text
    assert "Accepted (out-of-distribution score 0.125)" in text
    assert model_version(entry) in text
    assert f"sensitivity {entry.metrics.test.sensitivity:.3f}" in text
    assert f"n = {entry.metrics.test.n}" in text
    assert " ".join(intended_use(entry).split()) in text
    assert " ".join(disclaimer(entry.config).split()) in text
    assert "Created 2026-03-14 09:26 (UTC+00:00)" in text
    assert f"Software pneumo-xray {software_version()}" in text
    assert "Grad-CAM for PNEUMONIA" in text


def test_report_holds_no_file_name_or_identifier(entry):
    """Neither the text nor the PDF metadata name the image file; the title is generic."""
    data = report(entry, accepted(entry))
    info = pdf_info(data)
    assert info["Title"] == "Pneumonia check on a chest X-ray: case report"
    everything = pdf_text(data) + " ".join(info.values())
    assert SAMPLE.path.stem not in everything
    assert SAMPLE.path.stem.encode() not in data


def test_report_page_renders_with_both_images(entry):
    """The rendered page shows the X-ray (gray) and the overlay (colour) in its upper part."""
    page = np.asarray(render_first_page(report(entry, accepted(entry)), dpi=40)).astype(int)
    upper = page[: page.shape[0] // 2]
    colourful = (upper.max(axis=2) - upper.min(axis=2)) > 80
    assert colourful[:, page.shape[1] // 2 :].mean() > 0.02  # the overlay on the right
    assert colourful[:, : page.shape[1] // 2].mean() < 0.005  # the gray X-ray on the left


def test_tall_image_and_long_notes_still_fit_one_page(entry):
    """A portrait image with conversion notes stays on one page; non-Latin-1 symbols are spelled out."""
    tall = np.tile(np.linspace(30, 220, 300, dtype=np.uint8)[:, None], (1, 100))
    notes = ("This is a high-bit-depth image; its range was mapped to 8 bits – values ≥ 4095 are white.",) * 3
    data = report(entry, accepted(entry), gray=tall, notes=notes)
    assert pdf_info(data)["Pages"] == "1"
    assert "values >= 4095 are white" in pdf_text(data)


def test_refused_reading_says_why_and_gives_no_probability(entry):
    """A refused image's report states the refusal and its reason, not a probability or a label."""
    refused = Reading(
        model="cnn", threshold=entry.config.threshold, accepted=False, reason="This is not a chest X-ray."
    )
    text = pdf_text(report(entry, refused))
    assert "Refused: This is not a chest X-ray." in text
    assert "Probability of pneumonia" not in text
    assert "No reading: the input check refused this image." in text


def test_report_states_the_verdict_the_page_shows(entry):
    """Inside the grey band the page says INDETERMINATE; the report says the same, with the label's probability."""
    data = render_case_report(
        entry=entry,
        reading=accepted(entry),
        image=np.full((90, 90), 120, np.uint8),
        overlay=np.zeros((90, 90, 3), np.uint8),
        method="Grad-CAM",
        explained="PNEUMONIA",
        shown_verdict="INDETERMINATE",
    )
    text = pdf_text(data)
    assert "Model's reading: INDETERMINATE (probability of pneumonia 93.4%" in text


def test_report_without_gate_score_says_so(entry):
    """Without an out-of-distribution score the report does not invent one."""
    text = pdf_text(report(entry, accepted(entry, ood_score=None)))
    assert "Accepted (no out-of-distribution score was computed)." in text


def test_unshipped_model_has_no_report(trained_models_dir):
    """A model that is not shipped cannot have a case report."""
    unshipped = next(entry for entry in catalog(trained_models_dir) if not entry.shipped)
    with pytest.raises(ValueError, match="not shipped"):
        render_case_report(
            entry=unshipped,
            reading=Reading(model=unshipped.name, threshold=0.5, probability=0.6, label="PNEUMONIA"),
            image=np.zeros((80, 80), np.uint8),
            overlay=np.zeros((80, 80, 3), np.uint8),
            method="Grad-CAM",
            explained="PNEUMONIA",
        )
