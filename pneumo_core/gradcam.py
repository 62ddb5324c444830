"""Class-activation heatmaps with tf-keras-vis, and their overlay with OpenCV.

The map is computed on the model's square input, then resized back to the
original image's aspect ratio. It shows where the model looked, not a lesion outline.

Grad-CAM, the default method, runs as one compiled graph (:func:`compiled_gradcam`): the forward
pass and the gradient of the explained logit back to the conv layer (through the head only),
traced once. It gives tf-keras-vis's Grad-CAM map (a test holds them equal) several times faster;
the other methods run through tf-keras-vis as they are.

Usage:
    explainer = Explainer(loaded)                 # build once per model
    heat = explainer.heatmap(square, "Grad-CAM", target_class=1)
    why = Explainer(loaded, load_subtype(loaded)).heatmap(square, "Grad-CAM", "bacteria")  # a subtype logit
    rgb = overlay(gray, heat, opacity=0.4, colormap="jet")
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pneumo_core.artifacts import LoadedModel
from pneumo_core.imaging import fit_within
from pneumo_core.registry import ModelSpec

if TYPE_CHECKING:  # Keras and tf-keras-vis load with the first Explainer, not with the page that shows maps.
    import keras

    from pneumo_core.subtype import SubtypeHead

CAM_METHODS = ("Grad-CAM", "Grad-CAM++", "Faster-ScoreCAM")
SALIENCY_METHOD = "SmoothGrad saliency"
FASTER_SCORECAM_MAPS = 10
COLORMAPS = {
    "jet": cv2.COLORMAP_JET,
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "turbo": cv2.COLORMAP_TURBO,
    "hot": cv2.COLORMAP_HOT,
}


def methods_for(loaded: LoadedModel) -> tuple[str, ...]:
    """Heatmap methods that apply to a loaded model (see :func:`heatmap_methods`)."""
    return heatmap_methods(loaded.spec)


def heatmap_methods(spec: ModelSpec) -> tuple[str, ...]:
    """Heatmap methods that apply to a model: CAMs need a conv layer, the MLP gets saliency.

    A model with several branches (``spec.extra_gradcam_layers``) gets the compiled Grad-CAM, which reads
    them all, and saliency: tf-keras-vis's other CAMs read one layer and would explain one branch only.
    """
    if spec.extra_gradcam_layers:
        return (CAM_METHODS[0], SALIENCY_METHOD)
    return CAM_METHODS if spec.gradcam_layer else (SALIENCY_METHOD,)


def two_logit_model(model: keras.Model) -> keras.Model:
    """A copy of ``model`` whose output is ``[-z/2, z/2]`` for the pre-sigmoid output ``z``.

    Its softmax is exactly ``[1 - p, p]``, so every tf-keras-vis method (Score-CAM
    applies a softmax) can explain either class with a ``CategoricalScore``.
    """
    import keras
    from keras import layers
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

    linear = keras.models.clone_model(model)
    linear.set_weights(model.get_weights())
    ReplaceToLinear()(linear)
    logit = linear.outputs[0]
    pair = layers.Concatenate(name="two_logits")(
        [layers.Rescaling(-0.5, name="normal_logit")(logit), layers.Rescaling(0.5, name="pneumonia_logit")(logit)]
    )
    return keras.Model(linear.inputs, pair, name=f"{model.name}_explain")


def _visualizers(explain_model: keras.Model, spec: ModelSpec) -> dict:
    """Every heatmap method on a model whose output is two logits: the compiled Grad-CAM, the rest tf-keras-vis's."""
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.scorecam import Scorecam

    visualizers = {
        "Grad-CAM++": GradcamPlusPlus(explain_model, clone=False),
        "Faster-ScoreCAM": Scorecam(explain_model, clone=False),
        SALIENCY_METHOD: Saliency(explain_model, clone=False),
    }
    if spec.gradcam_layer:
        visualizers["Grad-CAM"] = compiled_gradcam(explain_model, spec)
    return visualizers


