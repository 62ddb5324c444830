"""A one-page PDF case report of one reading, built in memory with fpdf2.

The page holds the image, the heatmap overlay and its method, the model (name, description and the
sha256 of its ``model.keras``), the probability, threshold and label, the input check's result, the
model's headline metrics and intended use (read from its artifacts), the date and time, the software
version and the disclaimer. It holds no patient identifier and no file name: only pixels and numbers.

Usage:
    pdf = render_case_report(
        entry=entry, reading=reading, image=fit_within(xray.gray), overlay=blended,
        method="Grad-CAM", explained="PNEUMONIA", notes=xray.notes,
    )
    Path("report.pdf").write_bytes(pdf)   # the app hands the bytes to a download button instead
"""

from __future__ import annotations

import functools
import re
import subprocess
import tomllib
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from fpdf import FPDF
from fpdf.enums import XPos, YPos
from PIL import Image

from pneumo_core import __version__
from pneumo_core.artifacts import CARD_FILE, MODEL_FILE
from pneumo_core.catalog import ModelEntry
from pneumo_core.diagnosis import disclaimer, percent
from pneumo_core.imaging import fit_within

if TYPE_CHECKING:
    from pneumo_core.reading import Reading

REPO_ROOT = Path(__file__).resolve().parent.parent
TITLE = "Pneumonia check on a chest X-ray: case report"
PAGE_WIDTH_MM = 210
MARGIN_MM = 15
IMAGE_BOX_MM = (86.0, 76.0)  # width, height of each image's box
IMAGE_MAX_SIDE_PX = 900
FONT = "Helvetica"
# The PDF core fonts are Latin-1; these are the non-Latin-1 characters our texts use.
_LATIN1_SUBSTITUTES = str.maketrans(
    {"–": "-", "—": "-", "≥": ">=", "≤": "<=", "…": "...", "‘": "'", "’": "'", "“": '"', "”": '"', "•": "-", "×": "x"}
)
_GIT_TIMEOUT_S = 2


def render_case_report(
    *,
    entry: ModelEntry,
    reading: Reading,
    image: np.ndarray,
    overlay: np.ndarray,
    method: str,
    explained: str,
    notes: Sequence[str] = (),
    shown_verdict: str | None = None,
    created: datetime | None = None,
) -> bytes:
    """Render the case report of one reading as PDF bytes (one A4 page).

    Args:
        entry: The catalog entry of the model that made the reading (shipped).
        reading: The reading shown to the user.
        image: The X-ray as shown (2-D uint8 grayscale).
        overlay: The heatmap overlay as shown (``(h, w, 3)`` uint8 RGB).
        method: The heatmap method, e.g. ``"Grad-CAM"``.
        explained: The class whose evidence the heatmap shows (``"PNEUMONIA"`` or ``"NORMAL"``).
        notes: How the image was converted for the model (``XRay.notes``), if anything.
        shown_verdict: The reading as the page shows it (e.g. ``"INDETERMINATE"`` inside the grey band,
            see :func:`pneumo_core.diagnosis.verdict`); default: the label at the threshold.
        created: When the report is made (default: now, local time with its UTC offset).

    Returns:
        The PDF file's bytes.

    Raises:
        ValueError: If the model is not shipped or an image is not a uint8 picture.
    """
    if not entry.shipped:
        raise ValueError(f"No case report for {entry.name}: the model is not shipped.")
    created = (created or datetime.now()).astimezone()
    pdf = _new_document(created)
    _header(pdf, created)
    _images(pdf, image, overlay, f"{method} for {explained}")
    shown_verdict = shown_verdict or reading.label
    _headline(pdf, reading, shown_verdict)
    _section(pdf, "Reading")
    _rows(pdf, _reading_rows(reading, shown_verdict, method, explained, notes) + _subtype_rows(entry, reading))
    _section(pdf, "Model")
    _rows(pdf, _model_rows(entry))
    _section(pdf, "Intended use")
    _paragraph(pdf, intended_use(entry))
    _disclaimer(pdf, disclaimer(entry.config))
    _footer(pdf)
    return bytes(pdf.output())


def software_version() -> str:
    """The project's version from ``pyproject.toml``, plus ``git describe`` when run from a checkout.

    Computed once per process (git is asked once, with a short timeout; a missing git or
    repository just leaves the plain version).
    """
    return _software_version()


