"""Ensembles (``pneumo_core.ensemble``): trained cnn_robust models averaged in logit space as one flat model."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import train_argv

from pneumo_core import artifacts, models
from pneumo_core.__main__ import main
from pneumo_core.gradcam import Explainer
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
