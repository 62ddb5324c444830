"""DICOM chest radiographs (CR, DX) to the contract's 8-bit grayscale, with notes and technical metadata.

The file is read from memory with pydicom (never written to disk), and only the technical elements
listed in ``_TAGS_READ`` are parsed: patient, study and every other identifying element is skipped
unread, so no identifier can end up in a note, the metadata, an exception or a log.

Checks, in order, each refusal a ``DicomRejected`` whose message is meant for the user:
the transfer syntax (from the file meta, before the data set is parsed, so that Deflated, whose
inflation pydicom does not bound, is refused before any decompression), that the object has pixels,
that its modality is CR or DX, a single frame, grayscale (one sample, MONOCHROME1 or MONOCHROME2),
8 or 16 bits allocated, at most ``imaging.MAX_PIXELS`` (50 megapixels), and that a JPEG or JPEG 2000
codestream declares the same size as the file (decoders allocate what the codestream says). All of
these run before any pixel is decoded.

Transfer syntaxes (``SUPPORTED_TRANSFER_SYNTAXES``, each one exercised by ``tests/test_dicom.py``):
implicit and explicit VR little endian, explicit VR big endian, RLE lossless (pydicom), JPEG
baseline and extended (Pillow or pylibjpeg-libjpeg), JPEG lossless (process 14, any predictor, and
SV1), JPEG-LS lossless and near-lossless (pylibjpeg-libjpeg), JPEG 2000 lossless and lossy
(pylibjpeg-openjpeg). High-throughput JPEG 2000 is decodable by openjpeg but refused: nothing
installed can encode a test file for it.

Pixel pipeline (DICOM PS3.3 C.11 and PS3.4 N.2, the order a viewer follows):

1. Modality LUT: *Rescale Slope* / *Rescale Intercept* (or a *Modality LUT Sequence*), with
   ``pydicom.pixels.apply_modality_lut``.
2. VOI: the **first** *VOI LUT Sequence* item if there is one, otherwise the **first** *Window
   Center* / *Window Width* pair (with its *VOI LUT Function*: LINEAR, LINEAR_EXACT or SIGMOID), with
   ``apply_voi`` / ``apply_windowing``. DICOM calls the further values "alternative views" (a bone
   or soft-tissue window); the first is the one viewers open with. A VOI LUT is preferred over a
   window when both are given, as pydicom's ``apply_voi_lut`` does by default: for CR and DX the LUT
   is the manufacturer's tuned, often non-linear, display curve, the window a linear approximation.
3. When the file gives neither, the **full stored range** (``0 .. 2**BitsStored - 1``, or the signed
   range, passed through the modality LUT) is used, not the image's own minimum and maximum: the
   result is then the same for every image of a device (no per-image contrast stretch that would
   amplify the noise of a nearly uniform image), and an 8-bit file maps to exactly its own pixels,
   so a DICOM and a PNG of the same pixels give the same input to the model.
4. The VOI output is scaled to 0..1 over its nominal range: the window's output range (as pydicom
   defines it), the VOI LUT's own minimum and maximum entry (many LUTs declare 16 bits but use 12),
   or the full stored range above.
5. MONOCHROME1 (low values shown white) is inverted, so that bone is bright as in the training
   images; then the result is rounded to 0..255 (uint8).

Non-finite values after the LUTs, or a range of zero width, are refused.

Usage:
    from pneumo_core.dicom import decode_dicom, looks_like_dicom
    if looks_like_dicom(data):
        gray, notes, metadata = decode_dicom(data)
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.filereader import read_dataset
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

from pneumo_core.imaging import MAX_PIXELS, ImageRejected


class DicomRejected(ImageRejected):
    """A DICOM file that is not a usable chest radiograph; ``str(error)`` is the user-facing reason."""


ACCEPTED_MODALITIES = ("CR", "DX")

SUPPORTED_TRANSFER_SYNTAXES: tuple[uid.UID, ...] = (
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.RLELossless,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
)
_NATIVE_TRANSFER_SYNTAXES = (uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.ExplicitVRBigEndian)
# SOF0-3, 5-7, 9-11, 13-15 (T.81 table B.1) and SOF55, JPEG-LS (T.87).
_START_OF_FRAME_MARKERS = frozenset(
    {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7}
)
_LOSSY_TRANSFER_SYNTAXES = (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLSNearLossless, uid.JPEG2000)

# The only elements parsed; everything else (patient, study, equipment, ...) is skipped unread.
_TAGS_READ = (
    "SOPClassUID",
    "Modality",
    "ViewPosition",
    "LossyImageCompression",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "PixelData",
)

_MODALITY_NAMES = {
    "CR": "a computed radiograph (CR)",
    "DX": "a digital radiograph (DX)",
    "CT": "a CT image",
    "MR": "an MR image",
    "US": "an ultrasound (US) image",
    "MG": "a mammogram (MG)",
    "NM": "a nuclear medicine (NM) image",
    "PT": "a PET (PT) image",
    "XA": "an X-ray angiography (XA) image",
    "RF": "a fluoroscopy (RF) image",
    "RG": "a radiographic imaging (RG) image",
    "IO": "an intra-oral dental (IO) image",
    "PX": "a panoramic dental (PX) image",
    "DG": "a diaphanography (DG) image",
    "ES": "an endoscopy (ES) image",
    "XC": "an external camera photograph (XC)",
    "OP": "an ophthalmic photograph (OP)",
    "OPT": "an ophthalmic tomography (OPT) image",
    "SM": "a slide microscopy (SM) image",
    "GM": "a general microscopy (GM) image",
    "OT": "an image of modality 'other' (OT)",
    "SC": "a secondary capture (SC)",
    "SR": "a structured report (SR)",
    "RTIMAGE": "an RT image (RTIMAGE)",
    "RTPLAN": "an RT plan (RTPLAN)",
    "RTSTRUCT": "an RT structure set (RTSTRUCT)",
    "RTDOSE": "an RT dose (RTDOSE)",
    "RTRECORD": "an RT treatment record (RTRECORD)",
    "SEG": "a segmentation (SEG)",
    "REG": "a registration (REG)",
    "KO": "a key object selection (KO)",
    "PR": "a presentation state (PR)",
    "ECG": "an ECG waveform (ECG)",
    "DOC": "an encapsulated document (DOC)",
}
# Only these known code values are ever repeated back (a code string could otherwise carry a name).
_VIEW_POSITIONS = ("AP", "PA", "LL", "RL", "RLD", "LLD", "RLO", "LLO")
_PHOTOMETRIC_INTERPRETATIONS = (
    "MONOCHROME1",
    "MONOCHROME2",
    "PALETTE COLOR",
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_PARTIAL_420",
    "YBR_ICT",
    "YBR_RCT",
    "XYB",
)
_VOI_LUT_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
_IMAGE_STORAGE_CLASSES = (
    uid.ComputedRadiographyImageStorage,
    uid.DigitalXRayImageStorageForPresentation,
    uid.DigitalXRayImageStorageForProcessing,
)
_UID_STRING = re.compile(r"[0-9.]{1,64}")

_CORRUPT = "This DICOM file is corrupt or truncated and cannot be read."
_BAD_PIXELS = "The image data in this DICOM file is corrupt or truncated and cannot be decoded."
_BAD_LUTS = (
    "This DICOM file's intensity settings (rescale, window or VOI LUT) are invalid, "
    "so its image cannot be shown correctly."
)


def looks_like_dicom(data: bytes) -> bool:
    """Tell whether bytes are a DICOM file (the ``DICM`` prefix at offset 128 of the Part 10 format).

    Args:
        data: The raw bytes of an upload or a file.

    Returns:
        ``True`` when ``data[128:132] == b"DICM"``.
    """
    return data[128:132] == b"DICM"


def decode_dicom(data: bytes) -> tuple[np.ndarray, tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Decode a single-frame grayscale CR or DX DICOM file to the contract's 8-bit grayscale.

    Args:
        data: The raw bytes of a DICOM Part 10 file (``DICM`` at offset 128).

    Returns:
        ``(gray, notes, metadata)``: a 2-D uint8 array in display orientation (bone bright),
        user-facing sentences on how it was converted, and technical ``(field, value)`` pairs
        (modality, view position, size, bits stored, photometric interpretation, transfer
        syntax). Neither ever holds a patient or study identifier.

    Raises:
        DicomRejected: If the file is not DICOM, is corrupt or truncated, uses an unsupported
            transfer syntax, has no pixels, is not CR or DX, is multi-frame or colour, is too large,
            or its intensity transforms give invalid values. The message never quotes the file.
    """
    if not looks_like_dicom(data):
        raise DicomRejected("This file is not a DICOM file (there is no 'DICM' marker at byte 128).")
    transfer_syntax = _checked_transfer_syntax(data)
    dataset = _read_technical_elements(data)
    _check_is_radiograph(dataset)
    _check_pixel_format(dataset)
    _check_codestream_size(dataset, transfer_syntax)
    stored = _decode_pixels(dataset)
    gray, notes = _to_display_gray(stored, dataset)
    if transfer_syntax in _LOSSY_TRANSFER_SYNTAXES or dataset.get("LossyImageCompression") == "01":
        notes = (*notes, "The pixels were stored with lossy compression, so fine detail may have been lost.")
    return gray, notes, _technical_metadata(dataset, transfer_syntax)


