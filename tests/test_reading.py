"""The one reading pipeline: the same X-ray reads the same in every format, and batches never stop on a bad file.

Uses the shipped cnn (fast) so that the tolerance is checked on a real model, not a toy.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from dicom_fixtures import VARIANT_TOLERANCE, dicom_variant
from PIL import Image

from pneumo_core.artifacts import MODELS_DIR, load_model_dir
from pneumo_core.diagnosis import list_samples
from pneumo_core.imaging import read_xray
from pneumo_core.reading import Reader, read_sources

TOLERANCE = 0.02


@pytest.fixture(scope="module")
def reader() -> Reader:
    return Reader(load_model_dir(MODELS_DIR / "cnn"))


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    """A real sample X-ray as 8-bit grayscale."""
    sample = next(s for s in list_samples() if s.label == "PNEUMONIA")
    return read_xray(sample.path.read_bytes()).gray


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def other_encodings(gray: np.ndarray) -> dict[str, bytes]:
    """The same pixels as 16-bit PNG, RGB JPEG and grayscale JPEG."""
    return {
        "16-bit PNG": encode(Image.fromarray(gray.astype(np.uint16) * 257), "PNG"),
        "RGB JPEG": encode(Image.fromarray(gray).convert("RGB"), "JPEG", quality=95),
        "grayscale JPEG": encode(Image.fromarray(gray), "JPEG", quality=95),
    }


def test_one_xray_reads_alike_as_png_16_bit_png_and_jpeg(reader, gray):
    """8-bit PNG, 16-bit PNG, RGB and grayscale JPEG of one X-ray give probabilities within 0.02."""
    reference = reader.read(read_xray(encode(Image.fromarray(gray), "PNG"))).probability
    for name, data in other_encodings(gray).items():
        probability = reader.read(read_xray(data)).probability
        assert abs(probability - reference) <= TOLERANCE, (name, probability, reference)


@pytest.mark.parametrize("variant", sorted(VARIANT_TOLERANCE))
def test_one_xray_reads_alike_as_dicom(reader, gray, variant):
    """Every DICOM encoding of the X-ray reads within 0.02 of the PNG of the same pixels."""
    reference = reader.read(read_xray(encode(Image.fromarray(gray), "PNG"))).probability
    xray = read_xray(dicom_variant(gray, variant), "image.dcm")
    assert xray.source_format == "DICOM"
    assert abs(reader.read(xray).probability - reference) <= TOLERANCE


def test_batch_reading_equals_single_reading(reader, gray):
    """A batched forward pass gives the same probabilities as one image at a time."""
    xrays = [read_xray(encode(Image.fromarray(np.roll(gray, shift, axis=1)), "PNG")) for shift in (0, 7, 19)]
    batched = [r.probability for r in reader.read_many(xrays)]
    single = [reader.read(x).probability for x in xrays]
    assert np.allclose(batched, single, atol=1e-5)


def test_read_sources_keeps_order_and_explains_every_bad_input(reader, gray, tmp_path):
    """Good files, bytes, a text file and a missing path: one reading each, in order, with reasons."""
    good = tmp_path / "good.png"
    good.write_bytes(encode(Image.fromarray(gray), "PNG"))
    text = tmp_path / "notes.png"
    text.write_text("not an image\n" * 20)
    sources = [
        ("good.png", good),
        ("notes.png", text),
        ("bytes.jpeg", other_encodings(gray)["grayscale JPEG"]),
        ("missing.png", Path(tmp_path / "missing.png")),
    ]
    results = list(read_sources(reader, sources, batch_size=2))
    assert [name for name, _ in results] == ["good.png", "notes.png", "bytes.jpeg", "missing.png"]
    accepted = [reading.accepted for _, reading in results]
    assert accepted == [True, False, True, False]
    assert "not an image we can read" in results[1][1].reason
    assert "does not exist" in results[3][1].reason
    assert results[1][1].probability is None and results[1][1].label is None
