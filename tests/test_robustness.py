"""The robustness evaluation: every perturbation does what it says, the figures are right, the CLI writes a
sealed ``robustness.json``, and the Compare page, the model cards and the README table show it.

Perturbations are checked on small synthetic images; the evaluation runs the tiny one-epoch models of
``conftest.trained_models_dir`` on the tiny synthetic dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from streamlit.runtime.state.common import user_key_from_element_id
from streamlit.testing.v1 import AppTest

from pneumo_core import artifacts
from pneumo_core.__main__ import main
from pneumo_core.robustness import (
    CATALOGUE,
    FAMILIES,
    FRAMING_10,
    GAMMA_RANGE,
    ROBUSTNESS_FILE,
    VALIDATION_ROBUSTNESS_FILE,
    Figures,
    Perturbation,
    PerturbationResult,
    RobustnessError,
    RobustnessResult,
    catalogue_by_name,
    criteria_table,
    evaluate_robustness,
    flip_directions,
    heatmap_values,
    read_robustness,
    summarise,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
PERTURBATIONS = catalogue_by_name()
IDENTITY = Perturbation("identity", "none", "nothing changed", lambda gray: gray)


def synthetic_image(height: int = 120, width: int = 100, seed: int = 0) -> np.ndarray:
    """A mid-grey synthetic image with a gradient, a bright blob and noise (uint8, 2-D)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    blob = 60.0 * np.exp(-((rows - height / 2) ** 2 + (cols - width / 2) ** 2) / (2 * (width / 5) ** 2))
    image = 90.0 + 40.0 * rows / height + blob + rng.normal(0.0, 6.0, (height, width))
    return np.clip(image, 0, 255).astype(np.uint8)


# --- The catalogue --------------------------------------------------------------------------------------


def test_catalogue_covers_every_family_and_criterion():
    """Unique names; every family of issue 8 at two or more strengths; the criteria groups are complete."""
    names = [perturbation.name for perturbation in CATALOGUE]
    assert len(names) == len(set(names)) >= 35
    for family in FAMILIES:
        assert sum(perturbation.family == family for perturbation in CATALOGUE) >= 2, family
    assert len(FRAMING_10) == 9 and all(PERTURBATIONS[name].family == "framing" for name in FRAMING_10)
    assert set(GAMMA_RANGE) == {"gamma 0.7", "gamma 0.85", "gamma 1.2", "gamma 1.4"}


@pytest.mark.parametrize("perturbation", CATALOGUE, ids=lambda perturbation: perturbation.name)
def test_every_perturbation_keeps_a_2d_uint8_image(perturbation):
    """Every perturbation maps a 2-D uint8 image to a changed, non-empty 2-D uint8 image, and leaves its input alone."""
    image = synthetic_image()
    before = image.copy()
    out = perturbation(image)
    assert out.ndim == 2 and out.dtype == np.uint8 and min(out.shape) > 0
    assert np.array_equal(image, before)
    assert out.shape != image.shape or not np.array_equal(out, image)


def test_a_perturbation_refuses_what_is_not_a_grayscale_image():
    """A colour or float array is refused with a clear ValueError."""
    with pytest.raises(RobustnessError, match="2-D uint8"):
        PERTURBATIONS["gamma 0.7"](np.zeros((10, 10, 3), dtype=np.uint8))
    with pytest.raises(RobustnessError, match="2-D uint8"):
        PERTURBATIONS["crop 5 %"](np.zeros((10, 10), dtype=np.float32))


def test_padding_grows_the_image_with_black_or_edge_pixels():
    """pad 10 %: 12 rows and 10 columns on each side of a 120 x 100 image; black, or the edge repeated."""
    image = synthetic_image()
    black, edge = PERTURBATIONS["pad 10 % black"](image), PERTURBATIONS["pad 10 % edge"](image)
    assert black.shape == edge.shape == (144, 120)
    assert np.array_equal(black[12:-12, 10:-10], image) and np.array_equal(edge[12:-12, 10:-10], image)
    assert black[:12].max() == 0 and black[:, :10].max() == 0
    assert np.array_equal(edge[:12, 10:-10], np.repeat(image[:1], 12, axis=0))
    assert PERTURBATIONS["pad 15 % black"](image).shape == (156, 130)
    assert PERTURBATIONS["pad 10 % edge left-right"](image).shape == (120, 120)
    assert PERTURBATIONS["pad 10 % black top-bottom"](image).shape == (144, 100)


