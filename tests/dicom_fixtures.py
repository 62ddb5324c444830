"""Generators of small DICOM files for tests: built in memory from arrays, nothing committed.

``make_test_dicom`` writes one DICOM file (bytes) from a pixel array in any encoding the app
supports except JPEG-LS (no JPEG-LS encoder is installed: ``resample_pydicom_test_file`` re-wraps
the JPEG-LS codestreams that ship with pydicom instead). ``dicom_variant`` encodes the same 8-bit
image in each supported way so that decoding gives those 8-bit pixels back (exactly for lossless
variants, within ``VARIANT_TOLERANCE`` for lossy ones): what a "DICOM gives the same probability as
the PNG of the same pixels" test needs.

Usage (from a test; ``tests/`` is on ``sys.path``):
    from dicom_fixtures import dicom_variant, make_test_dicom
    data = make_test_dicom(gray, window=(2048, 4096), transfer_syntax=RLELossless)
    for name in VARIANT_TOLERANCE:
        data = dicom_variant(gray, name)
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import pydicom
from PIL import Image
from pydicom import uid
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence

_SOP_CLASS_BY_MODALITY = {
    "DX": uid.DigitalXRayImageStorageForPresentation,
    "CR": uid.ComputedRadiographyImageStorage,
    "CT": uid.CTImageStorage,
    "MR": uid.MRImageStorage,
    "US": uid.UltrasoundImageStorage,
    "SR": uid.BasicTextSRStorage,
}
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422")

# Maximum absolute difference (gray levels) between ``dicom_variant(gray, name)`` decoded and ``gray``,
# and the mean absolute difference allowed for the lossy ones.
VARIANT_TOLERANCE: dict[str, tuple[int, float]] = {
    "mono2_8bit_explicit": (0, 0.0),
    "mono2_8bit_implicit": (0, 0.0),
    "mono1_12bit_window": (0, 0.0),
    "rescaled_16bit_window": (0, 0.0),
    "big_endian_16bit_window": (0, 0.0),
    "rle_12bit_full_range": (0, 0.0),
    "jpeg2000_lossless": (0, 0.0),
    "jpeg2000_lossy": (24, 2.0),
    "jpeg_baseline": (24, 1.5),
    "jpeg_extended_8bit": (24, 1.5),
    "jpeg_lossless_sv1_12bit_window": (0, 0.0),
    "jpeg_lossless_predictor7": (0, 0.0),
}


def make_test_dicom(
    pixels: np.ndarray | None,
    *,
    modality: str | None = "DX",
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    window: tuple[float, float] | Sequence[tuple[float, float]] | None = None,
    voi_lut_function: str | None = None,
    voi_lut: np.ndarray | None = None,
    rescale: tuple[float, float] | None = None,
    transfer_syntax: str = uid.ExplicitVRLittleEndian,
    view_position: str | None = "PA",
    identifiers: Mapping[str, object] | None = None,
    jpeg_quality: int = 95,
    j2k_compression_ratio: float | None = None,
    jpeg_lossless_predictor: int | None = None,
) -> bytes:
    """Write a DICOM Part 10 file, in memory, from a pixel array.

    Args:
        pixels: ``(rows, cols)`` uint8/uint16/int16 grayscale; ``(frames, rows, cols)`` for a
            multi-frame image; ``(rows, cols, 3)`` uint8 with ``photometric="RGB"`` for colour;
            ``None`` for an object without pixels (a structured report).
        modality: The *Modality* code, or ``None`` to leave it out.
        photometric: *Photometric Interpretation* (MONOCHROME1, MONOCHROME2, RGB).
        bits_stored: *Bits Stored*; defaults to the dtype's size.
        window: ``(center, width)`` or a list of them (several windows, the first is the default).
        voi_lut_function: *VOI LUT Function* (LINEAR, LINEAR_EXACT, SIGMOID).
        voi_lut: The data of a one-item *VOI LUT Sequence* (first mapped value 0, 16-bit entries).
        rescale: ``(slope, intercept)``.
        transfer_syntax: Any supported syntax but JPEG-LS; JPEG baseline and extended need uint8 pixels.
        view_position: *View Position*, or ``None`` to leave it out.
        identifiers: Extra elements by keyword (``{"PatientName": "Doe^Jane"}``), for privacy tests.
        jpeg_quality: Pillow JPEG quality for the JPEG baseline and extended syntaxes.
        j2k_compression_ratio: Compression ratio for lossy JPEG 2000 (``transfer_syntax=JPEG2000``).
        jpeg_lossless_predictor: Predictor (1-7) for JPEG lossless; 1 for the SV1 syntax.

    Returns:
        The file's bytes (``DICM`` at offset 128).
    """
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.SOPClassUID = _SOP_CLASS_BY_MODALITY.get(modality or "", uid.SecondaryCaptureImageStorage)
    dataset.SOPInstanceUID = uid.generate_uid()
    if modality is not None:
        dataset.Modality = modality
    if view_position is not None:
        dataset.ViewPosition = view_position
    for keyword, value in (identifiers or {}).items():
        setattr(dataset, keyword, value)
    if pixels is None:
        dataset.file_meta.TransferSyntaxUID = transfer_syntax
        return _file_bytes(dataset)
    default_bits = 8 * np.dtype(pixels.dtype).itemsize
    dataset.set_pixel_data(pixels, photometric, bits_stored or default_bits)
    _add_presentation(dataset, window, voi_lut_function, voi_lut, rescale)
    _encode(dataset, pixels, transfer_syntax, jpeg_quality, j2k_compression_ratio, jpeg_lossless_predictor)
    return _file_bytes(dataset)


def dicom_variant(gray: np.ndarray, name: str) -> bytes:
    """Encode an 8-bit image so that decoding it gives ``gray`` back (within ``VARIANT_TOLERANCE[name]``).

    Args:
        gray: A 2-D uint8 image.
        name: One of ``VARIANT_TOLERANCE``.

    Returns:
        The DICOM file's bytes.
    """
    wide = gray.astype(np.uint16)
    if name == "mono2_8bit_explicit":
        return make_test_dicom(gray)
    if name == "mono2_8bit_implicit":
        return make_test_dicom(gray, transfer_syntax=uid.ImplicitVRLittleEndian)
    if name == "mono1_12bit_window":
        # Stored 8..4088, inverted; the window maps 8 -> 0 and 4088 -> 4095 exactly (LINEAR, PS3.3 C.11.2.1.2).
        return make_test_dicom((255 - wide) * 16 + 8, photometric="MONOCHROME1", bits_stored=12, window=(2048.5, 4081))
    if name == "rescaled_16bit_window":
        # Stored 1000..52000; rescaled value = 0.5 * stored - 500 = 100 * gray; the window spans 0..25500.
        return make_test_dicom(wide * 200 + 1000, bits_stored=16, rescale=(0.5, -500), window=(12750.5, 25501))
    if name == "big_endian_16bit_window":
        return make_test_dicom(
            wide * 16, bits_stored=12, window=(2040.5, 4081), transfer_syntax=uid.ExplicitVRBigEndian
        )
    if name == "rle_12bit_full_range":
        # No window: the full 12-bit range 0..4095 maps to 0..255, so store gray * 4095 / 255.
        stored = np.rint(gray * (4095 / 255)).astype(np.uint16)
        return make_test_dicom(stored, bits_stored=12, transfer_syntax=uid.RLELossless)
    if name == "jpeg2000_lossless":
        return make_test_dicom(gray, transfer_syntax=uid.JPEG2000Lossless)
    if name == "jpeg2000_lossy":
        return make_test_dicom(gray, transfer_syntax=uid.JPEG2000, j2k_compression_ratio=5)
    if name == "jpeg_baseline":
        return make_test_dicom(gray, transfer_syntax=uid.JPEGBaseline8Bit)
    if name == "jpeg_extended_8bit":
        return make_test_dicom(gray, transfer_syntax=uid.JPEGExtended12Bit)
    if name == "jpeg_lossless_sv1_12bit_window":
        return make_test_dicom(wide * 16, bits_stored=12, window=(2040.5, 4081), transfer_syntax=uid.JPEGLosslessSV1)
    if name == "jpeg_lossless_predictor7":
        return make_test_dicom(gray, transfer_syntax=uid.JPEGLossless, jpeg_lossless_predictor=7)
    raise ValueError(f"Unknown DICOM variant {name!r}; choose one of {sorted(VARIANT_TOLERANCE)}.")


def resample_pydicom_test_file(name: str, **elements: object) -> tuple[bytes, np.ndarray]:
    """Re-wrap the pixel data of a file shipped with pydicom as a DX chest radiograph.

    Used for syntaxes no installed library can encode (JPEG-LS, 12-bit JPEG extended): the
    codestream is kept byte for byte, the identifying and non-image elements are dropped.

    Args:
        name: A file in ``pydicom/data/test_files`` (e.g. ``"MR_small_jpeg_ls_lossless.dcm"``).
        **elements: Extra elements by keyword (e.g. ``WindowCenter=1136``).

    Returns:
        ``(dicom_bytes, stored)``: the new file and pydicom's own decoding of the original pixels.
    """
    source = pydicom.dcmread(get_testdata_file(name))
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = source.file_meta.TransferSyntaxUID
    dataset.SOPClassUID = uid.DigitalXRayImageStorageForPresentation
    dataset.SOPInstanceUID = uid.generate_uid()
    dataset.Modality = "DX"
    for keyword in (
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "PixelData",
    ):
        dataset[keyword] = source[keyword]
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    return _file_bytes(dataset), source.pixel_array


def encode_jpeg_lossless(pixels: np.ndarray, precision: int, predictor: int = 1) -> bytes:
    """A minimal JPEG lossless (ITU T.81 process 14, Huffman) codestream of a 2-D image.

    No installed library encodes lossless JPEG, so the tests carry this small encoder: one
    component, point transform 0, no restart intervals, one Huffman table in which every
    difference category 0..16 has a 5-bit code.

    Args:
        pixels: A 2-D unsigned integer array with values below ``2**precision``.
        precision: Sample precision in bits (2-16).
        predictor: The selection value 1-7 (1 is the DICOM "SV1" syntax).

    Returns:
        The codestream, from SOI to EOI.
    """
    values = pixels.astype(np.int64)
    rows, columns = values.shape
    prediction = np.empty_like(values)
    prediction[0, 0] = 1 << (precision - 1)
    prediction[0, 1:] = values[0, :-1]
    prediction[1:, 0] = values[:-1, 0]
    left, above, corner = values[1:, :-1], values[:-1, 1:], values[:-1, :-1]
    predictors = {
        1: left,
        2: above,
        3: corner,
        4: left + above - corner,
        5: left + ((above - corner) >> 1),
        6: above + ((left - corner) >> 1),
        7: (left + above) >> 1,
    }
    prediction[1:, 1:] = predictors[predictor]
    differences = (values - prediction) % 65536
    differences = np.where(differences > 32768, differences - 65536, differences)
    bits = "".join(_difference_bits(int(d)) for d in differences.ravel())
    bits += "1" * (-len(bits) % 8)
    entropy = int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""
    entropy = entropy.replace(b"\xff", b"\xff\x00")
    start_of_frame = bytes([precision]) + rows.to_bytes(2, "big") + columns.to_bytes(2, "big") + b"\x01\x01\x11\x00"
    huffman_table = b"\x00" + bytes([0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17))
    start_of_scan = b"\x01\x01\x00" + bytes([predictor, 0, 0])
    return (
        b"\xff\xd8"
        + _marker_segment(0xC3, start_of_frame)
        + _marker_segment(0xC4, huffman_table)
        + _marker_segment(0xDA, start_of_scan)
        + entropy
        + b"\xff\xd9"
    )


def _difference_bits(difference: int) -> str:
    """The 5-bit category code and the additional bits of one difference (T.81 H.1.2.2)."""
    category = abs(difference).bit_length()
    code = format(category, "05b")
    if category in (0, 16):
        return code
    extra = difference if difference > 0 else difference + (1 << category) - 1
    return code + format(extra, f"0{category}b")


def _marker_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _add_presentation(
    dataset: Dataset,
    window: tuple[float, float] | Sequence[tuple[float, float]] | None,
    voi_lut_function: str | None,
    voi_lut: np.ndarray | None,
    rescale: tuple[float, float] | None,
) -> None:
    """Add the modality LUT (rescale) and VOI (window, VOI LUT) elements."""
    if rescale is not None:
        dataset.RescaleSlope, dataset.RescaleIntercept = rescale
        dataset.RescaleType = "US"
    if window is not None:
        windows = [window] if isinstance(window[0], (int, float)) else list(window)
        centers, widths = [w[0] for w in windows], [w[1] for w in windows]
        dataset.WindowCenter = centers if len(centers) > 1 else centers[0]
        dataset.WindowWidth = widths if len(widths) > 1 else widths[0]
    if voi_lut_function is not None:
        dataset.VOILUTFunction = voi_lut_function
    if voi_lut is not None:
        item = Dataset()
        item.add_new(0x00283002, "US", [len(voi_lut) % 65536, 0, 16])
        item.add_new(0x00283006, "US", [int(v) for v in voi_lut])
        dataset.VOILUTSequence = DicomSequence([item])


def _encode(
    dataset: Dataset,
    pixels: np.ndarray,
    transfer_syntax: str,
    jpeg_quality: int,
    j2k_compression_ratio: float | None,
    jpeg_lossless_predictor: int | None,
) -> None:
    """Store the pixel data in ``transfer_syntax``."""
    transfer_syntax = uid.UID(transfer_syntax)
    if transfer_syntax in (uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian):
        dataset.file_meta.TransferSyntaxUID = transfer_syntax
    elif transfer_syntax == uid.ExplicitVRBigEndian:
        dataset.file_meta.TransferSyntaxUID = transfer_syntax
        dataset.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
    elif transfer_syntax == uid.RLELossless:
        dataset.compress(transfer_syntax)
    elif transfer_syntax in (uid.JPEG2000Lossless, uid.JPEG2000):
        ratios = [j2k_compression_ratio] if j2k_compression_ratio else None
        dataset.compress(transfer_syntax, encoding_plugin="pylibjpeg", j2k_cr=ratios)
    elif transfer_syntax in (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit):
        if pixels.dtype != np.uint8 or pixels.ndim != 2:
            raise ValueError("JPEG baseline/extended fixtures need 2-D uint8 pixels (Pillow encodes 8-bit only).")
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=jpeg_quality)
        _set_encapsulated(dataset, buffer.getvalue(), transfer_syntax, lossy=True)
    elif transfer_syntax in (uid.JPEGLossless, uid.JPEGLosslessSV1):
        predictor = jpeg_lossless_predictor or 1
        if transfer_syntax == uid.JPEGLosslessSV1 and predictor != 1:
            raise ValueError("The JPEG lossless SV1 syntax means predictor 1.")
        codestream = encode_jpeg_lossless(pixels, int(dataset.BitsStored), predictor)
        _set_encapsulated(dataset, codestream, transfer_syntax, lossy=False)
    else:
        raise ValueError(
            f"No encoder for {transfer_syntax.name} in the fixtures (JPEG-LS: use resample_pydicom_test_file)."
        )


def _set_encapsulated(dataset: Dataset, frame: bytes, transfer_syntax: uid.UID, *, lossy: bool) -> None:
    dataset.PixelData = encapsulate([frame])
    dataset["PixelData"].VR = "OB"
    dataset["PixelData"].is_undefined_length = True
    dataset.file_meta.TransferSyntaxUID = transfer_syntax
    if lossy:
        dataset.LossyImageCompression = "01"


def _file_bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
