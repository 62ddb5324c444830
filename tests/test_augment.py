"""Train-time augmentation policies on tiny synthetic squares."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import train_argv

from pneumo_core import artifacts
from pneumo_core.__main__ import main
from pneumo_core.augment import aspect_swappers, augment_squares, burned_in_marker, normal_zoomer, robust_augmenter
from pneumo_core.registry import get_spec
from pneumo_core.train import make_dataset

SIZE = 48


def chest_like_squares(n: int = 6) -> np.ndarray:
    """Bright body with two darker 'lungs' on black, a little noise: enough structure to see a change."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    body = (((yy - 24) / 22) ** 2 + ((xx - 24) / 18) ** 2 < 1) * 180.0
    lungs = ((((yy - 22) / 12) ** 2 + ((np.abs(xx - 24) - 8) / 5) ** 2) < 1) * -90.0
    base = body + lungs
    return np.clip(base[None] + rng.normal(0, 8, (n, SIZE, SIZE)), 0, 255).astype(np.uint8)


def test_robust_policy_keeps_shape_and_type_and_changes_images():
    squares = chest_like_squares()
    out = augment_squares(robust_augmenter(SIZE, seed=1), squares[..., None])
    assert out.shape == (6, SIZE, SIZE, 1) and out.dtype == np.uint8
    changed = [not np.array_equal(a, b) for a, b in zip(out[..., 0], squares, strict=True)]
    assert sum(changed) >= 4


def test_robust_policy_is_reproducible_with_a_seed():
    squares = chest_like_squares()
    first = augment_squares(robust_augmenter(SIZE, seed=7), squares)
    second = augment_squares(robust_augmenter(SIZE, seed=7), squares)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("seed", range(12))
def test_burned_in_marker_writes_white_text_anchored_in_a_corner(seed):
    """Whatever label is drawn (a long word may pass the middle), it sits in a top or bottom band, at a side."""
    import albumentations as A

    square = np.full((160, 160), 60, np.uint8)
    marked = A.Compose([burned_in_marker(1.0)], seed=seed)(image=square)["image"]
    changed = np.argwhere(marked != square)
    assert len(changed) > 0 and marked.max() > 200
    rows, cols = changed[:, 0], changed[:, 1]
    assert rows.max() < 60 or rows.min() >= 100
    assert cols.min() <= 12 or cols.max() >= 148


def test_strength_outside_its_range_is_refused():
    with pytest.raises(ValueError, match="strength"):
        robust_augmenter(SIZE, seed=0, strength=3.0)


def test_training_dataset_with_the_robust_policy_gives_model_input():
    spec = get_spec("cnn")
    squares = np.stack([np.resize(chest_like_squares(1)[0], (spec.input_size, spec.input_size))] * 4)
    dataset = make_dataset(squares, np.array([0, 1, 0, 1]), spec, 2, augment_seed=3, augment_policy="robust")
    x, y = next(iter(dataset))
    assert tuple(x.shape) == (2, spec.input_size, spec.input_size, 1) and tuple(y.shape) == (2,)
    assert float(np.min(x)) >= 0.0 and float(np.max(x)) <= 1.0


def test_an_unknown_policy_is_refused_with_the_choices():
    spec = get_spec("cnn")
    squares = np.zeros((2, spec.input_size, spec.input_size), np.uint8)
    with pytest.raises(ValueError, match="basic, robust"):
        make_dataset(squares, np.array([0, 1]), spec, 2, augment_seed=0, augment_policy="strong")