def test_cropping_shrinks_the_image_to_its_centre():
    """crop 10 %: the centre, 12 rows and 10 columns off each side; one-axis crops keep the other axis."""
    image = synthetic_image()
    assert np.array_equal(PERTURBATIONS["crop 10 %"](image), image[12:-12, 10:-10])
    assert PERTURBATIONS["crop 5 %"](image).shape == (108, 90)
    assert np.array_equal(PERTURBATIONS["crop 10 % left-right"](image), image[:, 10:-10])
    assert np.array_equal(PERTURBATIONS["crop 10 % top-bottom"](image), image[12:-12])


def test_stretching_changes_the_content_width_within_the_same_frame():
    """stretch width x1.25 widens the content and cuts it back; x0.8 narrows it and fills the sides with edges."""
    image = np.tile(np.arange(100, dtype=np.uint8), (120, 1))  # brightness = column index
    wider, narrower = PERTURBATIONS["stretch width x1.25"](image), PERTURBATIONS["stretch width x0.8"](image)
    assert wider.shape == narrower.shape == image.shape
    assert 8 <= int(wider[0, 0]) <= 12 and 87 <= int(wider[0, -1]) <= 91  # the outer 10 % are cut off
    assert (narrower[:, :10] == narrower[:, :1]).all() and (narrower[:, -10:] == narrower[:, -1:]).all()
    assert int(narrower[0, 50]) == pytest.approx(50, abs=2)  # the centre stays in place


def test_exposure_moves_brightness_and_contrast_the_right_way():
    """Gamma below 1 brightens, above 1 darkens (stronger further from 1); contrast scales the spread about the mean."""
    image = synthetic_image()
    means = {name: PERTURBATIONS[name](image).mean() for name in GAMMA_RANGE}
    assert means["gamma 0.7"] > means["gamma 0.85"] > image.mean() > means["gamma 1.2"] > means["gamma 1.4"]
    low, high = PERTURBATIONS["contrast x0.7"](image), PERTURBATIONS["contrast x1.3"](image)
    assert low.std() < image.std() < high.std()
    assert abs(low.mean() - image.mean()) < 1.0 and abs(high.mean() - image.mean()) < 2.0


