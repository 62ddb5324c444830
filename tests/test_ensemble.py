"""Ensembles (``pneumo_core.ensemble``): trained models (several cnn_robust, or xception and a cnn_ensemble)
averaged in logit space as one flat model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import train_argv

from pneumo_core import artifacts, models, registry
from pneumo_core.__main__ import main
from pneumo_core.gradcam import Explainer, methods_for
from pneumo_core.train import output_logits


def randomised(model: keras.Model, seed: int) -> keras.Model:
    """``model`` with random weights everywhere (batch-norm variances kept positive), so each layer matters."""
    rng = np.random.default_rng(seed)
    values = [rng.uniform(0.0, 0.2, w.shape) + (0.5 if "variance" in w.path else 0.0) for w in model.weights]
    model.set_weights([value.astype("float32") for value in values])
    return model


def test_the_fused_ensemble_outputs_the_mean_of_its_members_logits():
    members = [randomised(models.build_cnn(32, 1, depth=3), seed) for seed in range(3)]
    ensemble = models.build_cnn_ensemble(32, 1, members=3, depth=3)
    models.fuse_cnn_members(ensemble, members)
    batch = np.random.default_rng(9).uniform(0, 1, (4, 32, 32, 1)).astype("float32")
    expected = np.mean([output_logits(member, batch) for member in members], axis=0)
    np.testing.assert_allclose(output_logits(ensemble, batch), expected, rtol=1e-5)
    assert not any(isinstance(layer, keras.Model) for layer in ensemble.layers)
    channels = members[0].get_layer("last_conv_act").output.shape[-1]
    assert ensemble.get_layer("last_conv_act").output.shape[-1] == 3 * channels


def test_an_ensemble_needs_two_members_of_its_own_architecture():
    with pytest.raises(ValueError, match="at least two members"):
        models.build_cnn_ensemble(32, 1, members=1)
    ensemble = models.build_cnn_ensemble(32, 1, members=2, depth=3)
    with pytest.raises(ValueError, match="does not match"):
        narrow = models.build_cnn(32, 1, depth=3, base_filters=16)
        models.fuse_cnn_members(ensemble, [models.build_cnn(32, 1, depth=3), narrow])


@pytest.fixture(scope="module")
def member_dirs(synthetic_dataset, tmp_path_factory):
    """Two cnn_robust models trained for one epoch with different seeds, on one split."""
    work = tmp_path_factory.mktemp("members")
    dirs = []
    for seed in (1, 2):
        out = work / f"seed{seed}"
        argv = train_argv("cnn_robust", synthetic_dataset, work, "--seed", str(seed), "--out", str(out))
        assert main(argv) == 0
        dirs.append(out / "cnn_robust")
    return work, dirs


def test_train_assembles_an_ensemble_that_the_app_loads_like_any_model(synthetic_dataset, member_dirs):
    work, dirs = member_dirs
    argv = train_argv("cnn_ensemble", synthetic_dataset, work, "--members", *map(str, dirs))
    assert main(argv) == 0
    ensemble = artifacts.load_model_dir(work / "models" / "cnn_ensemble")
    members = [artifacts.load_model_dir(directory) for directory in dirs]

    squares = np.random.default_rng(3).integers(0, 256, (5, 160, 160), dtype=np.uint8)
    batch = ensemble.spec.model_input(squares)
    calibration = ensemble.config.calibration  # refitted on the validation split, folded into the output
    mean = np.mean([output_logits(member.model, batch) for member in members], axis=0)
    expected = calibration.scale * mean + calibration.shift
    np.testing.assert_allclose(output_logits(ensemble.model, batch), expected, rtol=1e-4, atol=1e-4)

    recorded = ensemble.config.args.members
    assert [member.model_sha256 for member in recorded] == [artifacts.sha256_of(d / "model.keras") for d in dirs]
    assert [member.seed for member in recorded] == [1, 2]
    assert ensemble.config.args.model_params["members"] == 2 and ensemble.config.provenance.epochs_run == 0
    card = (ensemble.directory / "card.md").read_text()
    assert "Not trained as a whole" in card and "seed 2" in card
    heat = Explainer(ensemble).heatmap(squares[0], "Grad-CAM", target_class=1)
    assert heat.shape == (160, 160) and 0.0 <= heat.min() <= heat.max() <= 1.0


def test_wrong_members_are_refused(synthetic_dataset, trained_models_dir, member_dirs, capsys):
    work, dirs = member_dirs
    argv = train_argv("cnn_ensemble", synthetic_dataset, work, "--members", str(dirs[0]))
    assert main(argv) == 2
    assert "at least two" in capsys.readouterr().err
    a_cnn = trained_models_dir / "cnn"
    argv = train_argv("cnn_ensemble", synthetic_dataset, work, "--members", str(dirs[0]), str(a_cnn))
    assert main(argv) == 2
    assert "holds a cnn model" in capsys.readouterr().err
    argv = train_argv("cnn", synthetic_dataset, work, "--members", *map(str, dirs))
    assert main(argv) == 2
    assert "--members is for an ensemble" in capsys.readouterr().err


def test_the_compare_page_says_why_an_ensemble_has_no_training_curves(synthetic_dataset, member_dirs, monkeypatch):
    """An assembled ensemble has no epochs: the page names its members' card instead of drawing empty axes."""
    from streamlit.runtime.state.common import user_key_from_element_id
    from streamlit.testing.v1 import AppTest

    work, dirs = member_dirs
    models_dir = work / "app_models"
    argv = train_argv("cnn_ensemble", synthetic_dataset, work, "--members", *map(str, dirs), "--out", str(models_dir))
    assert main(argv) == 0
    monkeypatch.setenv("PNEUMO_MODELS_DIR", str(models_dir))
    app = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=60)
    app.run()
    app.switch_page("pages/compare.py").run()
    assert not app.exception, app.exception
    keys = [user_key_from_element_id(chart.proto.id) for chart in app.get("plotly_chart")]
    assert "confusion_cnn_ensemble" in keys and "history_cnn_ensemble" not in keys
    notes = [markdown.value for markdown in app.markdown]
    assert any(note.startswith("**cnn_ensemble**: no training curves: it was assembled") for note in notes)


