"""Dataset listing, the patient-grouped split, and loading images as arrays.

A dataset folder is laid out as ``<root>/{NORMAL,PNEUMONIA}/*.{jpeg,jpg,png}``,
optionally with ``<root>/train/`` in between and a ``manifest.csv`` beside it.
Without a manifest, subtype and patient id are parsed from the file names
(``person1_bacteria_1.jpeg``, ``IM-0115-0001.jpeg``, ``NORMAL2-IM-0427-0001.jpeg``).

Usage:
    records = list_images(Path("data/chest_xray"))
    split = make_split(records)            # DataFrame with a "split" column
    write_split(split, DEFAULT_SPLIT_FILE)
"""

from __future__ import annotations

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from pneumo_core.imaging import decode_grayscale, resize_square

CLASS_NAMES = ("NORMAL", "PNEUMONIA")
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
DEFAULT_DATA_ROOT = Path("data/chest_xray")
DEFAULT_SPLIT_FILE = Path(__file__).resolve().parent.parent / "splits" / "kermany_split.csv"
SPLIT_SEED = 42
SPLIT_COLUMNS = ["file", "label", "subtype", "patient_id", "split"]

_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_", re.IGNORECASE)
_NORMAL = re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE)


def image_root(data_dir: Path) -> Path:
    """Return the folder that holds ``NORMAL/`` and ``PNEUMONIA/`` under ``data_dir``."""
    for candidate in (data_dir, data_dir / "train"):
        if all((candidate / name).is_dir() for name in CLASS_NAMES):
            return candidate
    raise ValueError(
        f"No NORMAL/ and PNEUMONIA/ folders found in {data_dir} (or {data_dir / 'train'}). "
        "Download the dataset (Mendeley Data, doi:10.17632/rscbjbr9sj.2) or pass --data DIR."
    )


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

    Args:
        data_dir: A dataset root (see the module docstring).

    Returns:
        A DataFrame with columns ``file``, ``label``, ``subtype``, ``patient_id`` and
        ``path``, sorted by label and file name.
    """
    root = image_root(data_dir)
    rows = [
        {"file": path.name, "label": label, "path": str(path)}
        for label in CLASS_NAMES
        for path in sorted((root / label).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not rows:
        raise ValueError(f"No .jpeg/.jpg/.png images found under {root}.")
    frame = pd.DataFrame(rows)
    manifest_path = data_dir / "manifest.csv"
    if manifest_path.is_file():
        manifest = pd.read_csv(manifest_path, usecols=["file", "label", "subtype", "patient_id"])
        frame = frame.merge(manifest, on=["file", "label"], how="left")
    else:
        frame["subtype"] = None
        frame["patient_id"] = None
    missing = frame["patient_id"].isna()
    parsed = [parse_file_name(f, lab) for f, lab in zip(frame["file"], frame["label"], strict=True)]
    frame.loc[missing, "subtype"] = [s for (s, _), m in zip(parsed, missing, strict=True) if m]
    frame.loc[missing, "patient_id"] = [p for (_, p), m in zip(parsed, missing, strict=True) if m]
    return frame[["file", "label", "subtype", "patient_id", "path"]]


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
    smallest_class = int(records.groupby("subtype")["patient_id"].nunique().min())
    n_folds = min(20, smallest_class)
    if n_folds < 3:
        raise ValueError(f"Too few patients per class ({smallest_class}) for a train/val/test split.")
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of = np.empty(len(records), dtype=int)
    for fold, (_, index) in enumerate(folds.split(records, records["subtype"], records["patient_id"])):
        fold_of[index] = fold
    train_end = min(max(1, round(0.7 * n_folds)), n_folds - 2)
    val_end = min(max(train_end + 1, round(0.85 * n_folds)), n_folds - 1)
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
        raise ValueError(f"Split file {path} not found; create it with `python -m pneumo_core split`.")
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
        raise ValueError(f"{missing} images of the split are missing from {data_dir}: is it the same dataset?")
    return joined


def load_arrays(paths: list[str], size: int, workers: int = 4) -> np.ndarray:
    """Decode and squash images into a ``(n, size, size)`` uint8 array (the shared contract).

    Args:
        paths: Image file paths.
        size: The model's square input size.
        workers: Decoding threads.
    """

    def load(path: str) -> np.ndarray:
        try:
            return resize_square(decode_grayscale(Path(path).read_bytes()), size)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return np.stack(list(pool.map(load, paths)))


def labels_of(frame: pd.DataFrame) -> np.ndarray:
    """Return 0/1 targets (1 = PNEUMONIA) for a records frame."""
    return (frame["label"] == CLASS_NAMES[1]).to_numpy(dtype=np.int32)
