"""Evaluate a trained model on the internal test split or on any image folder.

Usage:
    python -m pneumo_core evaluate --model cnn --data ../shared/data/chest_xray
    python -m pneumo_core evaluate --model cnn --data path/to/chest_xray/test --out official.json
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pneumo_core import data
from pneumo_core.artifacts import LoadedModel
from pneumo_core.metrics import compute_metrics


def evaluation_frame(data_dir: Path, split: str, expected_split_hash: str | None = None) -> tuple[pd.DataFrame, str]:
    """The images to evaluate and a description of where they come from.

    With ``split="auto"``, a folder whose images are those of the saved split is
    evaluated on its test split; any other folder is evaluated whole.

    Args:
        data_dir: A dataset folder (``NORMAL/`` and ``PNEUMONIA/``, optionally under ``train/``).
        split: ``auto``, ``all``, ``train``, ``val`` or ``test``.
        expected_split_hash: The split hash a model was trained with; evaluating on a
            split is refused if the committed split file no longer has this hash.
    """
    records = data.list_images(data_dir)
    if split == "all":
        return records, f"all {len(records)} images of {data_dir}"
    saved = data.read_split()
    in_split = records.merge(saved[["file", "label", "split"]], on=["file", "label"], how="inner")
    if split == "auto":
        if len(in_split) != len(saved) or len(records) != len(saved):
            return records, f"all {len(records)} images of {data_dir} (not the split's data)"
        split = "test"
    if expected_split_hash and data.split_hash() != expected_split_hash:
        raise ValueError(
            "The committed split file has changed since this model was trained, so its test split "
            "may contain training images. Retrain the model or restore the split file."
        )
    if len(in_split) != len(saved):
        raise ValueError(f"{data_dir} does not hold the images of the saved split; use --split all.")
    chosen = in_split[in_split["split"] == split].reset_index(drop=True)
    return chosen, f"internal {split} split ({len(chosen)} images, split sha256 {data.split_hash()[:12]})"


def evaluate_folder(loaded: LoadedModel, data_dir: Path, split: str = "auto") -> dict:
    """Metrics of ``loaded`` at its operating threshold on the chosen images."""
    frame, description = evaluation_frame(data_dir, split, loaded.config["data"]["split_hash"])
    squares = data.load_arrays(frame["path"].tolist(), loaded.spec.input_size)
    prob = loaded.predict_squares(squares)
    return {
        "model": loaded.spec.name,
        "data": description,
        "threshold": loaded.threshold,
        "metrics": compute_metrics(data.labels_of(frame), prob, loaded.threshold, frame["subtype"].to_numpy()),
    }
