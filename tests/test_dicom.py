"""Tests of pneumo_core.dicom: every supported encoding, the windowing pipeline, refusals and privacy.

All DICOM files are generated in memory by ``dicom_fixtures`` from a sample X-ray (or re-wrap the
JPEG-LS and 12-bit JPEG codestreams that ship with pydicom); none is committed.
"""

from __future__ import annotations

import builtins
import io
import logging
import traceback
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from dicom_fixtures import VARIANT_TOLERANCE, dicom_variant, make_test_dicom, resample_pydicom_test_file
from PIL import Image
from pydicom import uid
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from pneumo_core.dicom import SUPPORTED_TRANSFER_SYNTAXES, DicomRejected, decode_dicom, looks_like_dicom
from pneumo_core.imaging import ImageRejected, read_xray

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "samples" / "person1371_virus_2361.jpeg"
HEIGHT, WIDTH = 96, 80


@cache
def sample_gray() -> np.ndarray:
    """A real chest X-ray from the repository's samples, shrunk to ``(96, 80)`` uint8."""
    gray = np.asarray(Image.open(SAMPLE).convert("L"))
    return cv2.resize(gray, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)


def ramp_12bit() -> np.ndarray:
    """Every 12-bit value along the rows of a ``(64, 64)`` uint16 image (0 .. 4095)."""
    return np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR), written out independently, as a fraction 0..1."""
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def to_uint8(fraction: np.ndarray) -> np.ndarray:
    return np.rint(fraction * 255).astype(np.uint8)


def assert_close(actual: np.ndarray, expected: np.ndarray, max_diff: int = 1, mean_diff: float = 0.05) -> None:
    """Equal up to a rounding step (lossless) or within the given tolerance (lossy)."""
    assert actual.dtype == np.uint8
    assert actual.shape == expected.shape
    difference = np.abs(actual.astype(int) - expected.astype(int))
    assert difference.max() <= max_diff, f"max difference {difference.max()}"
    assert difference.mean() <= mean_diff, f"mean difference {difference.mean():.3f}"


# --- Supported encodings -------------------------------------------------------------------------


def test_looks_like_dicom_checks_the_marker_at_offset_128():
    """Only ``DICM`` at byte 128 makes a file DICOM; a marker elsewhere does not."""
    assert looks_like_dicom(make_test_dicom(sample_gray()))
    assert not looks_like_dicom(b"DICM" + bytes(200))
    assert not looks_like_dicom(b"\x89PNG\r\n\x1a\n" + bytes(200))
    assert not looks_like_dicom(b"")


@pytest.mark.parametrize("variant", sorted(VARIANT_TOLERANCE))
def test_every_encoding_of_a_sample_xray_decodes_to_its_pixels(variant):
    """Each supported encoding of the same 8-bit X-ray decodes back to it (lossy ones within a tolerance)."""
    max_diff, mean_diff = VARIANT_TOLERANCE[variant]
    gray, notes, metadata = decode_dicom(dicom_variant(sample_gray(), variant))
    assert_close(gray, sample_gray(), max_diff=max_diff, mean_diff=mean_diff)
    assert all(isinstance(note, str) and note.endswith(".") for note in notes)
    assert dict(metadata)["Size"] == f"{WIDTH} x {HEIGHT} px"


def test_every_supported_transfer_syntax_is_tested():
    """The syntaxes the module claims are exactly those exercised here (variants plus pydicom's samples)."""
    exercised = {uid.JPEGLSLossless, uid.JPEGLSNearLossless}  # by the two JPEG-LS tests below
    for variant in VARIANT_TOLERANCE:
        meta = pydicom.dcmread(io.BytesIO(dicom_variant(sample_gray(), variant)), stop_before_pixels=True)
        exercised.add(meta.file_meta.TransferSyntaxUID)
    assert exercised == set(SUPPORTED_TRANSFER_SYNTAXES)


def test_metadata_holds_the_technical_fields_only():
    """Modality, view position, size, bits stored, photometric interpretation and transfer syntax, in order."""
    data = dicom_variant(sample_gray(), "mono1_12bit_window")
    assert decode_dicom(data)[2] == (
        ("Modality", "DX"),
        ("View position", "PA"),
        ("Size", "80 x 96 px"),
        ("Bits stored", "12"),
        ("Photometric interpretation", "MONOCHROME1"),
        ("Transfer syntax", "Explicit VR Little Endian"),
    )


def test_plain_8bit_file_needs_no_note_and_cr_is_accepted():
    """An 8-bit MONOCHROME2 CR without window maps to its own pixels, with nothing to explain."""
    gray, notes, metadata = decode_dicom(make_test_dicom(sample_gray(), modality="CR", view_position=None))
    np.testing.assert_array_equal(gray, sample_gray())
    assert notes == ()
    assert ("Modality", "CR") in metadata
    assert "View position" not in dict(metadata)


def test_jpeg_ls_lossless_matches_the_uncompressed_reference():
    """pydicom's JPEG-LS lossless MR codestream, re-wrapped as DX, equals its uncompressed twin, windowed."""
    data, _ = resample_pydicom_test_file("MR_small_jpeg_ls_lossless.dcm", WindowCenter=1136, WindowWidth=2019)
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array  # signed 16-bit, not compressed
    gray, notes, metadata = decode_dicom(data)
    assert_close(gray, to_uint8(linear_window(reference.astype(float), 1136, 2019)))
    assert dict(metadata)["Transfer syntax"] == "JPEG-LS Lossless Image Compression"
    assert "Windowed with the file's window (center 1136, width 2019), then mapped to 8-bit gray." in notes


@pytest.mark.parametrize(
    ("source", "bits"), [("JPEGLSNearLossless_16.dcm", 16), ("JPGExtended.dcm", 12)], ids=["jpeg-ls-near", "jpeg12"]
)
def test_lossy_samples_without_an_encoder_decode_and_map_the_full_range(source, bits):
    """JPEG-LS near-lossless and 12-bit JPEG extended (decode only here): pydicom's decoding, full range mapped.

    No installed library encodes them, so the codec itself is trusted to pylibjpeg's own tests; this
    checks that the syntax is accepted and mapped like any other.
    """
    data, stored = resample_pydicom_test_file(source)
    gray, notes, _ = decode_dicom(data)
    assert_close(gray, to_uint8(stored.astype(float) / (2**bits - 1)))
    assert any("lossy compression" in note for note in notes)


# --- The pixel pipeline --------------------------------------------------------------------------


def test_without_a_window_the_full_stored_range_is_mapped():
    """12 bits stored and no VOI: 0..4095 maps linearly to 0..255, not the image's own min..max."""
    stored = ramp_12bit() // 2 + 1000  # 1000 .. 3047: a stretch to min..max would differ
    gray, notes, _ = decode_dicom(make_test_dicom(stored, bits_stored=12))
    assert_close(gray, to_uint8(stored / 4095))
    assert notes == (
        "The file gives no window, so its full stored range (0 to 4095) was mapped to 8-bit gray; "
        "contrast may differ from your viewer.",
    )


def test_monochrome1_is_inverted():
    """MONOCHROME1 (low values white): the output is the mirror of the MONOCHROME2 mapping."""
    gray, notes, _ = decode_dicom(make_test_dicom(ramp_12bit(), bits_stored=12, photometric="MONOCHROME1"))
    assert_close(gray, 255 - to_uint8(ramp_12bit() / 4095))
    assert any("inverted" in note for note in notes)


def test_rescale_is_applied_before_the_full_range():
    """A negative rescale slope flips the image: rescaled = 4095 - stored, over the rescaled range 0..4095."""
    gray, notes, _ = decode_dicom(make_test_dicom(ramp_12bit(), bits_stored=12, rescale=(-1, 4095)))
    assert_close(gray, to_uint8((4095 - ramp_12bit()) / 4095))
    assert "Rescale slope -1 and intercept 4095 were applied first." in notes


def test_rescale_then_window_in_rescaled_units():
    """The window is applied to rescaled values (slope 2, intercept -1000), as PS3.4 N.2 orders it."""
    stored = ramp_12bit()
    gray, _, _ = decode_dicom(make_test_dicom(stored, bits_stored=12, rescale=(2, -1000), window=(3000, 2000)))
    assert_close(gray, to_uint8(linear_window(stored * 2.0 - 1000, 3000, 2000)))


def test_narrow_window_clips_below_and_above():
    """Values below the window are black, above it white, linear in between."""
    gray, _, _ = decode_dicom(make_test_dicom(ramp_12bit(), bits_stored=12, window=(2000, 500)))
    expected = to_uint8(linear_window(ramp_12bit().astype(float), 2000, 500))
    assert_close(gray, expected)
    assert gray.ravel()[0] == 0 and gray.ravel()[-1] == 255


def test_the_first_of_several_windows_is_used():
    """Several windows: the first is the default presentation, the others are ignored (and the note says so)."""
    windows = [(1000, 800), (3000, 400)]
    gray, notes, _ = decode_dicom(make_test_dicom(ramp_12bit(), bits_stored=12, window=windows))
    assert_close(gray, to_uint8(linear_window(ramp_12bit().astype(float), 1000, 800)))
    assert "The file offers 2 windows; the first (center 1000, width 800) was used, then mapped to 8-bit gray." in (
        notes
    )


def test_sigmoid_window_function():
    """VOI LUT Function SIGMOID (PS3.3 C.11.2.1.3.1) is honoured."""
    data = make_test_dicom(ramp_12bit(), bits_stored=12, window=(2048, 1000), voi_lut_function="SIGMOID")
    gray, notes, _ = decode_dicom(data)
    assert_close(gray, to_uint8(1 / (1 + np.exp(-4 * (ramp_12bit() - 2048.0) / 1000))))
    assert any("sigmoid function" in note for note in notes)


def test_voi_lut_is_preferred_to_the_window_and_scaled_by_its_own_range():
    """A VOI LUT wins over a window; its entries (here 0..4095 in a 16-bit LUT) span 0..255."""
    lut = np.rint(np.sqrt(np.arange(4096) / 4095) * 4095).astype(np.uint16)
    data = make_test_dicom(ramp_12bit(), bits_stored=12, window=(100, 50), voi_lut=lut)
    gray, notes, _ = decode_dicom(data)
    assert_close(gray, to_uint8(lut[ramp_12bit()] / 4095))
    assert "Windowed with its VOI LUT (the file's display curve), then mapped to 8-bit gray." in notes


def test_decoding_writes_nothing_to_disk(monkeypatch):
    """Decoding (every encoding) never opens a file: it all happens in memory."""
    files = {name: dicom_variant(sample_gray(), name) for name in VARIANT_TOLERANCE}
    for data in files.values():
        decode_dicom(data)  # the first use of each decoder imports its plugin; that may read files

    def refuse_open(*args, **kwargs):
        raise AssertionError(f"decode_dicom opened a file: {args[:1]}")

    monkeypatch.setattr(builtins, "open", refuse_open)
    monkeypatch.setattr(io, "open", refuse_open)
    for data in files.values():
        assert decode_dicom(data)[0].shape == (HEIGHT, WIDTH)


# --- Refusals ------------------------------------------------------------------------------------


def rgb_image() -> np.ndarray:
    return np.stack([sample_gray(), sample_gray() // 2, 255 - sample_gray()], axis=-1)


def truncated_in_pixel_data() -> bytes:
    data = make_test_dicom(sample_gray())
    return data[: len(data) - 1000]


def truncated_before_pixel_data() -> bytes:
    data = make_test_dicom(sample_gray())
    return data[: data.index(b"\xe0\x7f\x10\x00")]


def random_after_preamble() -> bytes:
    return bytes(128) + b"DICM" + np.random.default_rng(7).integers(0, 256, 4000, dtype=np.uint8).tobytes()


def random_after_file_meta() -> bytes:
    data = make_test_dicom(sample_gray())
    end_of_meta = data.index(b"\x08\x00\x16\x00")  # (0008,0016) SOP Class UID: the first data set element
    return data[:end_of_meta] + np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8).tobytes()


def unknown_transfer_syntax() -> bytes:
    data = make_test_dicom(sample_gray())
    return data.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.99", 1)


def deflated() -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(make_test_dicom(sample_gray())))
    dataset.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def edited(data: bytes, **elements: object) -> bytes:
    """The file with some elements set to other values (bypassing the checks of ``set_pixel_data``)."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def oversized() -> bytes:
    """Rows x Columns of 60 megapixels with a few bytes of pixel data: refused before decoding."""
    return edited(make_test_dicom(sample_gray()), Rows=10_000, Columns=6_000)


def pixels_32bit() -> bytes:
    wide = sample_gray().astype(np.uint32) * 1000
    return edited(make_test_dicom(sample_gray()), BitsAllocated=32, BitsStored=32, HighBit=31, PixelData=wide.tobytes())


MODALITY_ONLY = "the models read only chest radiographs (CR or DX)."
REFUSALS = {
    "ct": (
        lambda: make_test_dicom(sample_gray().astype(np.int16) - 1024, modality="CT"),
        f"This DICOM file is a CT image; {MODALITY_ONLY}",
    ),
    "mr": (lambda: make_test_dicom(sample_gray(), modality="MR"), f"This DICOM file is an MR image; {MODALITY_ONLY}"),
    "us-colour": (
        lambda: make_test_dicom(rgb_image(), modality="US", photometric="RGB"),
        f"This DICOM file is an ultrasound (US) image; {MODALITY_ONLY}",
    ),
    "unknown-modality": (
        lambda: make_test_dicom(sample_gray(), modality="QUORRA"),
        f"This DICOM file is an image of an unrecognised modality; {MODALITY_ONLY}",
    ),
    "no-modality": (
        lambda: make_test_dicom(sample_gray(), modality=None),
        f"This DICOM file does not say which modality it is; {MODALITY_ONLY}",
    ),
    "dx-colour": (
        lambda: make_test_dicom(rgb_image(), photometric="RGB"),
        "This DICOM file is a colour image (photometric interpretation RGB, 3 samples per pixel); "
        "chest radiographs are grayscale (MONOCHROME1 or MONOCHROME2).",
    ),
    "multi-frame": (
        lambda: make_test_dicom(np.stack([sample_gray()] * 3)),
        "This DICOM file holds 3 frames (a multi-frame image); please upload a single-frame chest radiograph.",
    ),
    "structured-report": (
        lambda: make_test_dicom(None, modality="SR"),
        "This DICOM file holds no image (it is a structured report (SR)); please upload a chest radiograph (CR or DX).",
    ),
    "32-bit": (
        pixels_32bit,
        "This DICOM image stores 32 of 32 bits per pixel; only 8- or 16-bit grayscale pixels, as in "
        "radiographs, can be read.",
    ),
    "oversized": (
        oversized,
        "This DICOM image is 6000x10000 px (60 megapixels); the limit is 50 megapixels.",
    ),
    "truncated-pixel-data": (
        truncated_in_pixel_data,
        "The image data in this DICOM file is corrupt or truncated and cannot be decoded.",
    ),
    "truncated-header": (
        truncated_before_pixel_data,
        "This DICOM file is truncated or corrupt: its image data is missing.",
    ),
    "random-after-preamble": (random_after_preamble, "This DICOM file is corrupt or truncated and cannot be read."),
    "random-after-file-meta": (
        random_after_file_meta,
        "This DICOM file is corrupt or truncated and cannot be read.",
    ),
    "deflated": (
        deflated,
        "This DICOM file uses the transfer syntax Deflated Explicit VR Little Endian, which cannot be decoded here. "
        "Supported: uncompressed, RLE, JPEG baseline, extended and lossless, JPEG-LS and JPEG 2000.",
    ),
    "unknown-transfer-syntax": (
        unknown_transfer_syntax,
        "This DICOM file uses the transfer syntax unknown (1.2.840.10008.1.2.99), which cannot be decoded here. "
        "Supported: uncompressed, RLE, JPEG baseline, extended and lossless, JPEG-LS and JPEG 2000.",
    ),
    "infinite-after-rescale": (
        lambda: make_test_dicom(sample_gray().astype(np.uint16) * 200, rescale=(1e308, 0)),
        "This DICOM file's intensity settings (rescale, window or VOI LUT) produce invalid values "
        "(NaN or infinity); its image cannot be read.",
    ),
    "zero-rescale-slope": (
        lambda: make_test_dicom(sample_gray(), rescale=(0, 100)),
        "This DICOM file's intensity settings map every pixel to the same value; there is no image to read.",
    ),
    "zero-window-width": (
        lambda: make_test_dicom(sample_gray(), window=(128, 0)),
        "This DICOM file's intensity settings (rescale, window or VOI LUT) are invalid, so its image cannot be "
        "shown correctly.",
    ),
    "not-dicom": (
        lambda: bytes(200),
        "This file is not a DICOM file (there is no 'DICM' marker at byte 128).",
    ),
}


def jpeg_frame_larger_than_declared(transfer_syntax: str) -> bytes:
    """A 2000 x 1500 codestream in a file that declares 96 x 80 pixels."""
    big = make_test_dicom(cv2.resize(sample_gray(), (1500, 2000)), transfer_syntax=transfer_syntax)
    return edited(big, Rows=HEIGHT, Columns=WIDTH)


@pytest.mark.parametrize("case", ["oversized", "bigger-jpeg-codestream", "bigger-jpeg2000-codestream"])
def test_size_limits_are_checked_before_any_pixel_is_decoded(case, monkeypatch):
    """Declared size over 50 megapixels, or a codestream larger than declared: refused without decoding."""
    build = {
        "oversized": oversized,
        "bigger-jpeg-codestream": lambda: jpeg_frame_larger_than_declared(uid.JPEGBaseline8Bit),
        "bigger-jpeg2000-codestream": lambda: jpeg_frame_larger_than_declared(uid.JPEG2000Lossless),
    }[case]
    data = build()
    decodes = []

    def record_decoding(self):
        decodes.append(self)
        raise RuntimeError("pixels were decoded")

    monkeypatch.setattr(Dataset, "pixel_array", property(record_decoding))
    with pytest.raises(DicomRejected) as caught:
        decode_dicom(data)
    assert decodes == []
    expected = REFUSALS["oversized"][1] if case == "oversized" else REFUSALS["truncated-pixel-data"][1]
    assert str(caught.value) == expected


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_have_a_clear_message_and_no_chained_traceback(case):
    """Each unusable file is refused with its fixed, user-facing message; no library error is chained to it."""
    build, message = REFUSALS[case]
    with pytest.raises(DicomRejected) as caught:
        decode_dicom(build())
    assert str(caught.value) == message
    assert isinstance(caught.value, ImageRejected)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ or caught.value.__context__ is None


# --- Privacy -------------------------------------------------------------------------------------

IDENTIFIERS = {
    "PatientName": "Quorrawick^Zelphine",
    "PatientID": "PID83472911",
    "PatientBirthDate": "19470312",
    "PatientAddress": "12 Marrowbone Lane",
    "AccessionNumber": "ACC99887766",
    "InstitutionName": "Saint Qwertyuiop Hospital",
    "InstitutionAddress": "Frobisher Road",
    "ReferringPhysicianName": "Plumtree^Ignatius",
    "OperatorsName": "Vantablack^Odile",
    "StationName": "STATIONLEAKY",
    "StudyDescription": "CHEST XYZZY STUDY",
    "StudyID": "STUDY7741",
    "StudyDate": "20230517",
    "SeriesDescription": "SERIES PLUGH",
    "ImageComments": "comment Fnordling",
    "PatientComments": "allergic to Snarkberries",
}
MARKERS = (
    "Quorrawick",
    "Zelphine",
    "83472911",
    "19470312",
    "Marrowbone",
    "99887766",
    "Qwertyuiop",
    "Frobisher",
    "Plumtree",
    "Vantablack",
    "STATIONLEAKY",
    "XYZZY",
    "7741",
    "20230517",
    "PLUGH",
    "Fnordling",
    "Snarkberries",
    "Grimblethorpe",
)


def identified(**options) -> bytes:
    """A file full of identifiers (one inside a sequence too)."""
    other = Dataset()
    other.PatientID = "OTHER-Grimblethorpe"
    identifiers = {**IDENTIFIERS, "OtherPatientIDsSequence": DicomSequence([other])}
    return make_test_dicom(options.pop("pixels", sample_gray()), identifiers=identifiers, **options)


def leaks(text: str) -> set[str]:
    return {marker for marker in MARKERS if marker.lower() in text.lower()}


PRIVACY_CASES = {
    "accepted": lambda: identified(window=(128, 256)),
    "ct": lambda: identified(modality="CT"),
    "identifier-as-modality": lambda: identified(modality="QUORRAWICK"),
    "identifier-as-view-position": lambda: identified(view_position="QUORRAWICK"),
    "truncated": lambda: identified()[:-1000],
    "unsupported-syntax": lambda: identified().replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.99", 1),
    "structured-report": lambda: identified(pixels=None, modality="SR"),
}


@pytest.mark.parametrize("case", sorted(PRIVACY_CASES))
def test_no_identifier_reaches_notes_metadata_errors_or_logs(case, caplog, capsys):
    """Identifiers in the file never appear in what is returned, raised, logged or printed.

    The search is first shown to find every marker in the file itself, so a clean result means
    something. pydicom's debug logging is switched on during the decode: even then, the elements
    that are never read cannot be logged.
    """
    data = PRIVACY_CASES[case]()
    text_of_file = data.decode("latin-1") + str(pydicom.dcmread(io.BytesIO(data), force=True))
    assert leaks(text_of_file) == set(MARKERS), "the leak search must find every marker in the file"

    caplog.set_level(logging.DEBUG)
    pydicom.config.debug(True, default_handler=False)
    try:
        result = decode_dicom(data)
        said = repr(result[1:]) + repr(result)
    except DicomRejected as error:
        said = str(error) + repr(error) + "".join(traceback.format_exception(error))
    finally:
        pydicom.config.debug(False)
    captured = capsys.readouterr()
    assert any(record.name == "pydicom" for record in caplog.records), "pydicom's debug log was not captured"
    assert leaks(said) == set()
    # pydicom's debug log shows the value of each element it reads; Modality and View Position are read,
    # so a name planted there may show in that (opt-in) log, never in what the module says.
    allowed_in_debug_log = {"Quorrawick"} if case.startswith("identifier-as") else set()
    assert leaks(caplog.text + captured.out + captured.err) <= allowed_in_debug_log
    if case == "accepted":
        assert "View position" in dict(result[2])
    if case == "identifier-as-view-position":
        assert "View position" not in dict(result[2])


# --- Through imaging.read_xray -------------------------------------------------------------------


def test_read_xray_reads_dicom_through_this_module():
    """``read_xray`` sniffs DICM at byte 128 and returns this module's gray, notes and metadata."""
    data = dicom_variant(sample_gray(), "mono1_12bit_window")
    xray = read_xray(data, "no-extension")
    gray, notes, metadata = decode_dicom(data)
    assert xray.source_format == "DICOM"
    np.testing.assert_array_equal(xray.gray, gray)
    assert xray.notes == notes
    assert set(metadata) <= set(xray.metadata)


def test_read_xray_refuses_a_ct_with_the_dicom_message():
    """A refusal from this module reaches ``read_xray`` callers as an ``ImageRejected`` with the same words."""
    with pytest.raises(ImageRejected) as caught:
        read_xray(make_test_dicom(sample_gray(), modality="CT"), "scan.dcm")
    assert str(caught.value) == REFUSALS["ct"][1]