def test_equalisation_spreads_a_narrow_histogram():
    """CLAHE and histogram equalisation widen the grey levels of a low-contrast image."""
    narrow = (100 + synthetic_image() // 8).astype(np.uint8)
    spread = np.percentile(narrow, 99) - np.percentile(narrow, 1)
    for name in ("CLAHE", "histogram equalisation"):
        out = PERTURBATIONS[name](narrow)
        assert np.percentile(out, 99) - np.percentile(out, 1) > 1.5 * spread, name


def sharpness(image: np.ndarray) -> float:
    """The variance of the Laplacian (lower is blurrier)."""
    return float(cv2.Laplacian(image.astype(np.float64), cv2.CV_64F).var())


def test_resolution_losses_keep_the_size_and_lose_detail():
    """Downscale-upscale and blur keep the size and soften more at the stronger setting; JPEG keeps the size."""
    image = synthetic_image(240, 200)
    for weaker, stronger in (("downscale 1/2", "downscale 1/4"), ("blur 0.5 %", "blur 1 %")):
        soft, softer = PERTURBATIONS[weaker](image), PERTURBATIONS[stronger](image)
        assert soft.shape == softer.shape == image.shape
        assert sharpness(image) > sharpness(soft) > sharpness(softer)
    for name in ("JPEG q20", "JPEG q50"):
        out = PERTURBATIONS[name](image)
        assert out.shape == image.shape and np.abs(out.astype(int) - image).mean() < 10


def test_noise_is_seeded_and_scales_with_its_strength():
    """The same noise every time; sd 16 disturbs about twice as much as sd 8; the mean stays."""
    image = np.full((100, 100), 128, dtype=np.uint8)
    mild, strong = PERTURBATIONS["noise sd 8"], PERTURBATIONS["noise sd 16"]
    assert np.array_equal(mild(image), mild(image))
    assert 7 < mild(image).std() < 9 and 15 < strong(image).std() < 17
    assert abs(strong(image).mean() - 128) < 1


def test_rotation_turns_the_content_with_black_corners():
    """+5 and -5 degrees keep the size, blacken the corners, and turn opposite ways."""
    image = np.full((120, 100), 200, dtype=np.uint8)
    plus, minus = PERTURBATIONS["rotate +5°"](image), PERTURBATIONS["rotate -5°"](image)
    assert plus.shape == minus.shape == image.shape
    assert plus[0, 0] == 0 and minus[0, 0] == 0 and plus[60, 50] == 200
    assert not np.array_equal(plus, minus)


@pytest.mark.parametrize(("name", "corner"), [("marker L", "left"), ("marker PORTABLE", "right")])
def test_a_marker_changes_one_corner_only(name, corner):
    """A burned-in marker brightens pixels in the top corner it names and nowhere else."""
    image = np.full((300, 240), 60, dtype=np.uint8)
    out = PERTURBATIONS[name](image)
    changed = np.argwhere(out != image)
    assert len(changed) > 20
    assert (out[out != image] > image[out != image]).all()
    rows, cols = changed[:, 0], changed[:, 1]
    assert rows.max() < 300 * 0.15
    assert cols.max() < 240 / 2 if corner == "left" else cols.min() >= 240 / 2


# --- The figures and the summary --------------------------------------------------------------------


def row(name: str, flip_rate: float, specificity_change: float, ece: float = 0.02) -> PerturbationResult:
    """A perturbation result with the given figures (the rest neutral)."""
    figures = Figures(roc_auc=0.99, sensitivity=0.95, specificity=0.9 + specificity_change, accuracy=0.9, ece=ece)
    return PerturbationResult(
        name=name,
        family=PERTURBATIONS[name].family,
        strength=PERTURBATIONS[name].strength,
        figures=figures,
        flip_rate=flip_rate,
        flips_to_pneumonia=0,
        flips_to_normal=0,
        mean_abs_change=0.0,
        roc_auc_change=0.0,
        sensitivity_change=0.0,
        specificity_change=specificity_change,
    )


def test_summary_names_the_worst_and_checks_the_targets():
    """Worst by flips and by |specificity change|; each criterion records its value, the culprit and pass/fail."""
    baseline = Figures(roc_auc=0.995, sensitivity=0.95, specificity=0.9, accuracy=0.93, ece=0.02)
    rows = [row(name, 0.01, 0.0) for name in (*FRAMING_10, *GAMMA_RANGE)]
    rows += [row("CLAHE", 0.30, -0.25, ece=0.2), row("crop 15 %", 0.10, 0.05)]
    rows[1] = row(FRAMING_10[1], 0.05, -0.02)
    summary = summarise(baseline, rows)
    assert [case.perturbation for case in summary.worst_by_flip_rate] == ["CLAHE", "crop 15 %", FRAMING_10[1]]
    assert summary.worst_by_specificity_change[0].perturbation == "CLAHE"
    assert summary.worst_by_specificity_change[0].value == pytest.approx(-0.25)
    criteria = {criterion.name: criterion for criterion in summary.criteria}
    framing_flips = criteria["framing ±10 %: flip rate"]
    assert framing_flips.measured == 0.05 and framing_flips.worst == FRAMING_10[1] and not framing_flips.passed
    assert criteria["framing ±10 %: |specificity change|"].passed
    assert criteria["gamma 0.7 to 1.4: flip rate"].passed and criteria["ROC AUC, unperturbed"].passed
    assert summary.ece_under_shift == pytest.approx((13 * 0.02 + 0.2 + 0.02) / 15)
    assert criteria["ECE under shift"].passed is (summary.ece_under_shift <= 0.05)
    assert not summary.all_passed


@pytest.fixture(scope="module")
def tiny_cnn(trained_models_dir):
    """The tiny one-epoch cnn, loaded."""
    return artifacts.load_model_dir(trained_models_dir / "cnn")


@pytest.fixture(scope="module")
def synthetic_grays(synthetic_dataset) -> tuple[list[np.ndarray], np.ndarray]:
    """The decoded synthetic images and their labels (1 = PNEUMONIA)."""
    from pneumo_core.imaging import read_xray_file

    paths = sorted((synthetic_dataset / "NORMAL").iterdir()) + sorted((synthetic_dataset / "PNEUMONIA").iterdir())
    labels = np.array([int(path.parent.name == "PNEUMONIA") for path in paths])
    return [read_xray_file(path).gray for path in paths], labels


def test_identity_flips_nothing(tiny_cnn, synthetic_grays):
    """Reading the same images again changes no answer, no probability and no figure."""
    grays, labels = synthetic_grays
    result = evaluate_robustness(tiny_cnn, iter(grays), labels, [IDENTITY], batch_size=5)
    (same,) = result.perturbations
    assert same.flip_rate == 0.0 and same.mean_abs_change == pytest.approx(0.0, abs=1e-6)
    assert same.specificity_change == 0.0 and same.sensitivity_change == 0.0 and same.roc_auc_change == 0.0
    assert same.figures == result.unperturbed
    assert result.n == len(labels) and result.n_per_class == {"NORMAL": 12, "PNEUMONIA": 13}
    assert result.model_sha256 == tiny_cnn.config.checksums["model.keras"]


def test_flip_rate_counts_the_changed_answers(tiny_cnn, synthetic_grays):
    """Inverting the grey levels turns dark NORMAL images bright: flips are counted per direction, and the
    result round-trips through its JSON."""
    grays, labels = synthetic_grays
    invert = Perturbation("invert", "test", "255 - x", cv2.bitwise_not)
    result = evaluate_robustness(tiny_cnn, grays, labels, [IDENTITY, invert])
    # One batch, as evaluate_robustness reads them: a score within a rounding error of the threshold could land on
    # the other side of it when read one at a time (it did on a fresh install).
    base = tiny_cnn.predict_squares(np.stack([tiny_cnn.square(gray) for gray in grays]))
    inverted = tiny_cnn.predict_squares(np.stack([tiny_cnn.square(255 - gray) for gray in grays]))
    threshold = tiny_cnn.threshold
    flipped = (base >= threshold) != (inverted >= threshold)
    measured = result.by_name()["invert"]
    assert measured.flip_rate == pytest.approx(flipped.mean())
    assert measured.flips_to_pneumonia + measured.flips_to_normal == flipped.sum()
    assert measured.mean_abs_change == pytest.approx(np.abs(inverted - base).mean(), abs=1e-5)
    again = artifacts.from_json(RobustnessResult, json.loads(json.dumps(artifacts.to_json(result))))
    assert again == result


def test_unreadable_images_are_left_out_and_labels_must_match(tiny_cnn, synthetic_grays):
    """None marks an unreadable image (left out with its label); more or fewer images than labels is refused."""
    grays, labels = synthetic_grays
    result = evaluate_robustness(tiny_cnn, [None, *grays[1:]], labels, [IDENTITY])
    assert result.n == len(labels) - 1 and result.n_per_class["NORMAL"] == 11
    with pytest.raises(RobustnessError, match="labels"):
        evaluate_robustness(tiny_cnn, grays, labels[:-1], [IDENTITY])
    with pytest.raises(RobustnessError, match="labels"):
        evaluate_robustness(tiny_cnn, grays[:-1], labels, [IDENTITY])
    with pytest.raises(RobustnessError, match="0 \\(NORMAL\\) and 1"):
        evaluate_robustness(tiny_cnn, grays, labels * 2, [IDENTITY])


# --- The command line -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def measured_models_dir(trained_models_dir, synthetic_dataset, tmp_path_factory) -> Path:
    """A copy of the tiny models where the CLI measured cnn's robustness on the internal test split."""
    models_dir = tmp_path_factory.mktemp("robustness") / "models"
    for name in ("cnn", "mlp"):
        shutil.copytree(trained_models_dir / name, models_dir / name)
    split_file = trained_models_dir.parent / "split.csv"
    argv = ["robustness", "--model", "cnn", "--data", str(synthetic_dataset), "--models-dir", str(models_dir)]
    assert main([*argv, "--split-file", str(split_file)]) == 0
    return models_dir


def test_cli_writes_a_sealed_robustness_json(measured_models_dir, trained_models_dir):
    """robustness.json is typed, for this model file, on the internal test split, and the directory re-sealed."""
    directory = measured_models_dir / "cnn"
    loaded = artifacts.load_model_dir(directory)
    assert ROBUSTNESS_FILE in loaded.config.checksums
    checked = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=directory, capture_output=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = read_robustness(directory)
    assert result.model == "cnn" and result.threshold == loaded.threshold
    assert [row.name for row in result.perturbations] == [perturbation.name for perturbation in CATALOGUE]
    assert result.data.kind == "internal test split" and result.data.limit is None
    assert result.data.split_hash == loaded.config.data.split_hash
    assert result.n == sum(result.n_per_class.values()) == loaded.config.data.split_sizes["test"]
    assert result.seconds > 0 and len(result.summary.criteria) == 6
    assert not any(value.startswith("/") for value in (result.data.folder, result.data.split_file))
    assert read_robustness(measured_models_dir / "mlp") is None


def test_cli_measures_the_validation_split_for_choosing_models(
    measured_models_dir, trained_models_dir, synthetic_dataset, tmp_path
):
    """--split val writes the sealed robustness_val.json of the validation images, beside the test split's file."""
    models_dir = tmp_path / "models"
    shutil.copytree(measured_models_dir / "cnn", models_dir / "cnn")
    argv = ["robustness", "--model", "cnn", "--data", str(synthetic_dataset), "--models-dir", str(models_dir)]
    split = ["--split-file", str(trained_models_dir.parent / "split.csv")]
    assert main([*argv, *split, "--split", "val"]) == 0
    directory = models_dir / "cnn"
    loaded = artifacts.load_model_dir(directory)
    assert {ROBUSTNESS_FILE, VALIDATION_ROBUSTNESS_FILE} <= set(loaded.config.checksums)
    validation, test = read_robustness(directory, split="val"), read_robustness(directory)
    assert validation.data.kind == "internal validation split"
    assert validation.n == loaded.config.data.split_sizes["val"]
    assert test.data.kind == "internal test split"
    assert main([*argv, *split, "--split", "val", "--out", str(directory / ROBUSTNESS_FILE)]) == 2


def test_cli_on_another_folder_needs_out_and_keeps_the_model_dir(measured_models_dir, synthetic_dataset, tmp_path):
    """A folder that is not the split is measured whole into --out; the model directory is left untouched."""
    folder = tmp_path / "site"
    shutil.copytree(synthetic_dataset, folder)
    (folder / "NORMAL" / "IM-0001-0001.jpeg").unlink()
    directory = measured_models_dir / "cnn"
    sums = (directory / "SHA256SUMS").read_text()
    argv = ["robustness", "--model", "cnn", "--data", str(folder), "--models-dir", str(measured_models_dir)]
    assert main(argv) == 2
    assert main([*argv, "--out", str(directory / ROBUSTNESS_FILE)]) == 2
    out = tmp_path / "site_robustness.json"
    assert main([*argv, "--out", str(out), "--limit", "10"]) == 0
    result = artifacts.from_json(RobustnessResult, json.loads(out.read_text()))
    assert result.data.kind == "folder" and result.data.limit == 10 and result.n == 10
    assert (directory / "SHA256SUMS").read_text() == sums


# --- What the pages, the cards and the README show ----------------------------------------------------


def test_compare_page_shows_the_robustness_section(measured_models_dir, monkeypatch):
    """Heatmap (flip rate, then specificity change), worst cases per model, criteria table, mlp not measured."""
    monkeypatch.setenv("PNEUMO_MODELS_DIR", str(measured_models_dir))
    at = AppTest.from_file(str(REPO_ROOT / "pages" / "compare.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    assert "Robustness to framing and exposure" in [header.value for header in at.subheader]
    keys = [user_key_from_element_id(chart.proto.id) for chart in at.get("plotly_chart")]
    assert "robustness_heatmap" in keys
    sentence = next(
        markdown.value for markdown in at.markdown if "`cnn` changes its answer most under" in markdown.value
    )
    assert " to normal, " in sentence and " to pneumonia)" in sentence  # which way the worst flips went
    assert any("Not measured: `mlp`" in caption.value for caption in at.caption)
    table = next(frame.value for frame in at.dataframe if "ECE under shift ≤ 0.05" in frame.value.index)
    assert list(table.columns) == ["cnn"]
    at.radio(key="robustness_metric").set_value("specificity_change").run()
    assert not at.exception, at.exception


def test_heatmap_and_criteria_tables_hold_every_measured_model(measured_models_dir):
    """Models x perturbations in catalogue order; criteria rows with their limits."""
    results = {"cnn": read_robustness(measured_models_dir / "cnn")}
    flips = heatmap_values(results, "flip_rate")
    assert list(flips.index) == ["cnn"] and list(flips.columns) == [p.name for p in CATALOGUE]
    assert ((flips >= 0) & (flips <= 1)).all().all()
    with pytest.raises(ValueError, match="flip_rate"):
        heatmap_values(results, "accuracy")
    assert "framing ±10 %: flip rate ≤ 0.03" in criteria_table(results).index


def test_the_heatmap_says_which_way_the_answers_changed(measured_models_dir):
    """Hovering a cell names the flips to normal (pneumonia readings lost) and to pneumonia, from the JSON."""
    from pneumo_core.figures import robustness_heatmap

    result = read_robustness(measured_models_dir / "cnn")
    row = result.perturbations[0]
    words = flip_directions({"cnn": result})
    assert words.loc["cnn", row.name] == f"{row.flips_to_normal} to normal, {row.flips_to_pneumonia} to pneumonia"
    heatmap = robustness_heatmap({"cnn": result}).data[0]
    assert heatmap.customdata[0][0] == words.iloc[0, 0] and "%{customdata}" in heatmap.hovertemplate


def test_card_and_readme_table_summarise_robustness(measured_models_dir, tmp_path):
    """The re-rendered card has a robustness section; the README block has the measured and the missing model."""
    from pneumo_core.report import refresh_card, robustness_table

    refresh_card(measured_models_dir / "cnn")
    card = (measured_models_dir / "cnn" / artifacts.CARD_FILE).read_text()
    assert "## Robustness to framing and exposure" in card and "ECE under shift" in card
    result = read_robustness(measured_models_dir / "cnn")
    worst = result.by_name()[result.summary.worst_by_flip_rate[0].perturbation]
    assert f"({worst.flips_to_normal} to normal, {worst.flips_to_pneumonia} to pneumonia)" in card
    artifacts.load_model_dir(measured_models_dir / "cnn")
    table = robustness_table(measured_models_dir)
    assert "| `mlp` | not measured |" in table
    assert f"| `cnn` | {read_robustness(measured_models_dir / 'cnn').n} |" in table


NO_TENSORFLOW = """
import sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file("pages/compare.py", default_timeout=60).run()
assert not at.exception, at.exception
assert any(header.value == "Robustness to framing and exposure" for header in at.subheader)
loaded = sorted(name for name in ("tensorflow", "keras", "sklearn") if name in sys.modules)
print("loaded:", loaded)
sys.exit(1 if loaded else 0)
"""


def test_compare_page_with_robustness_imports_no_tensorflow(measured_models_dir):
    """Showing robustness.json on the Compare page reads JSON only: no TensorFlow, no scikit-learn."""
    env = {**os.environ, "PNEUMO_MODELS_DIR": str(measured_models_dir), "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
