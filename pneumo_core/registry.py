"""The model registry: one frozen :class:`ModelSpec` per model, the single contract
that training, evaluation, prediction and the app read.

Usage:
    spec = get_spec("cnn")
    batch = spec.model_input(frame_square(gray, spec.input_size, framing="squash")[None])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np

# Reading the registry imports no TensorFlow (the Compare and Cards pages only read JSON): Keras and
# the builders in pneumo_core.models are imported when a model is built or its input is prepared.

CLASS_NAMES = ("NORMAL", "PNEUMONIA")


def lazy_builder(name: str) -> Callable[..., object]:
    """``pneumo_core.models.<name>``, imported on first call; keeps its importable name for ``to_json``."""

    def build(*args, **kwargs):
        from pneumo_core import models

        return getattr(models, name)(*args, **kwargs)

    build.__module__, build.__name__, build.__qualname__ = "pneumo_core.models", name, name
    return build


def scale_unit(batch):
    """Scale 0-255 grayscale ``(n, h, w, 1)`` to [0, 1], keeping one channel."""
    import keras

    return keras.ops.cast(batch, "float32") / 255.0


def scale_xception(batch):
    """Scale 0-255 grayscale ``(n, h, w, 1)`` to [-1, 1] and replicate it to RGB."""
    import keras

    scaled = keras.ops.cast(batch, "float32") / 127.5 - 1.0
    return keras.ops.repeat(scaled, 3, axis=-1)


def scale_densenet(batch):
    """Scale 0-255 grayscale ``(n, h, w, 1)`` to RGB normalised by the ImageNet mean and std."""
    import keras

    rgb = keras.ops.repeat(keras.ops.cast(batch, "float32") / 255.0, 3, axis=-1)
    mean = keras.ops.convert_to_tensor([0.485, 0.456, 0.406])
    std = keras.ops.convert_to_tensor([0.229, 0.224, 0.225])
    return (rgb - mean) / std


@dataclass(frozen=True)
class TrainDefaults:
    """Training hyper-parameters a model uses unless the CLI overrides them."""

    epochs: int
    batch_size: int
    learning_rate: float
    fine_tune_epochs: int = 0
    fine_tune_learning_rate: float = 1e-5
    fine_tune_from: str | None = None
    augment: str = "basic"  # augmentation policy (pneumo_core.augment.AUGMENT_POLICIES)
    framing: str = "squash"  # how an image becomes the square input (pneumo_core.imaging.FRAMINGS)


def transfer_defaults(fine_tune_from: str) -> TrainDefaults:
    """Head on the frozen ImageNet base for 3 epochs, then the top blocks fine-tuned at a low rate."""
    return TrainDefaults(
        epochs=3,
        batch_size=32,
        learning_rate=1e-3,
        fine_tune_epochs=8,
        fine_tune_learning_rate=3e-5,
        fine_tune_from=fine_tune_from,
    )


SEARCH_TARGETS = ("model", "train")


@dataclass(frozen=True)
class SearchParam:
    """One tunable hyper-parameter of a model: its range, its untuned default and what it sets.

    ``target`` is ``"model"`` for a keyword of the model's builder and ``"train"`` for a
    training argument (``learning_rate``, ``augment_strength``). Give either ``choices`` or
    ``low`` and ``high`` (optionally ``step`` or ``log``).
    """

    name: str
    default: int | float
    target: str
    choices: tuple[int | float, ...] = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False

    def __post_init__(self) -> None:
        if self.target not in SEARCH_TARGETS:
            raise ValueError(f"Search parameter {self.name}: target must be one of {SEARCH_TARGETS}.")
        if self.choices:
            if self.default not in self.choices:
                raise ValueError(f"Search parameter {self.name}: default {self.default} is not a choice.")
        elif self.low is None or self.high is None or not self.low <= self.default <= self.high:
            raise ValueError(f"Search parameter {self.name}: needs choices, or low <= default <= high.")

    def to_json(self) -> dict:
        """A JSON-friendly description (recorded in ``tuning.json``); unset fields are left out."""
        fields = asdict(self)
        fields["log"] = fields["log"] or None
        return {key: value for key, value in fields.items() if value is not None and value != ()}


CNN_SEARCH_SPACE = (
    SearchParam("base_filters", default=32, target="model", choices=(16, 24, 32, 48)),
    SearchParam("depth", default=5, target="model", choices=(3, 4, 5, 6)),
    SearchParam("dropout", default=0.3, target="model", low=0.0, high=0.5, step=0.1),
    SearchParam("dense_units", default=64, target="model", choices=(32, 64, 128, 256)),
    SearchParam("learning_rate", default=1e-3, target="train", low=1e-4, high=3e-3, log=True),
    SearchParam("augment_strength", default=1.0, target="train", low=0.0, high=2.0, step=0.25),
)


@dataclass(frozen=True)
class ModelSpec:
    """What a model is and what it expects as input."""

    name: str
    description: str
    builder: Callable[..., object]
    input_size: int
    channels: int
    preprocess: Callable
    gradcam_layer: str | None
    train: TrainDefaults
    class_names: tuple[str, str] = CLASS_NAMES
    uses_backbone_weights: bool = False
    unavailable_reason: str | None = None
    search_space: tuple[SearchParam, ...] = ()
    ensemble_of: str | None = None  # an ensemble: assembled from trained models of this registry name
    combines: tuple[str, ...] = ()  # a mixed ensemble: one trained model of each of these names, in this order
    extra_gradcam_layers: tuple[str, ...] = ()  # other branches' last conv layers, which Grad-CAM also reads

    @property
    def assembled_from(self) -> str | None:
        """What an ensemble averages, in words (``"cnn_robust models"``); None for a model that is trained."""
        if self.combines:
            return " and ".join(self.combines) + " models"
        return f"{self.ensemble_of} models" if self.ensemble_of else None

    def search_defaults(self) -> dict[str, int | float]:
        """The untuned value of every search parameter, by name."""
        return {param.name: param.default for param in self.search_space}

    @property
    def shippable(self) -> bool:
        """Whether this model can be trained and shipped from this repository."""
        return self.unavailable_reason is None

    def model_input(self, squares: np.ndarray) -> np.ndarray:
        """Turn ``(n, size, size)`` uint8 squares (``LoadedModel.square``) into model input."""
        if squares.ndim != 3 or squares.shape[1:] != (self.input_size, self.input_size):
            raise ValueError(
                f"{self.name} expects squares of shape (n, {self.input_size}, {self.input_size}), got {squares.shape}."
            )
        import keras

        return keras.ops.convert_to_numpy(self.preprocess(squares[..., None]))

    def to_json(self) -> dict:
        """A JSON-friendly description of the spec, stored in each model's config."""
        return {
            "name": self.name,
            "description": self.description,
            "builder": f"{self.builder.__module__}.{self.builder.__name__}",
            "input_size": self.input_size,
            "channels": self.channels,
            "preprocess": f"{self.preprocess.__module__}.{self.preprocess.__name__}",
            "gradcam_layer": self.gradcam_layer,
            "class_names": list(self.class_names),
        }


