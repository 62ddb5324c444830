"""Dataset listing, the patient-grouped split, and loading images as arrays.

A dataset folder is laid out as ``<root>/{NORMAL,PNEUMONIA}/<images>``, optionally with
``<root>/train/`` in between and a ``manifest.csv`` beside it. Images are PNG, JPEG and DICOM
files: by suffix, or recognised by their first bytes when the name has no suffix or a numeric one
(DICOM files named by their UID); see ``imaging.is_supported_file``.
Everything else in the class folders is skipped with a warning that names it: sub-folders (even
one named ``x.png``), broken symbolic links and link loops, pipes and devices, non-image files, and
names that are not valid UTF-8. Hidden files (``.DS_Store``) are skipped silently.

Without a manifest, or where it has no value, subtype and patient id are parsed from the file
names (``person1_bacteria_1.jpeg``, ``IM-0115-0001.jpeg``, ``NORMAL2-IM-0427-0001.jpeg``).

Usage:
    records = list_images(Path("data/chest_xray"))
    split = make_split(records)            # DataFrame with a "split" column
    write_split(split, DEFAULT_SPLIT_FILE)
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo_core.imaging import SUPPORTED_FORMATS, frame_square, is_supported_file, read_xray_file
from pneumo_core.registry import CLASS_NAMES

LOGGER = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.csv"
MANIFEST_COLUMNS = ("file", "label", "subtype", "patient_id")
DEFAULT_DATA_ROOT = Path("data/chest_xray")
DEFAULT_SPLIT_FILE = Path(__file__).resolve().parent.parent / "splits" / "kermany_split.csv"
SPLIT_SEED = 42
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}  # recorded in every model's config.json
SPLIT_COLUMNS = ["file", "label", "subtype", "patient_id", "split"]
RECORD_COLUMNS = ["file", "label", "subtype", "patient_id", "path"]

_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_", re.IGNORECASE)
_NORMAL = re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE)


class ManifestError(ValueError):
    """A ``manifest.csv`` that cannot be used; ``str(error)`` names the file and the problem."""


@dataclass(frozen=True)
class Skipped:
    """A class-folder entry that is not listed as an image, and why."""

    file: str
    reason: str


@dataclass(frozen=True)
class Listing:
    """The images of a dataset folder and the entries that were skipped."""

    records: pd.DataFrame
    skipped: tuple[Skipped, ...]


def image_root(data_dir: Path) -> Path:
    """Return the folder that holds ``NORMAL/`` and ``PNEUMONIA/`` under ``data_dir``."""
    for candidate in (data_dir, data_dir / "train"):
        if all((candidate / name).is_dir() for name in CLASS_NAMES):
            return candidate
    raise ValueError(
        f"No NORMAL/ and PNEUMONIA/ folders found in {shown(data_dir)} (or {shown(data_dir / 'train')}). "
        "Download the dataset (Mendeley Data, doi:10.17632/rscbjbr9sj.2) or pass --data DIR."
    )


def shown(path: Path | str) -> str:
    """A path as printable text: bytes that are not valid UTF-8 appear as ``\\udcxx`` escapes."""
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


def parse_file_name(file_name: str, label: str) -> tuple[str, str]:
    """Infer ``(subtype, patient_id)`` from a Kermany-style file name.

    Args:
        file_name: The image's file name, e.g. ``person12_virus_44.jpeg``.
        label: ``NORMAL`` or ``PNEUMONIA`` (the folder the file is in).

    Returns:
        The subtype (``normal``, ``bacteria``, ``virus`` or ``unknown``) and a patient
        id (the file stem when the name has no recognisable patient).
    """
    if label == "NORMAL":
        match = _NORMAL.match(file_name)
        return "normal", match.group(1) if match else Path(file_name).stem
    match = _PERSON.match(file_name)
    if match:
        return match.group(2).lower(), match.group(1).lower()
    return "unknown", Path(file_name).stem


def list_images(data_dir: Path) -> pd.DataFrame:
    """List every image of a dataset folder with label, subtype and patient id.

    Skipped entries are logged as warnings (see :func:`scan_images`).

    Args:
        data_dir: A dataset root (see the module docstring).

    Returns:
        A DataFrame with string columns ``file``, ``label``, ``subtype``, ``patient_id`` and
        ``path``, sorted by label and file name.

    Raises:
        ValueError: If the folder has no class folders or no images, or its manifest is malformed.
    """
    return scan_images(data_dir).records


def scan_images(data_dir: Path) -> Listing:
    """List the images of a dataset folder and report every entry that was skipped.

    Args:
        data_dir: A dataset root (see the module docstring).

    Returns:
        The records (as :func:`list_images` returns them) and the skipped entries, each logged
        as a warning that names it.

    Raises:
        ValueError: If the folder has no class folders or no images, or its manifest is malformed.
    """
    root = image_root(data_dir)
    rows, skipped = [], []
    for label in CLASS_NAMES:
        found = 0
        for path, reason in _class_folder_entries(root / label):
            if reason is None:
                rows.append({"file": path.name, "label": label, "path": str(path)})
                found += 1
            else:
                skipped.append(Skipped(file=f"{label}/{shown(path.name)}", reason=reason))
                LOGGER.warning("Skipped %s: %s.", shown(path), reason)
        if not found:
            LOGGER.warning("%s holds no images.", shown(root / label))
    if not rows:
        raise ValueError(
            f"No images ({SUPPORTED_FORMATS}) found in {shown(root / CLASS_NAMES[0])} or "
            f"{shown(root / CLASS_NAMES[1])}" + (f"; {len(skipped)} other entries were skipped." if skipped else ".")
        )
    frame = pd.DataFrame(rows, dtype=str)
    manifest = read_manifest(data_dir / MANIFEST_FILE)
    return Listing(records=_with_subtype_and_patient(frame, manifest), skipped=tuple(skipped))


def _class_folder_entries(folder: Path) -> list[tuple[Path, str | None]]:
    """The non-hidden entries of a class folder, sorted by name, each with the reason it is skipped (or None)."""
    try:
        with os.scandir(folder) as entries:
            paths = sorted(Path(entry.path) for entry in entries if not entry.name.startswith("."))
    except OSError as error:
        raise ValueError(f"Cannot list {shown(folder)}: {error.strerror or error}.") from error
    return [(path, _skip_reason(path)) for path in paths]


def _skip_reason(path: Path) -> str | None:
    """Why a class-folder entry is not an image file we can list, or ``None`` when it is one."""
    if not _is_utf8(path.name):
        return "its name is not valid UTF-8 text; rename the file"
    try:
        info = path.stat()
    except OSError as error:
        return _stat_failure(path, error)
    if stat.S_ISDIR(info.st_mode):
        return "it is a folder, not an image file (sub-folders are not searched)"
    if not stat.S_ISREG(info.st_mode):
        return "it is not a regular file (a pipe, socket or device)"
    return None if is_supported_file(path) else f"it is not a {SUPPORTED_FORMATS} image"


def _stat_failure(path: Path, error: OSError) -> str:
    if path.is_symlink():
        if error.errno == errno.ELOOP:
            return "it is a symbolic link loop"
        return "it is a broken symbolic link (its target does not exist)"
    return f"it cannot be read ({error.strerror or error})"


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_manifest(path: Path) -> pd.DataFrame | None:
    """Read a dataset's ``manifest.csv`` as strings, or ``None`` when there is none.

    Only ``file`` is required; ``label``, ``subtype`` and ``patient_id`` may be missing or
    empty (they then come from the file names). Values are stripped; empty ones become NA.

    Raises:
        ManifestError: If the file cannot be parsed, has no ``file`` column, or lists an image twice.
    """
    if not path.is_file():
        return None
    try:
        manifest = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ManifestError(f"{shown(path)} cannot be read as a CSV file: {error}") from error
    manifest.columns = [str(column).strip() for column in manifest.columns]
    if "file" not in manifest.columns:
        raise ManifestError(
            f"{shown(path)} has no 'file' column (found: {', '.join(manifest.columns) or 'none'}); "
            f"expected the columns {', '.join(MANIFEST_COLUMNS)}."
        )
    manifest = manifest[[column for column in MANIFEST_COLUMNS if column in manifest.columns]]
    manifest = manifest.apply(lambda column: column.str.strip()).replace("", pd.NA)
    keys = _manifest_keys(manifest)
    duplicated = manifest.dropna(subset=keys).duplicated(keys)
    if duplicated.any():
        first = manifest.dropna(subset=keys)[duplicated].iloc[0]
        raise ManifestError(f"{shown(path)} lists {' / '.join(first[keys])} more than once.")
    return manifest.dropna(subset=keys)


def _manifest_keys(manifest: pd.DataFrame) -> list[str]:
    return ["file", "label"] if "label" in manifest.columns else ["file"]


def _with_subtype_and_patient(frame: pd.DataFrame, manifest: pd.DataFrame | None) -> pd.DataFrame:
    """Add ``subtype`` and ``patient_id``: from the manifest where it has a value, else parsed from the name."""
    if manifest is not None:
        frame = frame.merge(manifest, on=_manifest_keys(manifest), how="left")
    parsed = [parse_file_name(file, label) for file, label in zip(frame["file"], frame["label"], strict=True)]
    given_subtype = frame["subtype"] if "subtype" in frame.columns else pd.Series(pd.NA, index=frame.index)
    given_patient = frame["patient_id"] if "patient_id" in frame.columns else pd.Series(pd.NA, index=frame.index)
    frame = frame.assign(
        subtype=[
            str(given).lower() if pd.notna(given) else subtype
            for given, (subtype, _) in zip(given_subtype, parsed, strict=True)
        ],
        patient_id=[
            str(given) if pd.notna(given) else patient
            for given, (_, patient) in zip(given_patient, parsed, strict=True)
        ],
    )
    return frame[RECORD_COLUMNS].astype(str).reset_index(drop=True)


def make_split(records: pd.DataFrame, seed: int = SPLIT_SEED) -> pd.DataFrame:
    """Assign a patient-grouped, subtype-stratified 70/15/15 train/val/test split.

    Patients are dealt into 20 stratified folds (fewer for tiny datasets); 14 folds form
    the training split, 3 the validation split and 3 the test split, so no patient is in
    two splits.

    Args:
        records: Output of :func:`list_images`.
        seed: Seed of the fold assignment.

    Returns:
        The records (without ``path``) plus a ``split`` column, sorted by file.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    smallest_class = int(records.groupby("subtype")["patient_id"].nunique().min())
    n_folds = min(20, smallest_class)
    if n_folds < 3:
        raise ValueError(f"Too few patients per class ({smallest_class}) for a train/val/test split.")
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of = np.empty(len(records), dtype=int)
    for fold, (_, index) in enumerate(folds.split(records, records["subtype"], records["patient_id"])):
        fold_of[index] = fold
    train_end = min(max(1, round(SPLIT_FRACTIONS["train"] * n_folds)), n_folds - 2)
    val_end = min(max(train_end + 1, round((1 - SPLIT_FRACTIONS["test"]) * n_folds)), n_folds - 1)
    split = np.where(fold_of < train_end, "train", np.where(fold_of < val_end, "val", "test"))
    out = records.drop(columns=["path"], errors="ignore").assign(split=split)
    return out.sort_values(["label", "file"]).reset_index(drop=True)[SPLIT_COLUMNS]


