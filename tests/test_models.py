"""Tests of pneumo_core.models and pneumo_core.registry: every registered model builds flat and runs."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pneumo_core import models, registry
from pneumo_core.train import set_trainable

SMALL_SIZE = 72  # Xception's minimum input is 71 px.


def build_small(spec: registry.ModelSpec) -> keras.Model:
    """Build ``spec``'s model at 72 px, transfer models with random (no ImageNet) weights."""
    extra = {"weights": "none"} if spec.uses_backbone_weights else {}
    return spec.builder(input_size=SMALL_SIZE, channels=spec.channels, **extra)


@pytest.fixture(scope="module", params=list(registry.REGISTRY))
def built(request) -> tuple[registry.ModelSpec, keras.Model]:
    """(spec, small model) for every registered model, built once per module."""
    spec = registry.REGISTRY[request.param]
    keras.utils.set_random_seed(0)
    return spec, build_small(spec)


def test_forward_pass_shape_and_range(built):
    """Random 0-255 grayscale through spec.preprocess gives (2, 1) finite probabilities in [0, 1]."""
    spec, model = built
    raw = np.random.default_rng(0).uniform(0, 255, (2, SMALL_SIZE, SMALL_SIZE, 1)).astype("float32")
    batch = spec.preprocess(raw)
    assert tuple(batch.shape) == (2, SMALL_SIZE, SMALL_SIZE, spec.channels)
    assert model.input_shape == (None, SMALL_SIZE, SMALL_SIZE, spec.channels)
    out = keras.ops.convert_to_numpy(model(batch, training=False))
    assert out.shape == (2, 1)
    assert np.isfinite(out).all()
    assert ((out >= 0) & (out <= 1)).all()


def test_model_is_flat_with_named_output_and_gradcam_layer(built):
    """No nested sub-model, last layer 'pneumonia' (sigmoid), and the Grad-CAM layer is reachable."""
    spec, model = built
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    last = model.layers[-1]
    assert last.name == models.OUTPUT_LAYER == "pneumonia"
    assert last.units == 1
    assert last.activation is keras.activations.sigmoid
    if spec.gradcam_layer is not None:
        layer = model.get_layer(spec.gradcam_layer)
        assert len(layer.output.shape) == 4, "the Grad-CAM layer must output a spatial feature map"


def test_transfer_models_fine_tune_from_layer_exists(built):
    """For transfer models, the fine-tuning start layer exists and set_trainable freezes what precedes it."""
    spec, model = built
    if not spec.uses_backbone_weights:
        assert spec.train.fine_tune_epochs == 0
        return
    names = [layer.name for layer in model.layers]
    start, head = names.index(spec.train.fine_tune_from), names.index("gap")
    assert 0 < start < head
    set_trainable(model, spec.train.fine_tune_from)
    assert not any(layer.trainable for layer in model.layers[:start])
    assert all(layer.trainable for layer in model.layers[head:])
    assert not any(
        layer.trainable for layer in model.layers[:head] if isinstance(layer, keras.layers.BatchNormalization)
    )
    set_trainable(model, None)
    assert not any(layer.trainable for layer in model.layers[:head])


@pytest.mark.parametrize("name", list(registry.REGISTRY))
def test_preprocess_ranges(name):
    """Preprocessing maps 0 and 255 to the documented range for each model."""
    spec = registry.get_spec(name)
    extremes = np.array([0.0, 255.0], dtype="float32").reshape(1, 1, 2, 1)
    out = keras.ops.convert_to_numpy(spec.preprocess(extremes))
    assert out.shape[-1] == spec.channels
    low, high = out[0, 0, 0], out[0, 0, 1]
    if spec.preprocess is registry.scale_unit:
        np.testing.assert_allclose([low[0], high[0]], [0.0, 1.0])
    elif spec.preprocess is registry.scale_xception:
        np.testing.assert_allclose(low, [-1.0] * 3)
        np.testing.assert_allclose(high, [1.0] * 3)
    else:
        assert spec.preprocess is registry.scale_densenet
        np.testing.assert_allclose(low, -np.array([0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], rtol=1e-5)


@pytest.mark.parametrize("name", list(registry.REGISTRY))
def test_model_input_checks_shape(name):
    """spec.model_input accepts (n, size, size) squares and refuses other shapes."""
    spec = registry.get_spec(name)
    squares = np.zeros((3, spec.input_size, spec.input_size), dtype=np.uint8)
    assert spec.model_input(squares).shape == (3, spec.input_size, spec.input_size, spec.channels)
    with pytest.raises(ValueError, match="expects squares of shape"):
        spec.model_input(np.zeros((3, spec.input_size, spec.input_size + 1), dtype=np.uint8))
    with pytest.raises(ValueError, match="expects squares of shape"):
        spec.model_input(np.zeros((spec.input_size, spec.input_size), dtype=np.uint8))


def test_get_spec_unknown_name_lists_valid_names():
    """get_spec('nope') raises ValueError naming every registered model."""
    with pytest.raises(ValueError, match="nope") as info:
        registry.get_spec("nope")
    for name in registry.REGISTRY:
        assert name in str(info.value)


def test_densenet201_is_not_shippable():
    """densenet201 is registered but not shippable, with a reason about its weights."""
    spec = registry.get_spec("densenet201")
    assert not spec.shippable
    assert "weights" in spec.unavailable_reason.lower()
    assert "densenet201" not in registry.model_names(shippable_only=True)
    assert registry.model_names() == list(registry.REGISTRY)
    assert {"mlp", "cnn", "xception"} <= set(registry.model_names(shippable_only=True))


def test_spec_to_json_names_builder_and_preprocess():
    """to_json records importable names of the builder and preprocessing function."""
    info = registry.get_spec("cnn").to_json()
    assert info["builder"] == "pneumo_core.models.build_cnn"
    assert info["preprocess"] == "pneumo_core.registry.scale_unit"
    assert info["input_size"] == 160
    assert info["channels"] == 1
    assert info["class_names"] == ["NORMAL", "PNEUMONIA"]


def test_missing_backbone_weights_file_is_refused(tmp_path):
    """A local backbone weights path that does not exist raises ValueError before building."""
    with pytest.raises(ValueError, match="does not exist"):
        models.build_xception(SMALL_SIZE, weights=str(tmp_path / "missing.weights.h5"))


def test_cnn_input_gradient_is_finite():
    """The gradient of the CNN output w.r.t. its input is finite and not all zero (saliency needs it)."""
    keras.utils.set_random_seed(1)
    spec = registry.get_spec("cnn")
    model = spec.builder(input_size=SMALL_SIZE, channels=spec.channels)
    raw = np.random.default_rng(1).uniform(0, 255, (2, SMALL_SIZE, SMALL_SIZE, 1)).astype("float32")
    image = tf.Variable(spec.preprocess(raw))
    with tf.GradientTape() as tape:
        out = model(image, training=False)
    gradient = tape.gradient(out, image).numpy()
    assert gradient.shape == (2, SMALL_SIZE, SMALL_SIZE, 1)
    assert not np.isnan(gradient).any()
    assert np.isfinite(gradient).all()
    assert np.abs(gradient).sum() > 0