@functools.cache
def _software_version() -> str:
    version = __version__
    pyproject = REPO_ROOT / "pyproject.toml"
    if pyproject.is_file():
        version = tomllib.loads(pyproject.read_text()).get("project", {}).get("version", version)
    if not (REPO_ROOT / ".git").exists():
        return version
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version} (git {described})" if described else version


def model_version(entry: ModelEntry) -> str:
    """The sha256 of the model's ``model.keras`` as recorded (and verified at load) in its config."""
    return entry.config.checksums[MODEL_FILE]


def intended_use(entry: ModelEntry) -> str:
    """The "Intended use" section of the model card, or the model's description when the card has none."""
    card = entry.directory / CARD_FILE
    text = card.read_text() if card.is_file() else ""
    match = re.search(r"^## Intended use\s*\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    return " ".join(match.group(1).split()) if match else entry.spec.description


def _reading_rows(
    reading: Reading, shown_verdict: str | None, method: str, explained: str, notes: Sequence[str]
) -> list[tuple[str, str]]:
    rows = [("Input check", _gate_text(reading))]
    if reading.accepted and reading.probability is not None:
        rows += [
            ("Model's reading", str(shown_verdict)),
            ("Probability of pneumonia", percent(reading.probability)),
            ("Operating threshold", f"{percent(reading.threshold)} (PNEUMONIA at or above it)"),
        ]
    rows.append(("Heatmap", f"{method}, evidence for {explained}. Where the model looked, not a lesion outline."))
    if notes:
        rows.append(("Image conversion", " ".join(notes)))
    return rows


def _subtype_rows(entry: ModelEntry, reading: Reading) -> list[tuple[str, str]]:
    """One row with the bacterial-vs-viral reading, when the reading has one."""
    if reading.subtype is None:
        return []
    from pneumo_core.subtype import read_subtype_settings, subtype_line

    settings = read_subtype_settings(entry.directory)
    return [] if settings is None else [("Bacterial or viral", subtype_line(reading.subtype, settings))]


def _gate_text(reading: Reading) -> str:
    if not reading.accepted:
        return f"Refused: {reading.reason or 'no reason given'}"
    if reading.ood_score is None:
        return "Accepted (no out-of-distribution score was computed)."
    return f"Accepted (out-of-distribution score {reading.ood_score:.3f})."


def _model_rows(entry: ModelEntry) -> list[tuple[str, str]]:
    test = entry.metrics.test
    population = entry.config.population
    headline = ", ".join(
        f"{label} {_metric(getattr(test, key))}"
        for key, label in (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("roc_auc", "ROC AUC"))
    )
    return [
        ("Name", f"{entry.name}: {entry.spec.description}"),
        ("Version (sha256 of model.keras)", model_version(entry)),
        ("Trained on", f"{population.summary}; {population.source}."),
        ("Not validated on", population.not_validated_on),
        ("Threshold rule", entry.config.threshold_rule.text),
        (
            "Headline metrics",
            f"{headline} on the internal test split (n = {test.n}, images of the training hospital; "
            "expect lower specificity on other hospitals' images).",
        ),
    ]


def _metric(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# --- Layout ---------------------------------------------------------------------------------------


def _latin1(text: str) -> str:
    """Text the PDF core fonts can show: known symbols spelled out, anything else as '?'."""
    return text.translate(_LATIN1_SUBSTITUTES).encode("latin-1", errors="replace").decode("latin-1")


def _new_document(created: datetime) -> FPDF:
    pdf = FPDF(orientation="portrait", unit="mm", format="A4")
    pdf.set_margins(MARGIN_MM, MARGIN_MM, MARGIN_MM)
    pdf.set_auto_page_break(auto=True, margin=MARGIN_MM)
    pdf.set_title(TITLE)
    pdf.set_creator(f"pneumo-xray {software_version()}")
    pdf.set_creation_date(created)
    pdf.add_page()
    return pdf


def _header(pdf: FPDF, created: datetime) -> None:
    pdf.set_font(FONT, "B", 15)
    pdf.cell(0, 8, _latin1(TITLE), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(FONT, "", 9)
    pdf.set_text_color(90, 90, 90)
    stamp = f"{created:%Y-%m-%d %H:%M} (UTC{created.isoformat(timespec='minutes')[-6:]})"
    pdf.cell(0, 5, _latin1(f"Created {stamp}. Decision support, not a diagnosis."), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(0, 0, 0)
    pdf.ln(2)


def _images(pdf: FPDF, image: np.ndarray, overlay: np.ndarray, overlay_caption: str) -> None:
    """The X-ray and the overlay side by side, at the same height, with their captions below."""
    top = pdf.get_y()
    box_width, box_height = IMAGE_BOX_MM
    gap = PAGE_WIDTH_MM - 2 * MARGIN_MM - 2 * box_width
    pictures = ((image, "X-ray as read by the model"), (overlay, overlay_caption))
    shown_height = max(_fit(picture, box_width, box_height)[1] for picture, _ in pictures)
    pdf.set_font(FONT, "I", 8.5)
    for column, (picture, caption) in enumerate(pictures):
        left = MARGIN_MM + column * (box_width + gap)
        width, height = _fit(picture, box_width, box_height)
        pdf.image(_pil(picture), x=left + (box_width - width) / 2, y=top, w=width, h=height)
        pdf.set_xy(left, top + shown_height + 1)
        pdf.cell(box_width, 4, _latin1(caption), align="C")
    pdf.set_xy(MARGIN_MM, top + shown_height + 6)


def _pil(picture: np.ndarray) -> Image.Image:
    if picture.dtype != np.uint8 or picture.ndim not in (2, 3):
        raise ValueError(f"Expected a uint8 grayscale or RGB image, got {picture.dtype} {picture.shape}.")
    return Image.fromarray(fit_within(picture, IMAGE_MAX_SIDE_PX))


def _fit(picture: np.ndarray, box_width: float, box_height: float) -> tuple[float, float]:
    """The largest width and height (mm) with the picture's aspect ratio inside the box."""
    height_px, width_px = picture.shape[:2]
    scale = min(box_width / width_px, box_height / height_px)
    return width_px * scale, height_px * scale


def headline(reading: Reading, shown_verdict: str | None = None) -> str:
    """The reading in one line, e.g. ``Model's reading: PNEUMONIA (probability 97.0%, threshold 85.1%)``."""
    if not reading.accepted or reading.probability is None:
        return "No reading: the input check refused this image."
    return (
        f"Model's reading: {shown_verdict or reading.label} (probability of pneumonia {percent(reading.probability)}, "
        f"threshold {percent(reading.threshold)})"
    )


def _headline(pdf: FPDF, reading: Reading, shown_verdict: str | None) -> None:
    pdf.set_font(FONT, "B", 12)
    pdf.cell(0, 7, _latin1(headline(reading, shown_verdict)), new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _section(pdf: FPDF, title: str) -> None:
    pdf.ln(1.5)
    pdf.set_font(FONT, "B", 11)
    pdf.cell(0, 6, _latin1(title), new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _rows(pdf: FPDF, rows: list[tuple[str, str]]) -> None:
    pdf.set_font(FONT, "", 9)
    with pdf.table(
        col_widths=(42, 138),
        first_row_as_headings=False,
        line_height=4.2,
        padding=0.8,
        text_align="LEFT",
        borders_layout="HORIZONTAL_LINES",
    ) as table:
        for name, value in rows:
            row = table.row()
            pdf.set_font(FONT, "B", 9)
            row.cell(_latin1(name))
            pdf.set_font(FONT, "", 9)
            row.cell(_latin1(value))


def _paragraph(pdf: FPDF, text: str) -> None:
    pdf.set_font(FONT, "", 9)
    pdf.multi_cell(0, 4.2, _latin1(text), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _disclaimer(pdf: FPDF, text: str) -> None:
    pdf.ln(3)
    pdf.set_fill_color(255, 243, 205)
    pdf.set_font(FONT, "B", 9.5)
    pdf.multi_cell(0, 5, _latin1(text), border=1, fill=True, padding=2, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _footer(pdf: FPDF) -> None:
    pdf.ln(2)
    pdf.set_font(FONT, "", 8)
    pdf.set_text_color(90, 90, 90)
    pdf.multi_cell(
        0,
        4,
        _latin1(
            f"Software pneumo-xray {software_version()}. No patient identifier or file name is included in this report."
        ),
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    pdf.set_text_color(0, 0, 0)
