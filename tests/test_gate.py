"""The out-of-distribution gate: fitted on training X-rays only, it refuses what is not a chest X-ray.

A tiny fit on the synthetic dataset checks the mechanics (files, seal, Reader fields, CLI); the shipped
models' gates are checked on the negative set (photos, textures, documents, CT, MR, ultrasound,
synthetic noise: built here or shipped with scikit-image and pydicom) and on near-misses that must pass
(the sample X-rays, mild perturbations of them, 16-bit and MONOCHROME1 DICOM copies).
"""

from __future__ import annotations

import functools
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from dicom_fixtures import dicom_variant
from PIL import Image
from test_shipped_models import SHIPPED

from pneumo_core import artifacts
from pneumo_core.__main__ import main
from pneumo_core.diagnosis import list_samples
from pneumo_core.gate import (
    GATE_FILE,
    VAL_ACCEPTANCE,
    GateInputs,
    ImageLimits,
    ImageStats,
    appearance_descriptor,
    fit,
    read_gate_settings,
)
from pneumo_core.gate_figures import PERTURBATIONS, gate_table, negative_grays, negative_set, perturb, png_of
from pneumo_core.imaging import read_xray, read_xray_file
from pneumo_core.reading import Reader, read_sources

MIN_NEGATIVES_REFUSED = 0.95
MIN_TEST_ACCEPTED = 0.99
MAX_GATE_MS = 50.0


def smooth_image(rng: np.random.Generator, height: int = 120, width: int = 100) -> np.ndarray:
    """A smooth, X-ray-like uint8 image: a vertical gradient, two dark ovals and mild noise."""
    rows, cols = np.mgrid[0:height, 0:width]
    image = 90 + 60 * rows / height + rng.normal(0, 6, (height, width))
    for centre in (0.3, 0.7):
        oval = ((rows - 0.45 * height) / (0.3 * height)) ** 2 + ((cols - centre * width) / (0.15 * width)) ** 2 < 1
        image[oval] -= 50
    return np.clip(image, 0, 255).astype(np.uint8)


def synthetic_inputs(rng: np.random.Generator, n: int) -> GateInputs:
    """Gate inputs of ``n`` smooth images with Gaussian features around two class means."""
    inputs = GateInputs()
    labels = np.arange(n) % 2
    features = rng.normal(0, 1, (n, 6)) + labels[:, None] * 3.0
    inputs.add([smooth_image(rng) for _ in range(n)], features, labels)
    return inputs