def small_mixed_ensemble() -> tuple[keras.Model, keras.Model, keras.Model]:
    """(mixed ensemble, xception, cnn_ensemble): a 72 px xception and a 32 px two-member cnn_ensemble, fused.

    The xception keeps Keras' seeded initialisation: the uniform weights of :func:`randomised` overflow its 36
    conv layers.
    """
    keras.utils.set_random_seed(0)
    xception = models.build_xception(72, weights=None)
    cnns = randomised(models.build_cnn_ensemble(32, 1, members=2, depth=3), 1)
    mixed = models.build_xception_cnn_ensemble(72, 1, members=2, cnn_input_size=32, depth=3)
    models.fuse_xception_cnn(mixed, xception, cnns)
    return mixed, xception, cnns


def test_the_mixed_ensemble_outputs_the_mean_of_the_xception_and_cnn_logits():
    mixed, xception, cnns = small_mixed_ensemble()
    assert not any(isinstance(layer, keras.Model) for layer in mixed.layers)
    squares = np.random.default_rng(4).integers(0, 256, (4, 72, 72, 1)).astype("float32")
    xception_input = keras.ops.convert_to_numpy(registry.scale_xception(squares))
    cnn_input = keras.ops.convert_to_numpy(keras.layers.Resizing(32, 32, interpolation="area")(squares / 255.0))
    expected = (output_logits(xception, xception_input) + output_logits(cnns, cnn_input)) / 2
    np.testing.assert_allclose(output_logits(mixed, squares / 255.0), expected, rtol=1e-4, atol=1e-4)


def test_the_mixed_ensemble_refuses_a_member_of_another_shape():
    mixed = models.build_xception_cnn_ensemble(72, 1, members=2, cnn_input_size=32, depth=3)
    wide = models.build_cnn_ensemble(32, 1, members=2, depth=3, base_filters=16)
    with pytest.raises(ValueError, match="does not match"):
        models.fuse_xception_cnn(mixed, models.build_xception(72, weights=None), wide)


