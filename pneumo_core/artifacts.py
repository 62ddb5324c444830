"""Model artifacts: ``models/<name>/{model.keras, config.json, metrics.json, history.json, card.md}``.

``config.json`` records the spec, the resolved training arguments, the operating
threshold, the split hash and the sha256 of every other file; :func:`load_model_dir`
refuses a ``model.keras`` whose checksum does not match.

Usage:
    loaded = load_model_dir(Path("models/cnn"))
    prob = loaded.predict_squares(squares)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from pneumo_core.imaging import resize_square
from pneumo_core.registry import ModelSpec, get_spec

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
CARD_FILE = "card.md"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: Path, payload: object) -> None:
    """Write JSON with sorted keys and a trailing newline (stable diffs)."""
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict:
    """Read a JSON file, failing with a message that names it."""
    if not path.is_file():
        raise ValueError(f"{path} is missing: was this model trained with `python -m pneumo_core train`?")
    return json.loads(path.read_text())


@dataclass(frozen=True)
class LoadedModel:
    """A trained model with everything the app and the CLI need to use it."""

    spec: ModelSpec
    model: keras.Model
    config: dict
    directory: Path

    @property
    def threshold(self) -> float:
        """The operating threshold chosen on the validation split."""
        return float(self.config["threshold"])

    def square(self, gray: np.ndarray) -> np.ndarray:
        """Squash a decoded grayscale image to this model's square input size."""
        return resize_square(gray, self.spec.input_size)

    def predict_squares(self, squares: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Pneumonia probabilities for ``(n, size, size)`` uint8 squares."""
        probs = []
        for start in range(0, len(squares), batch_size):
            batch = self.spec.model_input(squares[start : start + batch_size])
            probs.append(keras.ops.convert_to_numpy(self.model(batch, training=False))[:, 0])
        return np.concatenate(probs) if probs else np.zeros(0, dtype=np.float32)

    def label(self, prob: float) -> str:
        """Class name at the operating threshold."""
        return self.spec.class_names[int(prob >= self.threshold)]


def load_model_dir(directory: Path) -> LoadedModel:
    """Load a model directory, verifying the checksum of ``model.keras``.

    Raises:
        ValueError: If a file is missing or ``model.keras`` does not match its checksum.
    """
    config = read_json(directory / CONFIG_FILE)
    spec = get_spec(config["spec"]["name"])
    model_path = directory / MODEL_FILE
    if not model_path.is_file():
        raise ValueError(f"{model_path} is missing.")
    expected = config["checksums"][MODEL_FILE]
    actual = sha256_of(model_path)
    if actual != expected:
        raise ValueError(
            f"{model_path} does not match the sha256 in its config.json (expected {expected[:12]}..., "
            f"got {actual[:12]}...). The file was changed or corrupted; retrain or restore it."
        )
    model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    return LoadedModel(spec=spec, model=model, config=config, directory=directory)


def shipped_model_dirs(models_dir: Path = MODELS_DIR) -> dict[str, Path]:
    """Model directories that hold a config, keyed by model name, in registry order."""
    from pneumo_core.registry import model_names

    return {name: models_dir / name for name in model_names() if (models_dir / name / CONFIG_FILE).is_file()}


def render_card(config: dict, metrics: dict) -> str:
    """A short model card in Markdown: data, intended use, metrics, limitations."""
    spec = config["spec"]
    test = metrics["test"]
    rows = "\n".join(
        f"| {key} | {_fmt(test.get(key))} |"
        for key in ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "ece")
    )
    split_sizes = ", ".join(f"{k}: {v}" for k, v in config["data"]["split_sizes"].items())
    heatmap = "Grad-CAM, Grad-CAM++ or Faster-ScoreCAM" if spec["gradcam_layer"] else "SmoothGrad saliency"
    return f"""# Model card: `{spec["name"]}`

{spec["description"]}

**This model is not a medical device.** It is research and decision-support software;
it must not be used to diagnose, treat or rule out disease.

## Data
Kermany et al. pediatric chest X-rays (Mendeley Data, doi:10.17632/rscbjbr9sj.2, CC BY 4.0):
anterior-posterior radiographs of children aged one to five from one hospital
(Guangzhou Women and Children's Medical Center). Official training images only,
split by patient 70/15/15 ({split_sizes}; split sha256 `{config["data"]["split_hash"][:12]}`).

## Input
Grayscale, squashed (not cropped) to {spec["input_size"]}x{spec["input_size"]}, preprocessing
`{spec["preprocess"].rsplit(".", 1)[-1]}`, {spec["channels"]} {"channel" if spec["channels"] == 1 else "channels"}.

## Intended use
Second-reader support for clinicians and researchers reviewing pediatric chest X-rays
for pneumonia, with a heatmap of where the model looked ({heatmap}).

## Metrics (internal test split, n = {test["n"]}, threshold {config["threshold"]:.3f})
| metric | value |
|---|---|
{rows}

Threshold rule: {config["threshold_rule"]}

## Limitations
- Trained and tested on pediatric images from a single hospital; not validated on adults,
  other hospitals, other scanners or lateral views.
- The internal test split comes from the same pool as the training images and flatters:
  on independent test images, models like this keep sensitivity high but lose specificity
  (more normal images called pneumonia).
- It separates NORMAL from PNEUMONIA only; it cannot recognise other findings.
- The probability is calibrated on the validation split, not on your population.
"""


def refresh_card(directory: Path) -> None:
    """Re-render ``card.md`` from the saved config and metrics and update its checksum."""
    config = read_json(directory / CONFIG_FILE)
    (directory / CARD_FILE).write_text(render_card(config, read_json(directory / METRICS_FILE)))
    config["checksums"][CARD_FILE] = sha256_of(directory / CARD_FILE)
    write_json(directory / CONFIG_FILE, config)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