def test_image_limits_say_what_is_wrong():
    """Each limit refuses with a reason naming what it measured; an ordinary image passes."""
    limits = ImageLimits(min_contrast=10.0, min_grey_levels=60, min_aspect=0.6, max_aspect=4.0, rule="test")
    rng = np.random.default_rng(0)
    assert limits.problem(ImageStats.of(smooth_image(rng))) is None
    flat = np.clip(rng.normal(128, 2, (100, 100)), 0, 255).astype(np.uint8)
    assert "contrast" in limits.problem(ImageStats.of(flat))
    posterised = (smooth_image(rng) // 32 * 32).astype(np.uint8)
    assert "grey levels" in limits.problem(ImageStats.of(posterised))
    banner = smooth_image(rng, height=100, width=600)
    assert "width" in limits.problem(ImageStats.of(banner))


def test_descriptor_barely_depends_on_image_size():
    """The appearance descriptor of an image and of a 6x larger copy are nearly the same."""
    import cv2

    gray = smooth_image(np.random.default_rng(1), 300, 250)
    large = cv2.resize(gray, (1500, 1800), interpolation=cv2.INTER_LINEAR)
    small, big = appearance_descriptor(gray), appearance_descriptor(large)
    assert small.shape == (124,)
    assert np.abs(small - big).max() < 0.1


def test_fit_sets_the_threshold_on_validation_and_refuses_far_inputs():
    """At least 99 % of validation inputs pass; noise and far-away features are refused with a reason."""
    rng = np.random.default_rng(2)
    params = fit("cnn", "gap", synthetic_inputs(rng, 200), synthetic_inputs(rng, 200), split_hash="0" * 64)
    assert params.settings.fitted_on.val_acceptance >= VAL_ACCEPTANCE
    assert 0.0 < params.settings.caution_score <= 1.0
    typical = params.judge([smooth_image(rng)], np.array([[0.0] * 6]))[0]
    assert typical.accepted and typical.reason is None and typical.ood_score <= 1.0
    far = params.judge([smooth_image(rng)], np.array([[40.0] * 6]))[0]
    assert not far.accepted and "internal features" in far.reason and far.ood_score > 1.0
    noise = rng.integers(0, 256, (120, 100)).astype(np.uint8)
    looks = params.judge([noise], np.array([[0.0] * 6]))[0]
    assert not looks.accepted and "appearance" in looks.reason


@pytest.fixture(scope="module")
def gated_cnn(trained_models_dir, synthetic_dataset, tmp_path_factory) -> Path:
    """A copy of the tiny cnn with a gate fitted by the CLI on the synthetic training images."""
    models_dir = tmp_path_factory.mktemp("gated") / "models"
    shutil.copytree(trained_models_dir / "cnn", models_dir / "cnn")
    split_file = trained_models_dir.parent / "split.csv"
    argv = ["fit-gate", "--model", "cnn", "--data", str(synthetic_dataset), "--models-dir", str(models_dir)]
    assert main([*argv, "--split-file", str(split_file)]) == 0
    return models_dir / "cnn"


def test_fitted_gate_is_sealed_and_measured(gated_cnn):
    """fit-gate writes gate.npz and gate.json, the directory still loads, and the figures are in gate.json."""
    loaded = artifacts.load_model_dir(gated_cnn)
    assert {"gate.npz", "gate.json"} <= set(loaded.config.checksums)
    settings = read_gate_settings(gated_cnn)
    assert settings.model == "cnn" and settings.feature_layer == "gap"
    assert settings.fitted_on.val_acceptance >= 0.99
    report = settings.report
    assert report.negatives.n == len(negative_set()) and 0.0 <= report.negatives.rate <= 1.0
    assert set(report.perturbed_by_kind) == set(PERTURBATIONS)
    assert report.cost.judge_median_ms > 0.0
    table = gate_table(gated_cnn.parent)
    assert list(table["model"]) == ["cnn"]


def test_reader_fills_the_gate_fields(gated_cnn, synthetic_dataset):
    """An accepted reading has a probability, a label and an ood_score; a refused one only a reason and a score."""
    reader = Reader(artifacts.load_model_dir(gated_cnn))
    assert reader.gate is not None
    training_image = read_xray_file(next((synthetic_dataset / "NORMAL").iterdir()))
    photo_png = png_of(skimage.data.astronaut())
    photo = read_xray(photo_png)
    accepted, refused = reader.read_many([training_image, photo])
    assert accepted.accepted and accepted.probability is not None and accepted.label is not None
    assert accepted.reason is None and accepted.ood_score <= 1.0
    assert not refused.accepted and refused.probability is None and refused.label is None
    assert refused.reason and refused.ood_score > 1.0
    revealed = reader.read(photo, reveal_refused=True)
    assert not revealed.accepted and revealed.probability is not None and revealed.label is not None
    row = dict(read_sources(reader, [("photo.png", photo_png)]))["photo.png"]
    assert row.to_row("photo.png")["accepted"] is False and row.to_row("photo.png")["ood_score"] > 1.0


def test_edited_gate_is_refused(gated_cnn, tmp_path):
    """A gate.json edited after sealing makes the model refuse to load."""
    copy = tmp_path / "cnn"
    shutil.copytree(gated_cnn, copy)
    (copy / GATE_FILE).write_text((copy / GATE_FILE).read_text().replace('"caution_score": ', '"caution_score": 1'))
    with pytest.raises(artifacts.ModelRefused):
        artifacts.load_model_dir(copy)


def test_fit_gate_refuses_another_split(gated_cnn, trained_models_dir, synthetic_dataset, tmp_path):
    """The gate is only fitted on the split the model was trained with."""
    other = tmp_path / "split.csv"
    other.write_text("".join((trained_models_dir.parent / "split.csv").read_text().splitlines(keepends=True)[:-1]))
    argv = ["fit-gate", "--model", "cnn", "--data", str(synthetic_dataset), "--models-dir", str(gated_cnn.parent)]
    assert main([*argv, "--split-file", str(other), "--no-figures"]) == 2


# --- The shipped models -----------------------------------------------------------------------------


_READERS: dict[str, Reader] = {}


def shipped_reader(name: str) -> Reader:
    """The shipped model's reader, loaded once per test session."""
    if name not in _READERS:
        _READERS[name] = Reader(artifacts.load_model_dir(artifacts.MODELS_DIR / name))
    return _READERS[name]


def near_misses() -> list[tuple[str, np.ndarray]]:
    """The sample X-rays, mild perturbations of them, and 16-bit PNG and MONOCHROME1 DICOM copies, read back."""
    rng = np.random.default_rng(3)
    cases = []
    for sample in list_samples():
        gray = read_xray_file(sample.path).gray
        cases.append((sample.key, gray))
        for kind in ("rotate 2-5 degrees", "gamma 0.9", "gamma 1.1", "crop up to 6 % per side"):
            cases.append((f"{sample.key} {kind}", perturb(gray, kind, rng)))
        buffer = io.BytesIO()
        Image.fromarray(gray.astype(np.uint16) * 257).save(buffer, format="PNG")
        cases.append((f"{sample.key} 16-bit PNG", read_xray(buffer.getvalue()).gray))
        cases.append((f"{sample.key} MONOCHROME1 DICOM", read_xray(dicom_variant(gray, "mono1_12bit_window")).gray))
    return cases


@functools.cache
def negative_cases() -> tuple[tuple[str, np.ndarray, bool], ...]:
    """The negative set as ``(name, gray, refused by the reader)``, built once."""
    return tuple(negative_grays(negative_set()))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_gate_refuses_the_negative_set(name):
    """At least 95 % of the images that are not chest X-rays are refused by the gate alone."""
    reader = shipped_reader(name)
    cases = negative_cases()
    verdicts = reader.gate.assess([gray for _, gray, _ in cases])[1]
    accepted = [case[0] for case, verdict in zip(cases, verdicts, strict=True) if verdict.accepted]
    assert 1 - len(accepted) / len(cases) >= MIN_NEGATIVES_REFUSED, accepted


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_gate_accepts_samples_and_near_misses(name):
    """Every sample X-ray and its mild perturbations, 16-bit and MONOCHROME1 copies pass the gate."""
    cases = near_misses()
    verdicts = shipped_reader(name).gate.assess([gray for _, gray in cases])[1]
    refused = [(case, round(v.ood_score, 2)) for (case, _), v in zip(cases, verdicts, strict=True) if not v.accepted]
    assert not refused


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_gate_figures_meet_the_bar(name):
    """gate.json records, as measured: >= 99 % of validation and internal test X-rays accepted, >= 95 % of
    the negative set refused, and at most 50 ms per image."""
    settings = read_gate_settings(artifacts.MODELS_DIR / name)
    report = settings.report
    assert settings.fitted_on.val_acceptance >= 0.99
    assert report.internal_test.rate >= MIN_TEST_ACCEPTED
    assert report.negatives.rate >= MIN_NEGATIVES_REFUSED
    assert report.samples.rate == 1.0
    cost = report.cost
    assert cost.judge_median_ms + max(cost.two_output_overhead_ms, 0.0) <= MAX_GATE_MS


def test_negative_set_is_diverse():
    """The negative set holds photos, textures, documents and other modalities, plus synthetic images."""
    names = [name for name, _ in negative_set()]
    assert len(names) == len(set(names)) >= 50
    assert {name.split(":")[0] for name in names} == {"skimage", "pydicom", "synthetic"}
    assert any("(CT)" in n for n in names) and any("(MR)" in n for n in names) and any("(US)" in n for n in names)
    assert read_xray(png_of(np.tile(np.arange(256, dtype=np.uint16), (80, 1)) * 200)).gray.shape == (80, 256)


def test_train_fits_the_gate(synthetic_dataset, tmp_path):
    """`train` ends by fitting and measuring the gate of the model it wrote, sealed with the rest."""
    argv = ["train", "--model", "mlp", "--data", str(synthetic_dataset), "--epochs", "1", "--out", str(tmp_path)]
    assert main([*argv, "--run-dir", str(tmp_path / "runs"), "--split-file", str(tmp_path / "split.csv")]) == 0
    loaded = artifacts.load_model_dir(tmp_path / "mlp")
    assert Reader(loaded).gate is not None
    assert read_gate_settings(tmp_path / "mlp").report.internal_test.n == loaded.config.data.split_sizes["test"]


def test_evaluate_reports_refusals_and_both_metrics(gated_cnn, synthetic_dataset, tmp_path):
    """evaluate counts what the gate refused and gives metrics on all readable and on accepted images."""
    from pneumo_core.evaluate import evaluate_folder

    folder = tmp_path / "data"
    shutil.copytree(synthetic_dataset, folder)
    (folder / "NORMAL" / "IM-0999-0001.png").write_bytes(png_of(skimage.data.astronaut()))
    result = evaluate_folder(artifacts.load_model_dir(gated_cnn), folder, split="all")
    assert result["gated"] and result["n_refused"] == len(result["refused"]) >= 1
    assert "IM-0999-0001.png" in {entry["file"].split("/")[-1] for entry in result["refused"]}
    assert result["metrics"]["n"] == result["metrics_accepted"]["n"] + result["n_refused"]
    assert "refused by the gate" in result["data"]