def test_grad_cam_of_the_mixed_ensemble_adds_both_branches_maps():
    """One map: each branch's gradient-weighted channels zoomed to the input, added, then the ReLU."""
    import tensorflow as tf
    from scipy.ndimage import zoom

    from pneumo_core.gradcam import compiled_gradcam, two_logit_model

    mixed, _, _ = small_mixed_ensemble()
    spec = replace(registry.get_spec("xception_cnn_ensemble"), input_size=72)
    explain = two_logit_model(mixed)
    square = np.random.default_rng(5).integers(0, 256, (72, 72), dtype=np.uint8)
    layers = (spec.gradcam_layer, *spec.extra_gradcam_layers)
    probe = keras.Model(explain.inputs, [explain.outputs[0], *(explain.get_layer(name).output for name in layers)])
    with tf.GradientTape() as tape:
        logits, *maps = probe(spec.preprocess(square[None, ..., None].astype("float32")), training=False)
        tape.watch(maps)
        score = logits[:, 1]
    branch_maps = []
    for conv, grads in zip(maps, tape.gradient(score, maps), strict=True):
        weighted = np.sum(conv.numpy() * np.mean(grads.numpy(), axis=(1, 2), keepdims=True), axis=-1)[0]
        branch_maps.append(zoom(weighted, (72 / weighted.shape[0], 72 / weighted.shape[1]), order=1))
    assert all(np.abs(branch).max() > 0 for branch in branch_maps), "both branches carry evidence"
    expected = np.maximum(sum(branch_maps), 0.0)
    np.testing.assert_allclose(compiled_gradcam(explain, spec)(square, 1), expected, rtol=1e-3, atol=1e-5)


def test_train_assembles_a_mixed_ensemble_of_xception_and_cnn_ensemble(synthetic_dataset, member_dirs, capsys):
    """The real CLI: xception and cnn_ensemble trained on one split become one calibrated, explainable model."""
    work, dirs = member_dirs
    cnns_out, xception_out = work / "cnns", work / "xception"
    argv = train_argv("cnn_ensemble", synthetic_dataset, work, "--members", *map(str, dirs), "--out", str(cnns_out))
    assert main(argv) == 0
    xception_args = ("--backbone-weights", "none", "--fine-tune-epochs", "0", "--out", str(xception_out))
    assert main(train_argv("xception", synthetic_dataset, work, *xception_args)) == 0
    members = [xception_out / "xception", cnns_out / "cnn_ensemble"]

    def assemble(*folders: Path) -> int:
        return main(train_argv("xception_cnn_ensemble", synthetic_dataset, work, "--members", *map(str, folders)))

    assert assemble(*members[::-1]) == 2
    assert "expects xception there" in capsys.readouterr().err
    assert assemble(members[0]) == 2
    assert "one trained model of each of xception, cnn_ensemble" in capsys.readouterr().err

    assert assemble(*members) == 0
    mixed = artifacts.load_model_dir(work / "models" / "xception_cnn_ensemble")
    recorded = [member.model_sha256 for member in mixed.config.args.members]
    assert mixed.framing == "trim" and recorded == [artifacts.sha256_of(d / "model.keras") for d in members]
    card = (mixed.directory / "card.md").read_text()
    assert "Not trained as a whole" in card and "Grad-CAM or SmoothGrad saliency" in card
    assert "the cnn_ensemble ensemble of trained cnn_robust models; its card lists them" in card
    square = mixed.square(np.random.default_rng(6).integers(0, 256, (300, 260), dtype=np.uint8))
    assert 0.0 <= mixed.predict_squares(square[None])[0] <= 1.0
    assert methods_for(mixed) == ("Grad-CAM", "SmoothGrad saliency")
    heat = Explainer(mixed).heatmap(square, "Grad-CAM", target_class=1)
    assert heat.shape == (224, 224) and 0.0 <= heat.min() <= heat.max() <= 1.0