def compiled_gradcam(explain_model: keras.Model, spec: ModelSpec) -> Callable[[np.ndarray, int], np.ndarray]:
    """``(square, index) -> map``: the Grad-CAM of output ``index`` of ``explain_model`` on one uint8 square.

    The same map as tf-keras-vis's ``Gradcam`` (ReLU of the gradient-weighted sum of the conv layer's
    channels, zoomed to the input with linear interpolation), computed by one ``tf.function`` with a
    fixed input signature. Thread-safe once traced. A model with several branches whose conv maps differ in
    size (``spec.extra_gradcam_layers``) gets one map: each layer's weighted sum zoomed to the input, the
    sums added, then the ReLU, which is what one conv layer holding all their channels would give. A layer
    that ``explain_model`` does not reach (a subtype head reading one branch) adds nothing and is left out.

    Args:
        explain_model: A model with logits as output (see :func:`two_logit_model`) and the spec's conv layers.
        spec: The model's registry entry (input size, preprocessing, conv layers).

    Returns:
        A function giving a ``(size, size)`` float32 map, not yet scaled to [0, 1].
    """
    import keras
    import tensorflow as tf
    from scipy.ndimage import zoom

    reached = {layer.name for layer in explain_model.layers}  # a subtype logit may read one branch only
    names = [name for name in (spec.gradcam_layer, *spec.extra_gradcam_layers) if name in reached]
    convs = [explain_model.get_layer(name).output for name in names]
    probe = keras.Model(explain_model.inputs, [explain_model.outputs[0], *convs], name=f"{explain_model.name}_gradcam")
    size = spec.input_size
    signature = [tf.TensorSpec([size, size], tf.uint8, name="square"), tf.TensorSpec([], tf.int32, name="index")]

    # No autograph: it parses source with ast, and concurrent ast.parse can fail in CPython 3.11.7.
    @tf.function(input_signature=signature, autograph=False)
    def weighted_maps(square, index):
        model_input = spec.preprocess(square[None, ..., None])
        with tf.GradientTape() as tape:
            logits, *features = probe(model_input, training=False)
            tape.watch(features)
            score = logits[:, index]
        gradients = tape.gradient(score, features)
        return [
            tf.reduce_sum(maps * tf.reduce_mean(grads, axis=(1, 2), keepdims=True), axis=-1)[0]
            for maps, grads in zip(features, gradients, strict=True)
        ]

    def zoomed(cam: np.ndarray) -> np.ndarray:
        return zoom(cam, (size / cam.shape[0], size / cam.shape[1]), order=1).astype(np.float32)

    def run(square: np.ndarray, index: int) -> np.ndarray:
        square_tensor, index_tensor = tf.convert_to_tensor(square, dtype=tf.uint8), tf.constant(index, tf.int32)
        maps = [cam.numpy() for cam in weighted_maps(square_tensor, index_tensor)]
        if len(maps) == 1:  # tf-keras-vis's order: the ReLU on the conv grid, then the zoom
            return zoomed(np.maximum(maps[0], 0.0))
        return np.maximum(sum(zoomed(cam) for cam in maps), 0.0)

    return run


class Explainer:
    """Heatmap methods for one loaded model, built once and reused for every image.

    With a subtype head (:mod:`pneumo_core.subtype`), the methods can also explain its logit: why
    bacterial, why viral. Those visualizers are built on the first such request.
    """

    def __init__(self, loaded: LoadedModel, subtype: SubtypeHead | None = None) -> None:
        self.loaded = loaded
        self.subtype = subtype
        self._visualizers = _visualizers(two_logit_model(loaded.model), loaded.spec)
        self._subtype_visualizers = None
        self._subtype_lock = threading.Lock()

    def _visualizers_for(self, target_class: int | str) -> tuple[dict, int]:
        """The visualizers and the output index that explain ``target_class``."""
        if target_class in (0, 1):
            return self._visualizers, int(target_class)
        from pneumo_core.subtype import EXPLAIN_TARGETS

        if self.subtype is None or target_class not in EXPLAIN_TARGETS:
            known = "0, 1" + (", " + ", ".join(EXPLAIN_TARGETS) if self.subtype is not None else "")
            raise ValueError(f"Cannot explain {target_class!r} with {self.loaded.spec.name}; use one of {known}.")
        with self._subtype_lock:
            if self._subtype_visualizers is None:
                self._subtype_visualizers = _visualizers(self.subtype.explain_model(), self.loaded.spec)
        return self._subtype_visualizers, EXPLAIN_TARGETS[target_class]

    def heatmap(self, square: np.ndarray, method: str, target_class: int | str) -> np.ndarray:
        """A ``(size, size)`` map in [0, 1] of the evidence for ``target_class``.

        Args:
            square: One ``(size, size)`` uint8 square from ``LoadedModel.square``.
            method: One of :func:`methods_for`.
            target_class: 1 explains PNEUMONIA, 0 explains NORMAL; with a subtype head, ``"bacteria"`` or
                ``"virus"`` explains that subtype's side of the subtype logit.
        """
        if method not in methods_for(self.loaded):
            raise ValueError(
                f"{method!r} is not available for {self.loaded.spec.name}; use one of {methods_for(self.loaded)}."
            )
        visualizers, index = self._visualizers_for(target_class)
        visualizer = visualizers[method]
        if method == "Grad-CAM":
            return _unit_range(visualizer(square, index))
        seed = self.loaded.spec.model_input(square[None])
        from tf_keras_vis.utils.scores import CategoricalScore

        score = CategoricalScore([index])
        if method == SALIENCY_METHOD:
            cam = visualizer(score, seed, smooth_samples=16, smooth_noise=0.1)
        else:
            extra = {"max_N": FASTER_SCORECAM_MAPS} if method == "Faster-ScoreCAM" else {}
            cam = visualizer(
                score,
                seed,
                penultimate_layer=self.loaded.spec.gradcam_layer,
                seek_penultimate_conv_layer=False,
                **extra,
            )
        return _unit_range(np.asarray(cam, dtype=np.float32)[0])