def write_split(split: pd.DataFrame, path: Path) -> str:
    """Write a split CSV and return its hash (see :func:`split_hash`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    split[SPLIT_COLUMNS].to_csv(path, index=False, lineterminator="\n")
    return split_hash(path)


def read_split(path: Path = DEFAULT_SPLIT_FILE) -> pd.DataFrame:
    """Read a split CSV written by :func:`write_split`."""
    if not path.is_file():
        raise ValueError(f"Split file {shown(path)} not found; create it with `python -m pneumo_core split`.")
    return pd.read_csv(path, dtype=str)


def split_hash(path: Path = DEFAULT_SPLIT_FILE) -> str:
    """Return the sha256 of a split file's bytes, recorded in every model's config."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def attach_paths(split: pd.DataFrame, data_dir: Path) -> pd.DataFrame:
    """Join a split with the image paths found in ``data_dir``.

    Raises:
        ValueError: If any file of the split is missing from the folder.
    """
    found = list_images(data_dir)[["file", "label", "path"]]
    joined = split.merge(found, on=["file", "label"], how="left")
    missing = joined["path"].isna().sum()
    if missing:
        raise ValueError(f"{missing} images of the split are missing from {shown(data_dir)}: is it the same dataset?")
    return joined


def load_arrays(paths: list[str], size: int, workers: int = 4, framing: str = "squash") -> np.ndarray:
    """Decode and squash images into a ``(n, size, size)`` uint8 array (the shared contract).

    Args:
        paths: Image file paths.
        size: The model's square input size.
        workers: Decoding threads.
        framing: How each image becomes the square (``imaging.FRAMINGS``).

    Raises:
        ValueError: If an image cannot be read; the message names the file and the reason.
    """

    def load(path: str) -> np.ndarray:
        try:
            return frame_square(read_xray_file(Path(path)).gray, size, framing)
        except ValueError as error:
            raise ValueError(f"{shown(path)}: {error}") from error

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return np.stack(list(pool.map(load, paths)))


def labels_of(frame: pd.DataFrame) -> np.ndarray:
    """Return 0/1 targets (1 = PNEUMONIA) for a records frame."""
    return (frame["label"] == CLASS_NAMES[1]).to_numpy(dtype=np.int32)


def model_split_frame(split_file: Path, data_dir: Path, trained_on: str, model: str, purpose: str) -> pd.DataFrame:
    """The split file's rows with image paths, after checking it is the split ``model`` was trained with.

    Raises:
        ValueError: If the split file's sha256 differs from ``trained_on`` (the message names ``purpose``).
    """
    if split_hash(split_file) != trained_on:
        raise ValueError(
            f"{split_file} is not the split {model} was trained with (its sha256 differs), "
            f"so {purpose} cannot be fitted on that model's images."
        )
    return attach_paths(read_split(split_file), data_dir)