def _checked_transfer_syntax(data: bytes) -> uid.UID:
    """Read the transfer syntax from the file meta group only, and refuse the unsupported ones."""
    stream = io.BytesIO(data)
    stream.seek(132)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = read_dataset(stream, is_implicit_VR=False, is_little_endian=True, stop_when=_after_file_meta_group)
            value = meta.get("TransferSyntaxUID")
    except Exception:  # any parser failure is a corrupt file; its message may quote the file
        raise DicomRejected(_CORRUPT) from None
    if not isinstance(value, str) or not _UID_STRING.fullmatch(value.strip("\0 ")):
        raise DicomRejected(_CORRUPT)
    transfer_syntax = uid.UID(value.strip("\0 "))
    if transfer_syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        known = transfer_syntax.name if transfer_syntax.is_transfer_syntax else f"unknown ({transfer_syntax})"
        raise DicomRejected(
            f"This DICOM file uses the transfer syntax {known}, which cannot be decoded here. Supported: "
            "uncompressed, RLE, JPEG baseline, extended and lossless, JPEG-LS and JPEG 2000."
        )
    return transfer_syntax


def _after_file_meta_group(tag: pydicom.tag.BaseTag, vr: str | None, length: int) -> bool:
    """``read_dataset`` stop condition: the first element after group 0002."""
    return tag.group != 0x0002