def overlay(gray: np.ndarray, heatmap: np.ndarray, opacity: float = 0.4, colormap: str = "jet") -> np.ndarray:
    """Blend a colour-mapped heatmap over a grayscale image at the image's own size.

    Args:
        gray: ``(h, w)`` uint8 image (any aspect ratio).
        heatmap: Square map in [0, 1] computed on the model input.
        opacity: Weight of the heatmap, 0 (image only) to 1 (heatmap only).
        colormap: A key of ``COLORMAPS``.

    Returns:
        An ``(h, w, 3)`` uint8 RGB image.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be between 0 and 1, got {opacity}.")
    if colormap not in COLORMAPS:
        raise ValueError(f"Unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}.")
    height, width = gray.shape
    resized = cv2.resize(heatmap.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    colored = cv2.applyColorMap(np.uint8(np.clip(resized, 0, 1) * 255), COLORMAPS[colormap])
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    blended = cv2.addWeighted(colored, opacity, base, 1.0 - opacity, 0.0)
    return cv2.cvtColor(blended, cv2.COLOR_BGR2RGB)


def display_pair(
    gray: np.ndarray, heatmap: np.ndarray, opacity: float = 0.4, colormap: str = "jet"
) -> tuple[np.ndarray, np.ndarray]:
    """The image as shown on screen (longer side at most 1024 px) and the heatmap blended over it.

    Returns:
        ``(shown, blended)``: an ``(h, w)`` uint8 grayscale and an ``(h, w, 3)`` uint8 RGB image.
    """
    shown = fit_within(gray)
    return shown, overlay(shown, heatmap, opacity=opacity, colormap=colormap)


@functools.lru_cache(maxsize=32)
def colour_bar(colormap: str = "jet", width: int = 480, height: int = 44) -> np.ndarray:
    """A horizontal legend of ``colormap`` labelled "low influence" (left) and "high influence" (right).

    Drawn once per arguments and shared (read-only), since every page run shows it.

    Returns:
        An ``(height, width, 3)`` uint8 RGB image.
    """
    if colormap not in COLORMAPS:
        raise ValueError(f"Unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}.")
    strip = height // 2
    ramp = np.tile(np.linspace(0, 255, width, dtype=np.uint8), (strip, 1))
    bar = np.full((height, width, 3), 255, dtype=np.uint8)
    bar[:strip] = cv2.applyColorMap(ramp, COLORMAPS[colormap])
    font, scale, ink = cv2.FONT_HERSHEY_SIMPLEX, 0.5, (40, 40, 40)
    baseline = height - 6
    cv2.putText(bar, "low influence", (2, baseline), font, scale, ink, 1, cv2.LINE_AA)
    (text_width, _), _ = cv2.getTextSize("high influence", font, scale, 1)
    cv2.putText(bar, "high influence", (width - text_width - 2, baseline), font, scale, ink, 1, cv2.LINE_AA)
    rgb = cv2.cvtColor(bar, cv2.COLOR_BGR2RGB)
    rgb.flags.writeable = False
    return rgb


def _unit_range(cam: np.ndarray) -> np.ndarray:
    """Scale a map to [0, 1]; a flat map (no evidence) becomes all zeros."""
    cam = np.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(cam.min()), float(cam.max())
    return (cam - low) / (high - low) if high > low else np.zeros_like(cam)
