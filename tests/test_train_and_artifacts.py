"""End-to-end tests on models trained by the real CLI: typed artifacts, loading, checksums, CLI, Grad-CAM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from pneumo_core import artifacts, data, gradcam
from pneumo_core.__main__ import main
from pneumo_core.imaging import decode_grayscale, resize_square

TRAINED = ("cnn", "mlp")
ARTIFACT_FILES = ("model.keras", "config.json", "metrics.json", "history.json", "card.md", "SHA256SUMS")


@pytest.fixture(scope="module")
def loaded_models(trained_models_dir) -> dict[str, artifacts.LoadedModel]:
    """The trained cnn and mlp, loaded once through load_model_dir."""
    return {name: artifacts.load_model_dir(trained_models_dir / name) for name in TRAINED}


@pytest.fixture(scope="module")
def image_paths(synthetic_dataset) -> list[Path]:
    """All synthetic images, NORMAL first."""
    return [Path(path) for path in data.list_images(synthetic_dataset)["path"]]


@pytest.mark.parametrize("name", TRAINED)
def test_artifact_directory_is_complete(trained_models_dir, name):
    """Training writes model.keras, config.json, metrics.json, history.json and card.md."""
    directory = trained_models_dir / name
    for file_name in ARTIFACT_FILES:
        assert (directory / file_name).is_file(), f"{file_name} missing"
        assert (directory / file_name).stat().st_size > 0
    assert artifacts.shipped_model_dirs(trained_models_dir) == {n: trained_models_dir / n for n in TRAINED}


@pytest.mark.parametrize("name", TRAINED)
def test_config_contents_and_checksums(trained_models_dir, name):
    """config.json records spec, args, the threshold once, split facts, provenance and checksums that match."""
    directory = trained_models_dir / name
    found = artifacts.read_model_dir(directory, verify_model_file=True)
    config, metrics = found.config, found.metrics
    assert config.schema_version == artifacts.SCHEMA_VERSION
    assert config.spec.name == config.args.model == metrics.model == name
    assert config.spec.input_size == {"cnn": 160, "mlp": 64}[name]
    assert config.args.epochs == 1
    assert 0.0 < config.threshold < 1.0
    assert config.threshold == metrics.validation.threshold == metrics.test.threshold
    raw_metrics = json.loads((directory / "metrics.json").read_text())
    assert "threshold" not in raw_metrics  # stored once, in config.json
    split_file = trained_models_dir.parent / "split.csv"
    assert config.data.split_hash == data.split_hash(split_file)
    assert sum(config.data.split_sizes.values()) == 25
    assert all(config.data.split_sizes[part] > 0 for part in ("train", "val", "test"))
    assert config.data.split_fractions == data.SPLIT_FRACTIONS
    assert config.split_percentages == "70/15/15"
    assert config.min_sensitivity == 0.95
    assert "ages 1-5" in config.population.summary
    assert set(config.checksums) == {"model.keras", "metrics.json", "history.json", "card.md"}
    for file_name, digest in config.checksums.items():
        assert artifacts.sha256_of(directory / file_name) == digest, f"checksum of {file_name}"
    assert config.provenance.epochs_run == 1
    assert config.parameters > 0


@pytest.mark.parametrize("name", TRAINED)
def test_provenance_and_relative_paths(trained_models_dir, name):
    """Training wall time, machine and library versions are recorded; no absolute build-machine path is."""
    config = artifacts.read_model_dir(trained_models_dir / name).config
    provenance = config.provenance
    assert provenance.training_seconds > 0
    assert provenance.machine is not None
    assert provenance.machine.cpu_cores >= 1
    assert isinstance(provenance.machine.gpus, tuple)
    assert set(provenance.libraries) >= {"python", "tensorflow", "keras", "numpy"}
    # The test trainings write under the temporary folder, outside the repository.
    assert config.args.out == f"{artifacts.OUTSIDE_REPO}/models"
    assert config.data.split_file == f"{artifacts.OUTSIDE_REPO}/split.csv"
    text = (trained_models_dir / name / "config.json").read_text()
    assert str(trained_models_dir.parent) not in text
    assert str(artifacts.REPO_ROOT) not in text


@pytest.mark.parametrize("name", TRAINED)
def test_metrics_history_and_card(trained_models_dir, name):
    """metrics.json covers test and validation, history.json has one epoch, the card disclaims medical use."""
    directory = trained_models_dir / name
    found = artifacts.read_model_dir(directory)
    assert found.metrics.test.n + found.metrics.validation.n < 25
    assert found.metrics.validation.sensitivity >= 0.95  # the threshold rule, on the data it was chosen on
    assert len(found.history) == 1
    assert {"epoch", "loss", "val_loss", "phase"} <= set(found.history[0])
    card = (directory / "card.md").read_text()
    assert "not a medical device" in card.lower()
    assert f"`{name}`" in card
    assert "70/15/15" in card
    assert found.config.population.not_validated_on in card.replace("\n  ", " ")


@pytest.mark.parametrize("name", TRAINED)
def test_loaded_predictions_match_raw_keras_model(trained_models_dir, loaded_models, image_paths, name):
    """LoadedModel.predict_squares equals the .keras file loaded directly with Keras (atol 1e-5)."""
    loaded = loaded_models[name]
    assert loaded.spec.name == name
    assert loaded.threshold == loaded.config.threshold
    assert loaded.metrics == artifacts.read_model_dir(trained_models_dir / name).metrics
    squares = data.load_arrays([str(p) for p in image_paths], loaded.spec.input_size)
    raw = keras.saving.load_model(trained_models_dir / name / "model.keras", compile=False)
    expected = keras.ops.convert_to_numpy(raw(loaded.spec.model_input(squares), training=False))[:, 0]
    prob = loaded.predict_squares(squares, batch_size=7)
    assert prob.shape == (len(image_paths),)
    np.testing.assert_allclose(prob, expected, atol=1e-5)
    assert ((prob >= 0) & (prob <= 1)).all()
    assert loaded.predict_squares(squares[:0]).shape == (0,)
    np.testing.assert_array_equal(loaded.square(decode_grayscale(image_paths[0].read_bytes())), squares[0])
    assert loaded.label(loaded.threshold) == "PNEUMONIA"
    assert loaded.label(np.nextafter(loaded.threshold, -1.0)) == "NORMAL"


@pytest.mark.parametrize("tamper", ["append", "flip"])
def test_tampered_model_file_is_refused(trained_models_dir, tmp_path, tamper):
    """A copy of the model dir whose model.keras gained a byte or had one flipped fails the sha256 check."""
    copy = tmp_path / "cnn"
    shutil.copytree(trained_models_dir / "cnn", copy)
    artifacts.load_model_dir(copy)  # the untouched copy loads
    model_file = copy / "model.keras"
    content = bytearray(model_file.read_bytes())
    if tamper == "append":
        content.append(0)
    else:
        content[len(content) // 2] ^= 0xFF
    model_file.write_bytes(bytes(content))
    with pytest.raises(artifacts.ModelRefused, match=r"model.keras does not match its sha256"):
        artifacts.load_model_dir(copy)


def test_missing_artifact_files_are_refused(trained_models_dir, tmp_path):
    """A model dir without model.keras or without config.json is refused with the file's name."""
    copy = tmp_path / "mlp"
    shutil.copytree(trained_models_dir / "mlp", copy)
    (copy / "model.keras").unlink()
    with pytest.raises(artifacts.ModelRefused, match=r"model.keras is missing"):
        artifacts.load_model_dir(copy)
    (copy / "config.json").unlink()
    with pytest.raises(artifacts.ModelRefused, match=r"config.json is missing"):
        artifacts.load_model_dir(copy)


