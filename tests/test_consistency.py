"""``train --consistency-weight``: two views of each X-ray, read alike (synthetic images)."""

from __future__ import annotations

import math

import numpy as np
from conftest import train_argv
from test_augment import chest_like_squares

from pneumo_core import artifacts
from pneumo_core.__main__ import main
from pneumo_core.registry import get_spec
from pneumo_core.train import SECOND_VIEW_INPUT, consistency_loss, make_dataset


def loss_of(first: list[float], second: list[float]) -> np.ndarray:
    return np.asarray(consistency_loss(np.zeros(len(first)), np.stack([first, second], axis=1).astype("float32")))


def test_consistency_loss_is_zero_when_views_agree_and_grows_with_disagreement():
    agree, small, large = loss_of([0.2, 0.9, 0.5], [0.2, 0.9, 0.5]), loss_of([0.4], [0.6]), loss_of([0.1], [0.9])
    np.testing.assert_allclose(agree, 0.0, atol=1e-6)
    assert 0 < small[0] < large[0] <= math.log(2)
    np.testing.assert_allclose(loss_of([0.1], [0.9]), loss_of([0.9], [0.1]), rtol=1e-6)


def paired_batch(augment_seed: int | None):
    spec = get_spec("cnn")
    squares = np.stack([np.resize(chest_like_squares(1)[0], (spec.input_size, spec.input_size))] * 4)
    dataset = make_dataset(
        squares, np.array([0, 1, 0, 1]), spec, 4, augment_seed=augment_seed, augment_policy="robust", paired=True
    )
    views, _ = next(iter(dataset))
    return np.asarray(views["image"]), np.asarray(views[SECOND_VIEW_INPUT])


def test_training_views_are_augmented_independently_and_validation_views_are_identical():
    first, second = paired_batch(augment_seed=5)
    assert first.shape == second.shape and not np.array_equal(first, second)
    first, second = paired_batch(augment_seed=None)
    np.testing.assert_array_equal(first, second)


def test_a_consistency_run_ships_a_plain_one_input_model_and_says_so(synthetic_dataset, tmp_path):
    argv = train_argv("cnn_robust", synthetic_dataset, tmp_path, "--consistency-weight", "2", "--subtype-weight", "1")
    assert main(argv) == 0
    loaded = artifacts.load_model_dir(tmp_path / "models" / "cnn_robust")
    assert [tensor.name for tensor in loaded.model.inputs] == ["image"] and len(loaded.model.outputs) == 1
    assert loaded.config.args.consistency_weight == 2
    assert "Jensen-Shannon consistency, loss weight 2" in (loaded.directory / "card.md").read_text()
    history = (loaded.directory / "history.json").read_text()
    assert "consistency_loss" in history