def _read_technical_elements(data: bytes) -> Dataset:
    """Parse only the elements in ``_TAGS_READ`` (and the file meta group)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(data), specific_tags=list(_TAGS_READ))
    except Exception:  # any parser failure is a corrupt file; its message may quote the file
        raise DicomRejected(_CORRUPT) from None


def _check_is_radiograph(dataset: Dataset) -> None:
    """Refuse objects without pixels and modalities other than CR and DX."""
    modality = _code_value(dataset, "Modality")
    has_pixels = any(keyword in dataset for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if not has_pixels:
        if "SOPClassUID" not in dataset:  # required in every DICOM object: what was parsed is not one
            raise DicomRejected(_CORRUPT)
        if "Rows" in dataset or dataset.get("SOPClassUID") in _IMAGE_STORAGE_CLASSES:
            raise DicomRejected("This DICOM file is truncated or corrupt: its image data is missing.")
        what = _describe_modality(modality) if modality else "an object of unstated modality"
        raise DicomRejected(
            f"This DICOM file holds no image (it is {what}); please upload a chest radiograph (CR or DX)."
        )
    if not modality:
        raise DicomRejected(
            "This DICOM file does not say which modality it is; the models read only chest radiographs (CR or DX)."
        )
    if modality not in ACCEPTED_MODALITIES:
        raise DicomRejected(
            f"This DICOM file is {_describe_modality(modality)}; the models read only chest radiographs (CR or DX)."
        )
    if "PixelData" not in dataset:
        raise DicomRejected("This DICOM image stores floating-point pixels, which radiographs do not use.")


def _check_pixel_format(dataset: Dataset) -> None:
    """Refuse multi-frame, colour, unusual bit depths and oversized images before decoding pixels."""
    try:
        frames = int(dataset.get("NumberOfFrames") or 1)
        samples = int(dataset.get("SamplesPerPixel") or 1)
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        bits_allocated, bits_stored = int(dataset.BitsAllocated), int(dataset.BitsStored)
        photometric = _photometric(dataset)
    except (AttributeError, TypeError, ValueError):
        raise DicomRejected(
            "This DICOM file lacks required image attributes (size, bit depth or photometric interpretation); "
            "it may be truncated or corrupt."
        ) from None
    if frames > 1:
        raise DicomRejected(
            f"This DICOM file holds {frames} frames (a multi-frame image); "
            "please upload a single-frame chest radiograph."
        )
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        shown = photometric or "unstated or unrecognised"
        raise DicomRejected(
            f"This DICOM file is a colour image (photometric interpretation {shown}, {samples} samples per "
            "pixel); chest radiographs are grayscale (MONOCHROME1 or MONOCHROME2)."
        )
    if bits_allocated not in (8, 16) or not 1 <= bits_stored <= bits_allocated:
        raise DicomRejected(
            f"This DICOM image stores {bits_stored} of {bits_allocated} bits per pixel; only 8- or 16-bit "
            "grayscale pixels, as in radiographs, can be read."
        )
    if rows < 1 or columns < 1:
        raise DicomRejected(f"This DICOM image is {columns}x{rows} px: it has no pixels to read.")
    if rows * columns > MAX_PIXELS:
        raise DicomRejected(
            f"This DICOM image is {columns}x{rows} px ({rows * columns / 1e6:.0f} megapixels); "
            f"the limit is {MAX_PIXELS / 1e6:.0f} megapixels."
        )


def _check_codestream_size(dataset: Dataset, transfer_syntax: uid.UID) -> None:
    """Refuse a JPEG or JPEG 2000 frame whose own size differs from Rows x Columns, before decoding it.

    The decoders allocate what the codestream declares, so without this check a file could claim
    100 x 100 pixels and make a decoder allocate gigabytes. RLE and native data are decoded into
    Rows x Columns, which ``_check_pixel_format`` has bounded.
    """
    if transfer_syntax in (uid.RLELossless, *_NATIVE_TRANSFER_SYNTAXES):
        return
    try:
        frame = get_frame(dataset.PixelData, 0, number_of_frames=1)
    except Exception:  # a broken encapsulation; pydicom's message is not for users
        raise DicomRejected(_BAD_PIXELS) from None
    is_jpeg_2000 = transfer_syntax in (uid.JPEG2000Lossless, uid.JPEG2000)
    size = _jpeg_2000_size(frame) if is_jpeg_2000 else _jpeg_size(frame)
    if size != (int(dataset.Rows), int(dataset.Columns)):
        raise DicomRejected(_BAD_PIXELS)


def _jpeg_size(frame: bytes) -> tuple[int, int] | None:
    """``(height, width)`` from the start-of-frame segment of a JPEG or JPEG-LS codestream (T.81 B.2.2)."""
    if not frame.startswith(b"\xff\xd8"):
        return None
    offset = 2
    while offset + 4 <= len(frame):
        if frame[offset] != 0xFF:
            return None
        marker = frame[offset + 1]
        if marker == 0xFF:  # a fill byte before a marker
            offset += 1
            continue
        if marker in _START_OF_FRAME_MARKERS:
            segment = frame[offset + 5 : offset + 9]  # Y (rows), then X (columns), 2 bytes each
            if len(segment) < 4:
                return None
            return int.from_bytes(segment[:2], "big"), int.from_bytes(segment[2:], "big")
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        offset += 2 + int.from_bytes(frame[offset + 2 : offset + 4], "big")
    return None


def _jpeg_2000_size(frame: bytes) -> tuple[int, int] | None:
    """``(height, width)`` from the SIZ segment of a JPEG 2000 codestream (T.800 A.5.1), JP2 box or not."""
    start = frame.find(b"\xff\x4f\xff\x51")
    if start < 0 or len(frame) < start + 24:
        return None
    width, height, x_offset, y_offset = (
        int.from_bytes(frame[start + at : start + at + 4], "big") for at in (8, 12, 16, 20)
    )
    return height - y_offset, width - x_offset


def _decode_pixels(dataset: Dataset) -> np.ndarray:
    """The stored values as a 2-D integer array, or a refusal when the pixel data is broken."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = dataset.pixel_array
    except Exception:  # decoders raise many types; their messages are not for users
        raise DicomRejected(_BAD_PIXELS) from None
    if stored.ndim != 2 or stored.shape != (int(dataset.Rows), int(dataset.Columns)):
        raise DicomRejected(_BAD_PIXELS)
    return stored