def test_cli_predict_json(trained_models_dir, image_paths, tmp_path, capsys):
    """`predict --json` prints one JSON line per image: probability and label, or a refusal for a non-image."""
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is text, not an X-ray")
    chosen = [image_paths[0], image_paths[-1]]
    argv = ["predict", "--model", "cnn", "--models-dir", str(trained_models_dir), "--json"]
    exit_code = main([*argv, *map(str, chosen), str(not_image)])
    assert exit_code == 1  # one file failed
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [row["image"] for row in rows] == [*map(str, chosen), str(not_image)]
    for row in rows[:2]:
        assert row["accepted"] and row["reason"] is None
        assert 0.0 <= row["probability"] <= 1.0
        assert row["label"] in ("NORMAL", "PNEUMONIA")
    assert not rows[2]["accepted"]
    assert "not an image" in rows[2]["reason"]
    assert rows[2]["probability"] is None and rows[2]["label"] is None
    assert main([*argv, str(image_paths[0])]) == 0


def test_cli_predict_unknown_model_dir(tmp_path, image_paths, capsys):
    """Predicting with a model that was not trained exits 2 with a message on stderr."""
    exit_code = main(["predict", "--model", "mlp", "--models-dir", str(tmp_path), str(image_paths[0])])
    assert exit_code == 2
    assert "No trained mlp" in capsys.readouterr().err