CNN = ModelSpec(
    name="cnn",
    description="Small CNN trained from scratch (5 conv blocks, 160x160): fast on a CPU.",
    builder=lazy_builder("build_cnn"),
    input_size=160,
    channels=1,
    preprocess=scale_unit,
    gradcam_layer="last_conv_act",
    train=TrainDefaults(epochs=25, batch_size=32, learning_rate=1e-3),
    search_space=CNN_SEARCH_SPACE,
)

CNN_ROBUST = replace(
    CNN,
    name="cnn_robust",
    description=(
        "The small CNN trained to ignore framing and exposure (uniform borders trimmed, robust"
        " augmentation): its readings move less when an image is cropped, padded or exposed differently."
    ),
    train=replace(CNN.train, augment="robust", framing="trim"),
    search_space=(),
)

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="mlp",
            description="Baseline: the flattened 64x64 image through five dense layers.",
            builder=lazy_builder("build_mlp"),
            input_size=64,
            channels=1,
            preprocess=scale_unit,
            gradcam_layer=None,
            train=TrainDefaults(epochs=40, batch_size=64, learning_rate=3e-4),
        ),
        CNN,
        CNN_ROBUST,
        replace(
            CNN_ROBUST,
            name="cnn_ensemble",
            description=(
                "Several cnn_robust models trained apart (other seeds or augmentation), their outputs averaged"
                " before the sigmoid; the heatmap is the Grad-CAM of that average over every member's last conv"
                " layer."
            ),
            builder=lazy_builder("build_cnn_ensemble"),
            train=replace(CNN_ROBUST.train, epochs=0),
            ensemble_of="cnn_robust",
        ),
        ModelSpec(
            name="xception",
            description="Xception pretrained on ImageNet, fine-tuned on X-rays (224x224): the largest model.",
            builder=lazy_builder("build_xception"),
            input_size=224,
            channels=3,
            preprocess=scale_xception,
            gradcam_layer="block14_sepconv2_act",
            train=transfer_defaults(fine_tune_from="block12_sepconv1_act"),
            uses_backbone_weights=True,
        ),
        ModelSpec(
            name="xception_cnn_ensemble",
            description=(
                "The xception and cnn_ensemble models averaged before the sigmoid, reading one border-trimmed"
                " 224x224 square (resized to 160x160 inside for the cnns); the heatmap is the Grad-CAM of that"
                " average over both models' last conv layers. The slowest model."
            ),
            builder=lazy_builder("build_xception_cnn_ensemble"),
            input_size=224,
            channels=1,
            preprocess=scale_unit,
            gradcam_layer="block14_sepconv2_act",
            extra_gradcam_layers=("cnn_last_conv_act",),
            train=replace(CNN_ROBUST.train, epochs=0),
            combines=("xception", "cnn_ensemble"),
        ),
        ModelSpec(
            name="densenet201",
            description="DenseNet201 pretrained on ImageNet (the seed project's transfer model).",
            builder=lazy_builder("build_densenet201"),
            input_size=224,
            channels=3,
            preprocess=scale_densenet,
            gradcam_layer="relu",
            train=transfer_defaults(fine_tune_from="conv5_block1_0_bn"),
            uses_backbone_weights=True,
            unavailable_reason=(
                "Not shipped: its ImageNet weights cannot be downloaded on the machines this "
                "project is built on. Train it on a connected machine with "
                "`python -m pneumo_core train --model densenet201` (weights='imagenet')."
            ),
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    """Return the spec of a registered model.

    Raises:
        ValueError: If ``name`` is not registered; the message lists the valid names.
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown model {name!r}; registered models: {', '.join(REGISTRY)}.") from None


def model_names(shippable_only: bool = False) -> list[str]:
    """Names of the registered models, in registry order."""
    return [name for name, spec in REGISTRY.items() if spec.shippable or not shippable_only]
