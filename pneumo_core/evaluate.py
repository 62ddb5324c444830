"""Evaluate a trained model on the internal test split or on any image folder.

Images that cannot be read (corrupt, not an image, refused by the decoder) do not stop the run:
they are left out, listed with their reason under ``unreadable`` in the result, and the metrics
are computed on the rest. Images are decoded in bounded batches, so a large folder never holds
more than one batch of decoded images in memory.

When the model has an out-of-distribution gate (see :mod:`pneumo_core.gate`), the images it refuses
are counted and listed under ``refused``; ``metrics`` covers every readable image (the model's reading
of a refused image is still taken) and ``metrics_accepted`` only the images the gate accepted.

Usage:
    python -m pneumo_core evaluate --model cnn --data ../shared/data/chest_xray
    python -m pneumo_core evaluate --model cnn --data path/to/chest_xray/test --out official.json
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo_core import data
from pneumo_core.artifacts import LoadedModel
from pneumo_core.metrics import compute_metrics
from pneumo_core.reading import Reader, Reading, read_sources

LOGGER = logging.getLogger(__name__)
EVAL_BATCH_SIZE = 64
LOGGED_UNREADABLE = 10


class NothingReadable(ValueError):
    """Not one image of the chosen set could be read; ``str(error)`` gives the first reasons."""


def evaluation_frame(
    data_dir: Path,
    split: str,
    expected_split_hash: str | None = None,
    records: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, str]:
    """The images to evaluate and a description of where they come from.

    With ``split="auto"``, a folder whose images are those of the saved split is
    evaluated on its test split; any other folder is evaluated whole.

    Args:
        data_dir: A dataset folder (``NORMAL/`` and ``PNEUMONIA/``, optionally under ``train/``).
        split: ``auto``, ``all``, ``train``, ``val`` or ``test``.
        expected_split_hash: The split hash a model was trained with; evaluating on a
            split is refused if the committed split file no longer has this hash.
        records: The folder's listing, when the caller already has it (see :func:`data.list_images`).
    """
    if records is None:
        records = data.list_images(data_dir)
    where = data.shown(data_dir)
    if split == "all":
        return records, f"all {len(records)} images of {where}"
    saved = data.read_split()
    in_split = records.merge(saved[["file", "label", "split"]], on=["file", "label"], how="inner")
    if split == "auto":
        if len(in_split) != len(saved) or len(records) != len(saved):
            return records, f"all {len(records)} images of {where} (not the split's data)"
        split = "test"
    if expected_split_hash and data.split_hash() != expected_split_hash:
        raise ValueError(
            "The committed split file has changed since this model was trained, so its test split "
            "may contain training images. Retrain the model or restore the split file."
        )
    if len(in_split) != len(saved):
        raise ValueError(f"{where} does not hold the images of the saved split; use --split all.")
    chosen = in_split[in_split["split"] == split].reset_index(drop=True)
    return chosen, f"internal {split} split ({len(chosen)} images, split sha256 {data.split_hash()[:12]})"


def evaluate_folder(
    loaded: LoadedModel, data_dir: Path, split: str = "auto", batch_size: int = EVAL_BATCH_SIZE
) -> dict:
    """Metrics of ``loaded`` at its operating threshold on the chosen images.

    Args:
        loaded: The model to evaluate.
        data_dir: A dataset folder (see :mod:`pneumo_core.data`).
        split: ``auto``, ``all``, ``train``, ``val`` or ``test`` (see :func:`evaluation_frame`).
        batch_size: How many images are decoded and held in memory at once.

    Returns:
        A JSON-serialisable dict: ``model``, ``data`` (what was evaluated), ``threshold``,
        ``metrics`` (see :func:`pneumo_core.metrics.compute_metrics`, on all readable images),
        ``gated`` (whether the model has a gate), ``n_refused`` and ``metrics_accepted`` (the
        metrics on the images the gate accepted; None when it accepted none), ``n_listed``
        (images chosen before reading), ``refused`` (``{"file", "reason", "ood_score"}`` per image
        the gate refused), ``unreadable`` and ``skipped`` (lists of ``{"file": "LABEL/name",
        "reason": ...}``: images left out because they could not be read, and folder entries that
        are not images).

    Raises:
        ValueError: If the folder has no images, or none of the chosen images can be read.
    """
    listing = data.scan_images(data_dir)
    frame, description = evaluation_frame(data_dir, split, _trained_split_hash(loaded), listing.records)
    reader = Reader(loaded)
    outcomes = list(_readings_or_reasons(reader, [Path(path) for path in frame["path"]], batch_size))
    readable = np.array([not isinstance(outcome, str) for outcome in outcomes], dtype=bool)
    unreadable = [
        {"file": f"{label}/{data.shown(file)}", "reason": outcome}
        for label, file, outcome in zip(frame["label"], frame["file"], outcomes, strict=True)
        if isinstance(outcome, str)
    ]
    if not readable.any():
        raise NothingReadable(
            f"None of the {len(frame)} images of {description} could be read: {_examples(unreadable)}"
        )
    if unreadable:
        LOGGER.warning("Left out %d unreadable image(s): %s", len(unreadable), _examples(unreadable))
        description += f"; {len(unreadable)} unreadable left out"
    kept = frame[readable]
    readings = [outcome for outcome in outcomes if not isinstance(outcome, str)]
    probabilities = np.array([reading.probability for reading in readings], dtype=float)
    accepted = np.array([reading.accepted for reading in readings], dtype=bool)
    labels, subtypes = data.labels_of(kept), kept["subtype"].to_numpy()
    refused = [
        {"file": f"{label}/{data.shown(file)}", "reason": reading.reason, "ood_score": reading.ood_score}
        for label, file, reading in zip(kept["label"], kept["file"], readings, strict=True)
        if not reading.accepted
    ]
    if reader.gate is not None:
        description += f"; {len(refused)} of {len(readings)} refused by the gate"
    return {
        "model": loaded.spec.name,
        "data": description,
        "threshold": loaded.threshold,
        "metrics": compute_metrics(labels, probabilities, loaded.threshold, subtypes),
        "gated": reader.gate is not None,
        "n_refused": len(refused),
        "metrics_accepted": (
            compute_metrics(labels[accepted], probabilities[accepted], loaded.threshold, subtypes[accepted])
            if accepted.any()
            else None
        ),
        "n_listed": len(frame),
        "refused": refused,
        "unreadable": unreadable,
        "skipped": [{"file": entry.file, "reason": entry.reason} for entry in listing.skipped],
    }


def _trained_split_hash(loaded: LoadedModel) -> str | None:
    """The split hash recorded when ``loaded`` was trained."""
    return loaded.config.data.split_hash


def _readings_or_reasons(reader: Reader, paths: Sequence[Path], batch_size: int) -> Iterator[Reading | str]:
    """Per path, in order: its reading (with the probability even when the gate refused the image), or
    the reason it cannot be read.

    At most ``batch_size`` decoded images are held at once; only the readings are kept.
    """
    sources = ((path.name, path) for path in paths)
    for _, reading in read_sources(reader, sources, batch_size=batch_size, reveal_refused=True):
        yield reading if reading.probability is not None else reading.reason


def _examples(unreadable: list[dict]) -> str:
    shown = "; ".join(f"{entry['file']}: {entry['reason']}" for entry in unreadable[:LOGGED_UNREADABLE])
    more = len(unreadable) - LOGGED_UNREADABLE
    return shown + (f"; and {more} more" if more > 0 else "")
