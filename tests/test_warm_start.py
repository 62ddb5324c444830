"""``train --init-from``: a run that starts from a trained model's weights (synthetic images, one epoch)."""

from __future__ import annotations

import numpy as np
from conftest import train_argv

from pneumo_core import artifacts
from pneumo_core.__main__ import main


def test_a_warm_start_begins_with_the_trained_weights_and_records_them(synthetic_dataset, trained_models_dir, tmp_path):
    """cnn_robust shares the cnn's builder, so it may start from a cnn; its registry defaults apply."""
    start = trained_models_dir / "cnn"
    argv = train_argv("cnn_robust", synthetic_dataset, tmp_path, "--init-from", str(start), "--learning-rate", "0")
    assert main(argv) == 0
    warm = artifacts.load_model_dir(tmp_path / "models" / "cnn_robust")
    began = artifacts.load_model_dir(start)
    # With a learning rate of 0 only the calibration, refitted into the output layer, may differ
    # (and the batch-norm statistics, which are not trainable weights).
    pairs = zip(warm.model.trainable_weights[:-2], began.model.trainable_weights[:-2], strict=True)
    for trained, started in pairs:
        np.testing.assert_array_equal(np.asarray(trained), np.asarray(started))
    args = warm.config.args
    assert args.init_from_sha256 == artifacts.sha256_of(start / "model.keras") and args.learning_rate == 0
    assert (args.augment, args.framing) == ("robust", "trim")
    assert "Started from the weights of" in (warm.directory / "card.md").read_text()


def test_a_warm_start_from_another_architecture_is_refused(synthetic_dataset, trained_models_dir, tmp_path, capsys):
    argv = train_argv("mlp", synthetic_dataset, tmp_path, "--init-from", str(trained_models_dir / "cnn"))
    assert main(argv) == 2
    assert "holds a cnn model whose layers differ from the mlp" in capsys.readouterr().err
    assert not (tmp_path / "models" / "mlp").exists()