def test_a_stopped_training_phase_resumes_from_its_backup(tmp_path, monkeypatch):
    """A run stopped after its first epoch continues at the second and its history still has both epochs."""
    import keras

    from pneumo_core import train as train_module
    from pneumo_core.artifacts import TrainArgs
    from pneumo_core.models import build_mlp

    class StopBeforeSecondEpoch(keras.callbacks.ReduceLROnPlateau):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt("the session ended")

    spec = get_spec("mlp")
    squares = np.resize(chest_like_squares(8), (8, spec.input_size, spec.input_size))
    targets = np.array([0, 1] * 4)
    data = make_dataset(squares, targets, spec, 4, augment_seed=None)
    args = TrainArgs(
        model="mlp", data="d", out="o", epochs=2, fine_tune_epochs=0, batch_size=4, learning_rate=1e-3,
        fine_tune_learning_rate=1e-5, fine_tune_from=None, backbone_weights=None, split_file="s", seed=1,
        patience=5, run_dir=str(tmp_path),
    )  # fmt: skip
    model = build_mlp(spec.input_size, 1)
    fit = dict(phase="full", learning_rate=1e-3, epochs=2, initial_epoch=0, weights=None)
    with monkeypatch.context() as patched:
        patched.setattr(train_module.keras.callbacks, "ReduceLROnPlateau", StopBeforeSecondEpoch)
        with pytest.raises(KeyboardInterrupt):
            train_module.fit_phase(model, data, data, args, tmp_path, **fit)
    assert (tmp_path / "backup-full").is_dir()
    rows = train_module.fit_phase(build_mlp(spec.input_size, 1), data, data, args, tmp_path, **fit)
    assert [row["epoch"] for row in rows] == [0, 1]
    assert not (tmp_path / "backup-full").exists()  # removed once the phase ended


def test_a_run_stopped_while_fine_tuning_does_not_train_its_head_again(tmp_path, monkeypatch):
    """The fine-tune backup holds every weight, so the finished head phase is read from its log, not refitted."""
    import dataclasses

    from pneumo_core import train as train_module
    from pneumo_core.artifacts import TrainArgs

    spec = dataclasses.replace(get_spec("mlp"), uses_backbone_weights=True)
    run_dir = tmp_path / spec.name
    (run_dir / "backup-fine-tune").mkdir(parents=True)
    (run_dir / "history-head.csv").write_text("epoch,loss,auc\n0,0.6,0.90\n1,0.5,0.95\n")
    fitted = []

    def fake_fit_phase(model, train_ds, val_ds, args, run_dir, *, phase, initial_epoch, **_):
        fitted.append((phase, initial_epoch))
        return [{"epoch": initial_epoch, "loss": 0.4, "auc": 0.97}]

    monkeypatch.setattr(train_module, "fit_phase", fake_fit_phase)
    monkeypatch.setattr(train_module, "set_trainable", lambda model, first_trainable: None)
    args = TrainArgs(
        model="mlp", data="d", out="o", epochs=2, fine_tune_epochs=3, batch_size=4, learning_rate=1e-3,
        fine_tune_learning_rate=1e-5, fine_tune_from=None, backbone_weights=None, split_file="s", seed=1,
        patience=5, run_dir=str(tmp_path),
    )  # fmt: skip
    squares = np.resize(chest_like_squares(4), (4, spec.input_size, spec.input_size))
    targets = {name: np.array([0, 1, 0, 1]) for name in ("train", "val")}
    history = train_module.run_phases(None, spec, args, {"train": squares, "val": squares}, targets, frames={})
    assert fitted == [("fine-tune", 2)]
    assert [(row["epoch"], row["phase"]) for row in history] == [(0, "head"), (1, "head"), (2, "fine-tune")]


def test_normal_zoom_changes_normal_images_only():
    spec = get_spec("cnn")
    square = np.resize(chest_like_squares(1)[0], (spec.input_size, spec.input_size))
    dataset = make_dataset(
        np.stack([square] * 8), np.array([0, 1] * 4), spec, 8, augment_seed=3, augment_strength=0, normal_zoom=0.3
    )
    x, labels = (np.asarray(part) for part in next(iter(dataset)))
    original = np.asarray(spec.preprocess(square[None, ..., None].astype("float32")))[0]
    unchanged = np.array([np.allclose(image, original) for image in x])
    assert unchanged[labels == 1].all() and not unchanged[labels == 0].all()