def _to_display_gray(stored: np.ndarray, dataset: Dataset) -> tuple[np.ndarray, tuple[str, ...]]:
    """Modality LUT, then VOI (first LUT, first window or the full stored range), MONOCHROME1 inverted, uint8."""
    notes: list[str] = []
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            values = apply_modality_lut(stored, dataset)
            notes.extend(_modality_lut_notes(dataset))
            if _has_voi_lut(dataset):
                shown, low, high = _apply_first_voi_lut(values, dataset)
                notes.append(_voi_lut_note(dataset))
            elif _has_window(dataset):
                shown, low, high = _apply_first_window(values, dataset)
                notes.append(_window_note(dataset))
            else:
                shown, (low, high) = values, _full_stored_range(dataset)
                if int(dataset.BitsStored) > 8 or (low, high) != (0.0, 255.0):
                    notes.append(
                        f"The file gives no window, so its full stored range ({low:g} to {high:g}) was mapped "
                        "to 8-bit gray; contrast may differ from your viewer."
                    )
            scaled = (np.asarray(shown, dtype=np.float64) - low) / (high - low)
    except DicomRejected:
        raise
    except Exception:  # pydicom's LUT errors name element values; the user gets a fixed reason
        raise DicomRejected(_BAD_LUTS) from None
    if not (np.isfinite(low) and np.isfinite(high) and np.isfinite(scaled).all()):
        raise DicomRejected(
            "This DICOM file's intensity settings (rescale, window or VOI LUT) produce invalid values "
            "(NaN or infinity); its image cannot be read."
        )
    if _photometric(dataset) == "MONOCHROME1":
        scaled = 1.0 - scaled
        notes.append(
            "The image is stored as MONOCHROME1 (low values shown white); it was inverted so that bone is "
            "bright, as in the training images."
        )
    gray = np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    return gray, tuple(notes)


