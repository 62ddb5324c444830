"""Model builders. Each returns a flat Functional Keras model (never a nested one)
whose last layer is ``Dense(1, activation="sigmoid", name="pneumonia")`` so that
Grad-CAM can reach every conv layer and swap the sigmoid for a linear output.

Usage:
    model = build_cnn(input_size=160, channels=1)
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import keras
import numpy as np
from keras import layers

OUTPUT_LAYER = "pneumonia"
INPUT_NAME = "image"  # every builder's input layer (the key of a batch in a dict)
LOGGER = logging.getLogger(__name__)


def _head(features, units: tuple[int, ...], dropout: float):
    """Dense head ending in the single sigmoid output named ``pneumonia``."""
    x = features
    for index, width in enumerate(units):
        x = layers.Dense(width, activation="relu", name=f"head_dense{index + 1}")(x)
        x = layers.Dropout(dropout, name=f"head_dropout{index + 1}")(x)
    return layers.Dense(1, activation="sigmoid", name=OUTPUT_LAYER)(x)


def build_mlp(input_size: int, channels: int, **_: object) -> keras.Model:
    """The seed baseline: a flattened image through five dense layers."""
    inputs = keras.Input((input_size, input_size, channels), name=INPUT_NAME)
    x = layers.Flatten(name="flatten")(inputs)
    outputs = _head(x, units=(512, 256, 128, 64), dropout=0.3)
    return keras.Model(inputs, outputs, name="mlp")


CNN_WIDTH_MULTIPLIERS = (1, 2, 3, 4, 6, 8)


def build_cnn(
    input_size: int,
    channels: int,
    base_filters: int = 32,
    depth: int = 5,
    dropout: float = 0.3,
    dense_units: int = 64,
    **_: object,
) -> keras.Model:
    """A small CNN from scratch: conv/batch-norm blocks, global pooling, dense head.

    The defaults are the shipped architecture (five blocks of 32, 64, 96, 128 and 192
    filters); ``pneumo_core.registry.CNN_SEARCH_SPACE`` declares the ranges ``tune`` searches.
    The last block's activation is named ``last_conv_act`` for Grad-CAM. Batch-norm
    momentum is 0.9 so the moving statistics catch up within an epoch; at Keras' 0.99
    they lag the tiny first-block variance for several epochs and validation collapses.

    Args:
        input_size: Side of the square input.
        channels: Input channels.
        base_filters: Filters of the first block; block ``k`` has ``base_filters`` times
            ``CNN_WIDTH_MULTIPLIERS[k]``.
        depth: Number of conv blocks (a 2x2 max-pooling between consecutive blocks).
        dropout: Dropout rate after global pooling and after the dense layer.
        dense_units: Width of the dense layer before the output.

    Raises:
        ValueError: If ``depth`` is out of range or the input is too small for it.
    """
    inputs = keras.Input((input_size, input_size, channels), name=INPUT_NAME)
    x = _cnn_tower(inputs, _cnn_widths(input_size, base_filters, depth))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="gap_dropout")(x)
    outputs = _head(x, units=(dense_units,), dropout=dropout)
    return keras.Model(inputs, outputs, name="cnn")


def _cnn_widths(input_size: int, base_filters: int, depth: int) -> list[int]:
    """The filters of each conv block; refuses a depth out of range or an input too small for it."""
    if not 1 <= depth <= len(CNN_WIDTH_MULTIPLIERS):
        raise ValueError(f"cnn depth must be between 1 and {len(CNN_WIDTH_MULTIPLIERS)}, got {depth}.")
    if input_size < 2 ** (depth - 1):
        raise ValueError(f"A {input_size}px input is too small for a cnn of depth {depth}.")
    return [base_filters * multiplier for multiplier in CNN_WIDTH_MULTIPLIERS[:depth]]


def _cnn_tower(inputs, widths: list[int], prefix: str = ""):
    """Conv/batch-norm/ReLU blocks with 2x2 max-pooling between them; the last activation is
    ``<prefix>last_conv_act``."""
    x = inputs
    for block, width in enumerate(widths, start=1):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{prefix}block{block}_conv")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{prefix}block{block}_bn")(x)
        is_last = block == len(widths)
        x = layers.Activation("relu", name=f"{prefix}last_conv_act" if is_last else f"{prefix}block{block}_act")(x)
        if not is_last:
            x = layers.MaxPooling2D(2, name=f"{prefix}block{block}_pool")(x)
    return x


def member_prefix(index: int) -> str:
    """The layer-name prefix of ensemble member ``index`` (0-based): ``m1_``, ``m2_``, ..."""
    return f"m{index + 1}_"


def build_cnn_ensemble(
    input_size: int,
    channels: int,
    members: int = 2,
    base_filters: int = 32,
    depth: int = 5,
    dropout: float = 0.3,
    dense_units: int = 64,
    **_: object,
) -> keras.Model:
    """Several :func:`build_cnn` models side by side in one flat graph, their logits averaged.

    Member ``k``'s conv tower is named with :func:`member_prefix`. The towers' last activations are
    concatenated into ``last_conv_act``, so Grad-CAM of the averaged logit is one map over every member's
    features (each member's weighted channels summed, then the ReLU). The head has the cnn's shape, with
    ``dense_units * members`` units: :func:`fuse_cnn_members` fills it block-diagonally, which makes the
    output exactly ``sigmoid(mean of the members' logits)``. The ensemble is assembled, never trained as a whole.

    Raises:
        ValueError: With fewer than two members, or a depth the cnn refuses.
    """
    if members < 2:
        raise ValueError(f"An ensemble needs at least two members, got {members}.")
    widths = _cnn_widths(input_size, base_filters, depth)
    inputs = keras.Input((input_size, input_size, channels), name=INPUT_NAME)
    towers = [_cnn_tower(inputs, widths, member_prefix(index)) for index in range(members)]
    x = layers.Concatenate(name="last_conv_act")(towers)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="gap_dropout")(x)
    outputs = _head(x, units=(dense_units * members,), dropout=dropout)
    return keras.Model(inputs, outputs, name="cnn_ensemble")


def fuse_cnn_members(ensemble: keras.Model, members: list[keras.Model]) -> None:
    """Give ``ensemble`` (from :func:`build_cnn_ensemble`) the weights of trained cnn ``members``.

    Each member's conv blocks are copied into its tower. Its dense layer becomes one diagonal block of
    ``head_dense1``, reading only its own pooled channels; the output layer averages the members' logits
    (their kernels and biases divided by the number of members), so the ensemble's pre-sigmoid output is
    the mean of theirs.

    Raises:
        ValueError: If the members' layers do not match the ensemble's towers.
    """
    conv_layers = [layer.name for layer in members[0].layers if layer.get_weights() and "block" in layer.name]
    for index, member in enumerate(members):
        prefix = member_prefix(index)
        for name in conv_layers:
            target, source = ensemble.get_layer(prefix + name), member.get_layer(name)
            if [w.shape for w in target.get_weights()] != [w.shape for w in source.get_weights()]:
                raise ValueError(f"Member {index + 1}'s layer {name} does not match the ensemble's {prefix}{name}.")
            target.set_weights(source.get_weights())
    _fuse_heads(ensemble, members)


def _fuse_heads(ensemble: keras.Model, members: list[keras.Model]) -> None:
    """``head_dense1`` of the members side by side (block-diagonal) and an output averaging their logits."""
    pooled = [member.get_layer("head_dense1").get_weights() for member in members]
    kernels, biases = zip(*(member.get_layer(OUTPUT_LAYER).get_weights() for member in members), strict=True)
    ensemble.get_layer("head_dense1").set_weights(_block_diagonal(pooled))
    ensemble.get_layer(OUTPUT_LAYER).set_weights([np.concatenate(kernels) / len(members), np.mean(biases, axis=0)])


TRANSFER_HEAD_UNITS = 128  # head_dense1 of the transfer models (build_xception)


def build_xception_cnn_ensemble(
    input_size: int,
    channels: int = 1,
    members: int = 3,
    cnn_input_size: int = 160,
    base_filters: int = 32,
    depth: int = 5,
    dropout: float = 0.3,
    dense_units: int = 64,
    **_: object,
) -> keras.Model:
    """:func:`build_xception` and :func:`build_cnn_ensemble` side by side in one flat graph, their logits averaged.

    One input: the ``input_size`` square scaled to [0, 1], one channel. The Xception branch reads it as RGB in
    [-1, 1] (its own preprocessing, as layers); the cnn branch reads it resized to ``cnn_input_size`` inside the
    graph (area interpolation, as ``imaging.resize_square`` shrinks). Their last conv maps differ in size (7x7
    and 10x10 at 224 px), so they stay apart: ``block14_sepconv2_act`` and ``cnn_last_conv_act``, both of which
    Grad-CAM reads. Their pooled features are concatenated into ``gap``; :func:`fuse_xception_cnn` fills the
    head block-diagonally, which makes the output exactly ``sigmoid((xception logit + cnn_ensemble logit) / 2)``.
    """
    inputs = keras.Input((input_size, input_size, channels), name=INPUT_NAME)
    scaled = layers.Rescaling(2.0, offset=-1.0, name="xception_scale")(inputs)
    rgb = layers.Concatenate(name="xception_rgb")([scaled] * 3)
    base = keras.applications.Xception(include_top=False, weights=None, input_tensor=rgb)
    resized = layers.Resizing(cnn_input_size, cnn_input_size, interpolation="area", name="cnn_resize")(inputs)
    widths = _cnn_widths(cnn_input_size, base_filters, depth)
    towers = [_cnn_tower(resized, widths, member_prefix(index)) for index in range(members)]
    cnn_maps = layers.Concatenate(name="cnn_last_conv_act")(towers)
    pooled = layers.Concatenate(name="gap")(
        [
            layers.GlobalAveragePooling2D(name="xception_gap")(base.output),
            layers.GlobalAveragePooling2D(name="cnn_gap")(cnn_maps),
        ]
    )
    x = layers.Dropout(dropout, name="gap_dropout")(pooled)
    outputs = _head(x, units=(TRANSFER_HEAD_UNITS + dense_units * members,), dropout=dropout)
    return keras.Model(inputs, outputs, name="xception_cnn_ensemble")


def fuse_xception_cnn(ensemble: keras.Model, xception: keras.Model, cnn_ensemble: keras.Model) -> None:
    """Give ``ensemble`` (from :func:`build_xception_cnn_ensemble`) the weights of the two trained models.

    The cnn_ensemble's towers are copied by name (already prefixed). Xception's layers are paired in graph
    order, because Keras numbers its unnamed shortcut layers (``conv2d_4``) per process; the pairs must agree
    in name up to that number and in shapes. The heads are fused as in :func:`fuse_cnn_members`.

    Raises:
        ValueError: If a member's layers do not match the ensemble's.
    """
    heads = ("head_dense1", OUTPUT_LAYER)
    branch = [layer for layer in ensemble.layers if layer.get_weights() and not _in_tower(layer.name)]
    backbone = [layer for layer in xception.layers if layer.get_weights()]
    if len(branch) != len(backbone):
        raise ValueError(f"The xception has {len(backbone)} weighted layers; the ensemble's branch has {len(branch)}.")
    pairs = [(target, source) for target, source in zip(branch, backbone, strict=True) if source.name not in heads]
    pairs += [(ensemble.get_layer(layer.name), layer) for layer in cnn_ensemble.layers if _in_tower(layer.name)]
    for target, source in pairs:
        same_name = _unnumbered(target.name) == _unnumbered(source.name)
        if not same_name or [w.shape for w in target.get_weights()] != [w.shape for w in source.get_weights()]:
            raise ValueError(f"The member layer {source.name} does not match the ensemble's {target.name}.")
        target.set_weights(source.get_weights())
    _fuse_heads(ensemble, [xception, cnn_ensemble])


def _in_tower(layer_name: str) -> bool:
    """Whether a layer belongs to an ensemble member's cnn tower (``m1_block1_conv``)."""
    return re.match(r"m\d+_", layer_name) is not None


def _unnumbered(layer_name: str) -> str:
    """A layer name without the number Keras appends to an unnamed layer (``conv2d_4`` -> ``conv2d``)."""
    return re.sub(r"_\d+$", "", layer_name)


def _block_diagonal(dense_weights: list[list[np.ndarray]]) -> list[np.ndarray]:
    """One dense layer equal to several side by side, each reading its own slice of the input."""
    kernels, biases = zip(*dense_weights, strict=True)
    rows, cols = sum(k.shape[0] for k in kernels), sum(k.shape[1] for k in kernels)
    fused = np.zeros((rows, cols), dtype=kernels[0].dtype)
    row = col = 0
    for kernel in kernels:
        fused[row : row + kernel.shape[0], col : col + kernel.shape[1]] = kernel
        row, col = row + kernel.shape[0], col + kernel.shape[1]
    return [fused, np.concatenate(biases)]


def _backbone_weights(weights: str | Path | None) -> tuple[str | None, Path | None]:
    """Split a ``weights`` argument into Keras' own ``weights=`` and a local file."""
    if weights in (None, "none", "None"):
        return None, None
    if weights == "imagenet":
        return "imagenet", None
    path = Path(weights)
    if not path.is_file():
        raise ValueError(f"Backbone weights file {path} does not exist.")
    return None, path


def _transfer_model(application, name: str, input_size: int, weights: str | Path | None, dropout: float):
    """Build ``application`` on an input tensor and put a pooled head on ``base.output``."""
    keras_weights, local_file = _backbone_weights(weights)
    inputs = keras.Input((input_size, input_size, 3), name=INPUT_NAME)
    try:
        base = application(include_top=False, weights=keras_weights, input_tensor=inputs)
    except Exception as error:  # Keras raises several kinds when the download fails.
        raise ValueError(
            f"Could not load ImageNet weights for {name} ({error}). Without internet access, "
            "pass a local file with --backbone-weights PATH."
        ) from error
    if local_file is not None:
        base.load_weights(local_file)
    if keras_weights is None and local_file is None:
        LOGGER.warning("%s is built with random weights (no ImageNet initialisation).", name)
    x = layers.GlobalAveragePooling2D(name="gap")(base.output)
    x = layers.Dropout(dropout, name="gap_dropout")(x)
    outputs = _head(x, units=(TRANSFER_HEAD_UNITS,), dropout=dropout)
    return keras.Model(inputs, outputs, name=name)


def build_xception(input_size: int, channels: int = 3, weights: str | Path | None = "imagenet") -> keras.Model:
    """Xception ImageNet transfer model (input RGB in [-1, 1])."""
    return _transfer_model(keras.applications.Xception, "xception", input_size, weights, dropout=0.3)


def build_densenet201(input_size: int, channels: int = 3, weights: str | Path | None = "imagenet") -> keras.Model:
    """DenseNet201 ImageNet transfer model, the seed project's own backbone."""
    return _transfer_model(keras.applications.DenseNet201, "densenet201", input_size, weights, dropout=0.3)