def test_a_normal_zoom_outside_its_range_is_refused():
    with pytest.raises(ValueError, match="normal zoom"):
        normal_zoomer(1.5, seed=0)


def box_squares(n: int, size: int) -> np.ndarray:
    """``n`` black squares with a bright centred box half their size."""
    squares = np.zeros((n, size, size), dtype=np.uint8)
    squares[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 200
    return squares


def box_extent(image: np.ndarray) -> tuple[int, int]:
    """Height and width of the bright box (pixels above the middle grey level of the image)."""
    rows, cols = np.nonzero(image > (image.min() + image.max()) / 2)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def test_aspect_swap_narrows_normal_anatomy_and_widens_pneumonia_half_of_the_time():
    size = 64
    swappers = aspect_swappers(1.24, seed=3)
    for label, stretched_axis in ((0, 0), (1, 1)):
        extents = np.array([box_extent(image) for image in augment_squares(swappers[label], box_squares(200, size))])
        changed = (extents != size // 2).any(axis=1)
        assert 0.35 < changed.mean() < 0.65  # half of the time
        assert (extents[:, 1 - stretched_axis] == size // 2).all()  # the other axis never moves
        zoom = extents[changed, stretched_axis] / (size // 2)
        assert zoom.min() >= 1.08 and zoom.max() <= 1.4 and abs(zoom.mean() - 1.24) < 0.04


def test_aspect_swap_follows_each_image_class_in_the_training_pipeline():
    spec = get_spec("cnn")
    squares = box_squares(64, spec.input_size)
    labels = np.array([0, 1] * 32)
    dataset = make_dataset(squares, labels, spec, 64, augment_seed=4, augment_strength=0, aspect_swap=1.24)
    x, seen_labels = (np.asarray(part) for part in next(iter(dataset)))
    extents = np.array([box_extent(image[..., 0]) for image in x])
    taller, wider = extents[:, 0] > spec.input_size // 2, extents[:, 1] > spec.input_size // 2
    assert taller[seen_labels == 0].any() and not wider[seen_labels == 0].any()
    assert wider[seen_labels == 1].any() and not taller[seen_labels == 1].any()


@pytest.mark.parametrize("factor", [1.0, 0.8, 2.5])
def test_an_aspect_swap_outside_its_range_is_refused(factor):
    with pytest.raises(ValueError, match="aspect swap"):
        aspect_swappers(factor, seed=0)


def test_class_conditional_augmentation_is_recorded_and_named_on_the_card(synthetic_dataset, tmp_path):
    extra = ("--augment", "robust", "--normal-zoom", "0.3", "--aspect-swap", "1.24")
    assert main(train_argv("mlp", synthetic_dataset, tmp_path, *extra)) == 0
    loaded = artifacts.load_model_dir(tmp_path / "models" / "mlp")
    assert (loaded.config.args.normal_zoom, loaded.config.args.aspect_swap) == (0.3, 1.24)
    card = (tmp_path / "models" / "mlp" / "card.md").read_text()
    assert "NORMAL images also zoomed in up to x1.3 half of the time" in card
    assert "half of the images given the other class's proportions (NORMAL zoomed vertically" in card


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--aspect-swap", "3", "aspect swap factor must be in (1, 2], got 3.0."),
        ("--aspect-swap", "-1.2", "aspect swap factor must be in (1, 2], got -1.2."),
        ("--normal-zoom", "-0.3", "normal zoom must be in (0, 1], got -0.3."),
    ],
)
def test_a_class_augmentation_outside_its_range_is_refused_before_the_images_load(
    tmp_path, capsys, option, value, message
):
    assert main(train_argv("mlp", tmp_path / "no_such_folder", tmp_path, option, value)) == 2
    assert message in capsys.readouterr().err