def _has_voi_lut(dataset: Dataset) -> bool:
    sequence = dataset.get("VOILUTSequence")
    return bool(sequence) and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]


def _has_window(dataset: Dataset) -> bool:
    return dataset.get("WindowCenter") is not None and dataset.get("WindowWidth") is not None


def _apply_first_voi_lut(values: np.ndarray, dataset: Dataset) -> tuple[np.ndarray, float, float]:
    """The first VOI LUT item; its output range is the LUT's own lowest and highest entry."""
    descriptor = dataset.VOILUTSequence[0].LUTDescriptor
    entries, first_mapped = int(descriptor[0]) or 2**16, int(descriptor[1])
    # A LUT is indexed by integers: rescaled values are rounded first (pydicom would truncate them).
    indices = values if np.issubdtype(values.dtype, np.integer) else np.rint(values).astype(np.int64)
    lut = np.asarray(apply_voi(np.arange(first_mapped, first_mapped + entries), dataset, index=0))
    shown = apply_voi(indices, dataset, index=0)
    low, high = float(lut.min()), float(lut.max())
    _require_width(low, high)
    return shown, low, high


def _apply_first_window(values: np.ndarray, dataset: Dataset) -> tuple[np.ndarray, float, float]:
    """The first window; its output range found by passing -inf and +inf through the same function."""
    shown = apply_windowing(values, dataset, index=0)
    low, high = (float(v) for v in apply_windowing(np.array([-np.inf, np.inf]), dataset, index=0))
    _require_width(low, high)
    return shown, low, high