def test_cli_evaluate_manifest_free_folder(trained_models_dir, synthetic_dataset, tmp_path, capsys):
    """`evaluate --data DIR --out x.json` on a folder that is not the split's data scores all its images."""
    out = tmp_path / "reports" / "x.json"
    argv = ["evaluate", "--model", "mlp", "--models-dir", str(trained_models_dir)]
    assert main([*argv, "--data", str(synthetic_dataset), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "mlp"
    assert "all 25 images" in result["data"]
    metrics = result["metrics"]
    assert metrics["n"] == 25
    assert metrics["n_per_class"] == {"NORMAL": 12, "PNEUMONIA": 13}
    assert set(metrics["sensitivity_by_subtype"]) == {"bacteria", "virus"}
    assert result["threshold"] == artifacts.read_model_dir(trained_models_dir / "mlp").config.threshold
    assert "mlp on all 25 images" in capsys.readouterr().out


@pytest.mark.parametrize("name", TRAINED)
def test_explainer_maps_for_every_method(loaded_models, image_paths, name):
    """Every method of methods_for() gives a finite (size, size) map in [0, 1], for both target classes."""
    loaded = loaded_models[name]
    methods = gradcam.methods_for(loaded)
    assert methods == (gradcam.CAM_METHODS if name == "cnn" else (gradcam.SALIENCY_METHOD,))
    explainer = gradcam.Explainer(loaded)
    size = loaded.spec.input_size
    square = resize_square(decode_grayscale(image_paths[-1].read_bytes()), size)
    peaks = []
    for method in methods:
        for target_class in (1, 0):
            heat = explainer.heatmap(square, method, target_class=target_class)
            assert heat.shape == (size, size), method
            assert np.isfinite(heat).all(), method
            assert heat.min() >= 0.0, method
            assert heat.max() <= 1.0, method
            peaks.append(float(heat.max()))
    # A map is either flat (all zeros: no evidence) or stretched to exactly [0, 1]; not all may be flat.
    assert set(peaks) <= {0.0, 1.0}
    assert 1.0 in peaks
    wrong = gradcam.SALIENCY_METHOD if name == "cnn" else "Grad-CAM"
    with pytest.raises(ValueError, match="not available"):
        explainer.heatmap(square, wrong, target_class=1)


def test_compiled_gradcam_equals_tf_keras_vis(loaded_models, image_paths):
    """The compiled Grad-CAM gives tf-keras-vis's Gradcam map, for both classes and for the subtype logit."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.scores import CategoricalScore

    loaded = loaded_models["cnn"]
    explain_model = gradcam.two_logit_model(loaded.model)
    reference = Gradcam(explain_model, clone=False)
    compiled = gradcam.compiled_gradcam(explain_model, loaded.spec)
    nonflat = 0
    for path in image_paths[-4:]:
        square = resize_square(decode_grayscale(path.read_bytes()), loaded.spec.input_size)
        for index in (0, 1):
            expected = reference(
                CategoricalScore([index]),
                loaded.spec.model_input(square[None]),
                penultimate_layer=loaded.spec.gradcam_layer,
                seek_penultimate_conv_layer=False,
            )[0]
            fast = gradcam._unit_range(compiled(square, index))
            np.testing.assert_allclose(fast, gradcam._unit_range(np.asarray(expected)), atol=1e-4)
            nonflat += int(fast.max() > 0)
    assert nonflat > 0


def test_two_logit_model_softmax_equals_probability(loaded_models, image_paths):
    """The explained model's softmax over [-z/2, z/2] is exactly [1 - p, p]."""
    loaded = loaded_models["cnn"]
    squares = data.load_arrays([str(p) for p in image_paths[:4]], loaded.spec.input_size)
    model_input = loaded.spec.model_input(squares)
    logits = keras.ops.convert_to_numpy(gradcam.two_logit_model(loaded.model)(model_input, training=False))
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    prob = loaded.predict_squares(squares)
    np.testing.assert_allclose(softmax[:, 1], prob, atol=1e-5)


def test_overlay_returns_original_size_rgb(loaded_models, image_paths):
    """overlay() blends a square heatmap over the original non-square image at its own size, as RGB uint8."""
    gray = decode_grayscale(image_paths[0].read_bytes())
    assert gray.shape == (88, 72)
    heat = np.linspace(0, 1, 160 * 160, dtype=np.float32).reshape(160, 160)
    for colormap in gradcam.COLORMAPS:
        rgb = gradcam.overlay(gray, heat, opacity=0.4, colormap=colormap)
        assert rgb.shape == (88, 72, 3)
        assert rgb.dtype == np.uint8
    untouched = gradcam.overlay(gray, heat, opacity=0.0)
    np.testing.assert_array_equal(untouched, np.stack([gray] * 3, axis=-1))
    with pytest.raises(ValueError, match="opacity"):
        gradcam.overlay(gray, heat, opacity=1.5)
    with pytest.raises(ValueError, match="colormap"):
        gradcam.overlay(gray, heat, colormap="rainbow-unicorn")
