"""Shared fixtures: a tiny Kermany-like dataset on disk and models trained on it by the real CLI.

Both fixtures are session-scoped so every test module (including the app tests) pays
for image generation and the two one-epoch trainings only once.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Before anything imports TensorFlow (the test modules import pneumo_core after this file).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

IMAGE_HEIGHT, IMAGE_WIDTH = 88, 72

# Kermany-style names. NORMAL: 12 images of 11 patients (IM-0001 has two, one NORMAL2- patient).
NORMAL_FILES = [
    "IM-0001-0001.jpeg",
    "IM-0001-0002.jpeg",
    *[f"IM-{i:04d}-0001.jpeg" for i in range(2, 11)],
    "NORMAL2-IM-0100-0001.jpeg",
]
# PNEUMONIA: 7 bacteria images of 6 patients (person1 has two) and 6 virus images of 6 patients,
# so every subtype has at least 6 patients and the split gets non-empty train, val and test parts.
PNEUMONIA_FILES = [
    "person1_bacteria_1.jpeg",
    "person1_bacteria_2.jpeg",
    *[f"person{i}_bacteria_{i + 1}.jpeg" for i in range(2, 7)],
    *[f"person{i}_virus_{i + 1}.jpeg" for i in range(7, 13)],
]


def synthetic_xray(rng: np.random.Generator, bright: bool) -> np.ndarray:
    """A ``(88, 72)`` uint8 image: dark for NORMAL, bright for PNEUMONIA, plus noise and a gradient."""
    base = 185.0 if bright else 55.0
    gradient = np.linspace(-20.0, 20.0, IMAGE_HEIGHT)[:, None]
    noise = rng.normal(0.0, 12.0, (IMAGE_HEIGHT, IMAGE_WIDTH))
    return np.clip(base + gradient + noise, 0, 255).astype(np.uint8)


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    """Encode a 2-D uint8 array as a grayscale JPEG."""
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def train_argv(name: str, dataset: Path, work: Path, *extra: str) -> list[str]:
    """``train`` arguments for a one-epoch run on ``dataset`` writing under ``work`` (no gate, no subtype head)."""
    return ["train", "--model", name, "--data", str(dataset), "--epochs", "1", "--out", str(work / "models"),
            "--run-dir", str(work / "runs"), "--split-file", str(work / "split.csv"), "--no-gate", "--no-subtype",
            *extra]  # fmt: skip


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A manifest-free dataset folder ``<root>/{NORMAL,PNEUMONIA}/*.jpeg`` of tiny 72x88 grayscale JPEGs.

    NORMAL images are dark and PNEUMONIA images bright, so even a one-epoch model can
    separate them. File names follow the Kermany conventions (patient and subtype are
    parsed from them; there is no manifest.csv).
    """
    root = tmp_path_factory.mktemp("synthetic_xray")
    rng = np.random.default_rng(1234)
    for label, names, bright in (("NORMAL", NORMAL_FILES, False), ("PNEUMONIA", PNEUMONIA_FILES, True)):
        folder = root / label
        folder.mkdir()
        for name in names:
            (folder / name).write_bytes(jpeg_bytes(synthetic_xray(rng, bright)))
    return root


@pytest.fixture(scope="session")
def trained_models_dir(tmp_path_factory, synthetic_dataset) -> Path:
    """Train ``cnn`` and ``mlp`` for one epoch on ``synthetic_dataset`` through the real CLI.

    Returns the models directory holding ``cnn/`` and ``mlp/`` artifact folders. The split
    file the trainings created and used is ``<models dir>/../split.csv``; the run
    directories (checkpoints, history.csv) are under ``<models dir>/../runs``.
    """
    from pneumo_core.__main__ import main

    work = tmp_path_factory.mktemp("training")
    models_dir = work / "models"
    for name in ("cnn", "mlp"):
        argv = [
            "train",
            "--model",
            name,
            "--data",
            str(synthetic_dataset),
            "--epochs",
            "1",
            "--out",
            str(models_dir),
            "--run-dir",
            str(work / "runs"),
            "--split-file",
            str(work / "split.csv"),
            "--no-gate",  # A gate fitted on these synthetic images would refuse the real sample X-rays.
            "--no-subtype",  # tests/test_subtype.py fits its own heads on copies of these models.
        ]
        exit_code = main(argv)
        assert exit_code == 0, f"training {name} on the synthetic dataset failed (exit code {exit_code})"
    return models_dir


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (skipped locally, failed under CI, when missing)."""
    from browser_support import chromium_browser, require_chromium

    require_chromium()
    with chromium_browser() as launched:
        yield launched