def _full_stored_range(dataset: Dataset) -> tuple[float, float]:
    """The lowest and highest value any stored pixel can have after the modality LUT."""
    bits = int(dataset.BitsStored)
    signed = int(dataset.get("PixelRepresentation") or 0) == 1
    every_stored = np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else np.arange(2**bits)
    possible = np.asarray(apply_modality_lut(every_stored, dataset), dtype=np.float64)
    low, high = float(possible.min()), float(possible.max())
    _require_width(low, high)
    return low, high


def _require_width(low: float, high: float) -> None:
    if np.isfinite(low) and np.isfinite(high) and not high > low:
        raise DicomRejected(
            "This DICOM file's intensity settings map every pixel to the same value; there is no image to read."
        )


def _modality_lut_notes(dataset: Dataset) -> list[str]:
    if dataset.get("ModalityLUTSequence"):
        return ["The file's modality LUT was applied first."]
    slope, intercept = dataset.get("RescaleSlope"), dataset.get("RescaleIntercept")
    if slope is None or intercept is None or (float(slope), float(intercept)) == (1.0, 0.0):
        return []
    return [f"Rescale slope {float(slope):g} and intercept {float(intercept):g} were applied first."]


def _voi_lut_note(dataset: Dataset) -> str:
    count = len(dataset.VOILUTSequence)
    which = "its VOI LUT" if count == 1 else f"the first of its {count} VOI LUTs"
    return f"Windowed with {which} (the file's display curve), then mapped to 8-bit gray."


def _window_note(dataset: Dataset) -> str:
    centers, widths = _as_list(dataset.WindowCenter), _as_list(dataset.WindowWidth)
    function = _known_code(dataset, "VOILUTFunction", _VOI_LUT_FUNCTIONS) or "LINEAR"
    shape = "" if function == "LINEAR" else f", {function.lower().replace('_', ' ')} function"
    window = f"center {float(centers[0]):g}, width {float(widths[0]):g}{shape}"
    if len(centers) == 1:
        return f"Windowed with the file's window ({window}), then mapped to 8-bit gray."
    return f"The file offers {len(centers)} windows; the first ({window}) was used, then mapped to 8-bit gray."


def _as_list(value: object) -> list:
    return list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]


def _code_value(dataset: Dataset, keyword: str) -> str | None:
    """A code-string element's first value, stripped, or ``None`` when absent or empty (for checks only)."""
    value = dataset.get(keyword)
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if value else None
    return (value.strip() or None) if isinstance(value, str) else None


def _known_code(dataset: Dataset, keyword: str, known: tuple[str, ...]) -> str | None:
    """A code-string value safe to show: one of ``known``, else ``None`` (a free value is never repeated)."""
    value = _code_value(dataset, keyword)
    return value if value in known else None


def _photometric(dataset: Dataset) -> str | None:
    return _known_code(dataset, "PhotometricInterpretation", _PHOTOMETRIC_INTERPRETATIONS)


def _describe_modality(modality: str) -> str:
    return _MODALITY_NAMES.get(modality, "an image of an unrecognised modality")


def _technical_metadata(dataset: Dataset, transfer_syntax: uid.UID) -> tuple[tuple[str, str], ...]:
    """The technical fields the app may show; never an identifier."""
    fields: list[tuple[str, str]] = [("Modality", _known_code(dataset, "Modality", ACCEPTED_MODALITIES) or "")]
    view_position = _known_code(dataset, "ViewPosition", _VIEW_POSITIONS)
    if view_position:
        fields.append(("View position", view_position))
    fields += [
        ("Size", f"{int(dataset.Columns)} x {int(dataset.Rows)} px"),
        ("Bits stored", str(int(dataset.BitsStored))),
        (
            "Photometric interpretation",
            _photometric(dataset) or "",
        ),
        ("Transfer syntax", transfer_syntax.name),
    ]
    return tuple(fields)
