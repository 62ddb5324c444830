"""Training: tf.data input pipeline, two-phase transfer learning, calibration,
threshold choice on validation, and the artifact directory.

Usage:
    python -m pneumo_core train --model cnn --data ../shared/data/chest_xray
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from keras import layers
from sklearn.linear_model import LogisticRegression

from pneumo_core import artifacts, data
from pneumo_core.artifacts import TrainArgs
from pneumo_core.augment import (
    AUGMENT_POLICIES,
    aspect_swappers,
    augment_squares,
    augment_where,
    check_aspect_swap,
    check_normal_zoom,
    equalize_squares,
    keras_augmenter,
    normal_zoomer,
    robust_augmenter,
)
from pneumo_core.gate_figures import fit_gate_dir
from pneumo_core.imaging import EQUALIZING_FRAMINGS
from pneumo_core.metrics import MIN_SENSITIVITY, THRESHOLD_RULE, choose_threshold, compute_metrics
from pneumo_core.models import INPUT_NAME, OUTPUT_LAYER
from pneumo_core.registry import ModelSpec
from pneumo_core.report import render_card
from pneumo_core.subtype import SUBTYPES

LOGGER = logging.getLogger(__name__)
SUBTYPE_OUTPUT = "subtype"  # the joint training's second output (see training_twin); never saved
CONSISTENCY_OUTPUT = "consistency"  # both views' pneumonia probabilities (see training_twin); never saved
SECOND_VIEW_INPUT = "image_b"  # the second view of consistency training

# Who the training images come from, recorded in every model's config.json (the app and the card read it there).
KERMANY_POPULATION = artifacts.Population(
    source="Kermany et al. pediatric chest X-rays (Mendeley Data, doi:10.17632/rscbjbr9sj.2, CC BY 4.0)",
    summary="pediatric chest X-rays (ages 1-5) from one hospital",
    description=(
        "anterior-posterior radiographs of children aged one to five from one hospital "
        "(Guangzhou Women and Children's Medical Center); official training images only"
    ),
    not_validated_on="adults, other hospitals, other scanners or lateral views",
)


def read_params(path: Path) -> dict[str, int | float]:
    """Hyper-parameter values from a ``tuning.json`` (its best trial) or a plain JSON object.

    Raises:
        ValueError: If the file is missing or holds no values.
    """
    payload = artifacts.read_json(path)
    values = (payload.get("best") or {}).get("values") if "trials" in payload else payload
    if not isinstance(values, dict) or not values:
        raise ValueError(f"{path} holds no hyper-parameter values (expected a tuning.json with a best trial).")
    return values


def with_params(args: TrainArgs, spec: ModelSpec, params: dict[str, int | float]) -> TrainArgs:
    """Apply searched hyper-parameters: builder keywords go to ``model_params``, the rest to ``args``.

    Raises:
        ValueError: If a name is not in the model's search space.
    """
    space = {param.name: param for param in spec.search_space}
    unknown = sorted(set(params) - set(space))
    if unknown:
        known = ", ".join(space) or "none"
        raise ValueError(f"{spec.name} has no hyper-parameter {', '.join(unknown)}; its search space: {known}.")
    model_params = {name: value for name, value in params.items() if space[name].target == "model"}
    train_params = {name: value for name, value in params.items() if space[name].target == "train"}
    return replace(args, model_params={**args.model_params, **model_params}, **train_params)


def with_params_file(args: TrainArgs, spec: ModelSpec, path: Path) -> TrainArgs:
    """:func:`with_params` with the values of :func:`read_params`, recording the file in ``args``."""
    return replace(with_params(args, spec, read_params(path)), params_file=str(path))


def make_dataset(
    squares: np.ndarray,
    targets: np.ndarray | dict[str, np.ndarray],
    spec: ModelSpec,
    batch_size: int,
    augment_seed: int | None,
    augment_strength: float = 1.0,
    augment_policy: str = "basic",
    sample_weights: np.ndarray | None = None,
    equalize: bool = False,
    paired: bool = False,
    normal_zoom: float = 0.0,
    aspect_swap: float = 0.0,
) -> tf.data.Dataset:
    """Batched tf.data pipeline with caching and prefetch; shuffles when ``augment_seed`` is set
    and then also augments with ``augment_policy`` (see :mod:`pneumo_core.augment`), unless
    ``augment_strength`` is 0, and with ``equalize`` histogram-equalises the augmented squares again
    (the model's inputs always are). ``targets`` is one array, or one array per output of a joint model;
    ``sample_weights``, when given, rides along as the third element of each batch. With ``paired``, each
    batch holds two views of the same X-rays, ``{"image": ..., "image_b": ...}``, augmented independently
    (identical without augmentation), for :func:`training_twin`. When augmenting, ``normal_zoom`` and
    ``aspect_swap`` above 0 first apply their class-conditional augmenters (:func:`class_augmenters`)."""
    if augment_policy not in AUGMENT_POLICIES:
        raise ValueError(
            f"Unknown augmentation policy {augment_policy!r}; choose one of {', '.join(AUGMENT_POLICIES)}."
        )
    as_float = tf.nest.map_structure(lambda array: np.asarray(array, dtype="float32"), targets)
    weights = () if sample_weights is None else (sample_weights,)
    elements = (squares[..., None], as_float, *weights)
    images = tf.data.Dataset.from_tensor_slices(elements).cache()
    if augment_seed is not None:
        images = images.shuffle(len(squares), seed=augment_seed, reshuffle_each_iteration=True)
    images = images.batch(batch_size)
    if augment_seed is not None and (normal_zoom > 0 or aspect_swap > 0):
        per_class = class_augmenters(normal_zoom, aspect_swap, augment_seed)
        images = images.map(augment_by_class(per_class), num_parallel_calls=tf.data.AUTOTUNE)
    if paired:
        images = images.map(lambda x, *rest: ({INPUT_NAME: x, SECOND_VIEW_INPUT: x}, *rest))
    if augment_seed is not None and augment_strength > 0:
        images = images.map(
            augmentation(augment_policy, spec.input_size, augment_seed, augment_strength),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        if equalize:
            images = images.map(each_view(_equalize_batch), num_parallel_calls=tf.data.AUTOTUNE)
    return images.map(each_view(spec.preprocess), num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def each_view(transform):
    """A tf.data map function applying ``transform`` to the image batch, or to each view of a paired batch."""
    return lambda x, *rest: (tf.nest.map_structure(transform, x), *rest)


def augmentation(policy: str, size: int, seed: int, strength: float):
    """The tf.data map function of an augmentation policy, on batches of uint8 squares (targets pass through)."""
    if policy == "basic":
        augment = keras_augmenter(seed, strength)
        return each_view(lambda x: augment(tf.cast(x, tf.float32), training=True))
    robust = robust_augmenter(size, seed, strength)

    def augment_batch(x):
        out = tf.numpy_function(lambda batch: augment_squares(robust, batch), [x], tf.uint8, stateful=True)
        out.set_shape(x.shape)
        return out

    return each_view(augment_batch)


def class_augmenters(normal_zoom: float, aspect_swap: float, seed: int) -> dict[int, list]:
    """The augmenters applied to one class only, per label (0 NORMAL, 1 PNEUMONIA), in order: the normal zoom
    (:func:`pneumo_core.augment.normal_zoomer`), then the aspect swap (:func:`pneumo_core.augment.aspect_swappers`);
    each is off at 0."""
    per_class: dict[int, list] = {0: [], 1: []}
    if normal_zoom > 0:
        per_class[0].append(normal_zoomer(normal_zoom, seed + 1))
    if aspect_swap > 0:
        for label, swapper in aspect_swappers(aspect_swap, seed + 2).items():
            per_class[label].append(swapper)
    return per_class


def augment_by_class(per_class: dict[int, list]):
    """The tf.data map function applying :func:`class_augmenters` to the squares of their class in a batch
    (the label of the pneumonia output)."""

    def on_batch(batch: np.ndarray, labels: np.ndarray) -> np.ndarray:
        for label, augmenters in per_class.items():
            for augment in augmenters:
                batch = augment_where(augment, batch, labels == label)
        return batch

    def apply(x, targets, *rest):
        labels = targets[OUTPUT_LAYER] if isinstance(targets, dict) else targets
        out = tf.numpy_function(on_batch, [x, labels], tf.uint8, stateful=True)
        out.set_shape(x.shape)
        return out, targets, *rest

    return apply


def _equalize_batch(x):
    out = tf.numpy_function(equalize_squares, [x], tf.uint8, stateful=False)
    out.set_shape(x.shape)
    return out


def class_weights(targets: np.ndarray) -> dict[int, float]:
    """Inverse-frequency class weights: ``n / (2 * count)``."""
    counts = np.bincount(targets, minlength=2)
    if (counts == 0).any():
        raise ValueError(f"Both classes are needed to train; got counts {counts.tolist()}.")
    return {label: float(len(targets) / (2 * count)) for label, count in enumerate(counts)}


def subtype_targets(frame: pd.DataFrame) -> np.ndarray:
    """Targets of the joint subtype output: 1 bacterial, 0 viral, -1 (no loss) for every other image."""
    subtype = frame["subtype"].to_numpy()
    bacteria, virus = SUBTYPES
    return np.select([subtype == bacteria, subtype == virus], [1.0, 0.0], default=-1.0).astype("float32")


def twin_targets(labels: np.ndarray, frame: pd.DataFrame, args: TrainArgs) -> dict[str, np.ndarray]:
    """The targets of every output of :func:`training_twin` (the consistency output has none: zeros)."""
    targets = {OUTPUT_LAYER: labels}
    if args.subtype_weight > 0:
        targets[SUBTYPE_OUTPUT] = subtype_targets(frame)
    if args.consistency_weight > 0:
        targets[CONSISTENCY_OUTPUT] = np.zeros(len(labels), dtype="float32")
    return targets


@keras.saving.register_keras_serializable(package="pneumo_core")
def masked_subtype_loss(y_true, y_pred):
    """Binary cross-entropy of P(bacterial) on the pneumonia images only: a target of -1 adds no loss."""
    mask = keras.ops.cast(y_true[..., 0] >= 0, "float32")
    return keras.losses.binary_crossentropy(keras.ops.clip(y_true, 0.0, 1.0), y_pred) * mask


@keras.saving.register_keras_serializable(package="pneumo_core")
def consistency_loss(y_true, y_pred):
    """Jensen-Shannon divergence (nats) between the pneumonia probabilities of two views of one X-ray, the
    columns of ``y_pred``; ``y_true`` is unused. 0 when the views agree; at most ln 2."""
    del y_true
    both = keras.ops.clip(y_pred, 1e-6, 1 - 1e-6)
    first, second = both[..., 0], both[..., 1]
    mean = (first + second) / 2

    def kl_to_mean(p):
        return p * keras.ops.log(p / mean) + (1 - p) * keras.ops.log((1 - p) / (1 - mean))

    return (kl_to_mean(first) + kl_to_mean(second)) / 2


def training_twin(model: keras.Model, args: TrainArgs) -> keras.Model:
    """``model`` itself, or a training twin sharing all its layers with extra outputs (never saved).

    - ``args.subtype_weight`` above 0 adds a sigmoid output, P(bacterial | pneumonia), on the features
      the ``pneumonia`` output reads: the shared features learn to tell the subtypes apart, and the shipped
      subtype head is then fitted and calibrated on them (:func:`pneumo_core.subtype.fit_subtype_dir`).
    - ``args.consistency_weight`` above 0 adds a second input, another view of the same X-ray, and an
      output holding both views' pneumonia probabilities, whose :func:`consistency_loss` asks the model to
      read both views alike (as AugMix's Jensen-Shannon consistency does; Hendrycks et al., ICLR 2020).
    """
    if args.subtype_weight <= 0 and args.consistency_weight <= 0:
        return model
    inputs = {INPUT_NAME: model.inputs[0]}
    outputs = {OUTPUT_LAYER: model.output}
    if args.subtype_weight > 0:
        features = model.get_layer(OUTPUT_LAYER).input
        outputs[SUBTYPE_OUTPUT] = layers.Dense(1, activation="sigmoid", name=SUBTYPE_OUTPUT)(features)
    if args.consistency_weight > 0:
        inputs[SECOND_VIEW_INPUT] = keras.Input(model.inputs[0].shape[1:], name=SECOND_VIEW_INPUT)
        second_view = model(inputs[SECOND_VIEW_INPUT])
        outputs[CONSISTENCY_OUTPUT] = layers.Concatenate(name=CONSISTENCY_OUTPUT)([model.output, second_view])
    return keras.Model(inputs, outputs)


def compile_settings(args: TrainArgs) -> dict:
    """Loss and metrics of :func:`fit_phase` for the model :func:`training_twin` makes of ``args``."""
    binary_metrics = [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]
    if args.subtype_weight <= 0 and args.consistency_weight <= 0:
        return {"loss": "binary_crossentropy", "metrics": binary_metrics}
    losses = {OUTPUT_LAYER: ("binary_crossentropy", 1.0)}
    if args.subtype_weight > 0:
        losses[SUBTYPE_OUTPUT] = (masked_subtype_loss, args.subtype_weight)
    if args.consistency_weight > 0:
        losses[CONSISTENCY_OUTPUT] = (consistency_loss, args.consistency_weight)
    return {
        "loss": {name: loss for name, (loss, _) in losses.items()},
        "loss_weights": {name: weight for name, (_, weight) in losses.items()},
        "metrics": {OUTPUT_LAYER: binary_metrics},
    }


def history_key(key: str) -> str:
    """A joint run's Keras metric name as a binary run names it (``val_pneumonia_auc`` -> ``val_auc``)."""
    return key.replace(f"{OUTPUT_LAYER}_accuracy", "accuracy").replace(f"{OUTPUT_LAYER}_auc", "auc")


def set_trainable(model: keras.Model, first_trainable: str | None) -> None:
    """Freeze the backbone up to ``first_trainable`` (the head always trains; BN never does)."""
    names = [layer.name for layer in model.layers]
    head_start = names.index("gap")
    start = head_start if first_trainable is None else names.index(first_trainable)
    for index, layer in enumerate(model.layers):
        is_bn = isinstance(layer, layers.BatchNormalization) and index < head_start
        layer.trainable = index >= start and not is_bn


def fit_phase(
    model, train_ds, val_ds, args: TrainArgs, run_dir: Path, *, phase, learning_rate, epochs, initial_epoch, weights
):
    """Compile and fit one phase with checkpointing, early stopping and LR reduction.

    The phase resumes where a stopped run left it: Keras' ``BackupAndRestore`` keeps the weights and
    the epoch in ``<run_dir>/backup-<phase>/`` until the phase ends (early stopping and learning-rate
    reduction start counting again after a resume), and the epochs' rows are read back from the
    phase's CSV log, so the history covers every epoch of the phase.
    """
    backup_dir = run_dir / f"backup-{phase}"
    log_file = run_dir / f"history-{phase}.csv"
    if not backup_dir.exists():
        log_file.unlink(missing_ok=True)  # A fresh phase; with a backup, the log holds the epochs run so far.
    else:
        LOGGER.info("Resuming phase %s from %s", phase, backup_dir)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), **compile_settings(args))
    callbacks = [
        keras.callbacks.ModelCheckpoint(run_dir / "best.keras", monitor="val_loss", save_best_only=True),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=args.patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=max(1, args.patience // 2)),
        keras.callbacks.CSVLogger(log_file, append=True),
        keras.callbacks.BackupAndRestore(backup_dir),
    ]
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=initial_epoch + epochs,
        initial_epoch=initial_epoch,
        class_weight=weights,
        callbacks=callbacks,
        verbose=2,
    )
    return logged_rows(log_file)


def logged_rows(log_file: Path) -> list[dict]:
    """The epochs' rows of a phase's CSV log, with the binary model's metric names."""
    logged = pd.read_csv(log_file)
    return [
        {"epoch": int(row.pop("epoch")), **{history_key(key): float(value) for key, value in row.items()}}
        for row in logged.to_dict("records")
    ]


def output_logits(model: keras.Model, model_input: np.ndarray) -> np.ndarray:
    """Pre-sigmoid outputs of the ``pneumonia`` layer (exact, unlike logit(sigmoid(z)))."""
    head = model.get_layer(OUTPUT_LAYER)
    features = keras.Model(model.inputs, head.input).predict(model_input, verbose=0, batch_size=64)
    kernel, bias = head.get_weights()
    return (features @ kernel + bias)[:, 0]


def calibrate(model: keras.Model, val_input: np.ndarray, val_targets: np.ndarray) -> dict:
    """Platt-scale the output on the validation split and fold it into the last layer.

    ``p = sigmoid(a * z + b)`` becomes the model's own output, so every consumer of
    ``model.keras`` sees calibrated probabilities without extra code.
    """
    logits = output_logits(model, val_input)
    platt = LogisticRegression(C=1e4).fit(logits[:, None], val_targets)
    scale, shift = float(platt.coef_[0, 0]), float(platt.intercept_[0])
    if scale <= 0:
        LOGGER.warning("Platt scale %.3f is not positive; calibration skipped.", scale)
        return {"method": "none", "scale": 1.0, "shift": 0.0}
    head = model.get_layer(OUTPUT_LAYER)
    kernel, bias = head.get_weights()
    head.set_weights([kernel * scale, bias * scale + shift])
    return {"method": "platt (validation split)", "scale": scale, "shift": shift}


def load_split_frames(args: TrainArgs) -> dict[str, pd.DataFrame]:
    """The train/val/test frames with image paths; creates the split file if it does not exist."""
    split_path = Path(args.split_file)
    if not split_path.is_file():
        LOGGER.info("Creating split file %s from %s", split_path, args.data)
        data.write_split(data.make_split(data.list_images(Path(args.data)), seed=args.seed), split_path)
    frame = data.attach_paths(data.read_split(split_path), Path(args.data))
    return {name: frame[frame["split"] == name].reset_index(drop=True) for name in ("train", "val", "test")}


def run_phases(model, spec: ModelSpec, args: TrainArgs, squares: dict, targets: dict, frames: dict) -> list[dict]:
    """Fit the model: one phase from scratch, or head then fine-tuning for transfer models.

    ``targets`` holds each split's 0/1 labels and ``frames`` its records (their subtypes feed the joint output).
    With ``args.subtype_weight`` or ``args.consistency_weight`` above 0, the model is fitted through
    :func:`training_twin`, and the class weights become per-image sample weights (Keras takes class weights
    for one output only); early stopping and checkpoints then watch the weighted sum of the validation losses
    (the validation views are identical, so consistency adds nothing there).

    Returns:
        One row per epoch with the Keras metrics and the phase name.
    """
    weights = class_weights(targets["train"])
    fitted, class_weight, sample_weights = training_twin(model, args), weights, None
    if fitted is not model:
        class_weight = None
        sample_weights = np.array([weights[label] for label in targets["train"]], dtype="float32")
        targets = {name: twin_targets(labels, frames[name], args) for name, labels in targets.items()}
    paired = args.consistency_weight > 0
    train_ds = make_dataset(
        squares["train"],
        targets["train"],
        spec,
        args.batch_size,
        args.seed,
        augment_strength=args.augment_strength,
        augment_policy=args.augment,
        sample_weights=sample_weights,
        equalize=args.framing in EQUALIZING_FRAMINGS,
        paired=paired,
        normal_zoom=args.normal_zoom,
        aspect_swap=args.aspect_swap,
    )
    val_ds = make_dataset(squares["val"], targets["val"], spec, args.batch_size, augment_seed=None, paired=paired)
    run_dir = Path(args.run_dir) / spec.name
    run_dir.mkdir(parents=True, exist_ok=True)
    phases = [("head" if spec.uses_backbone_weights else "full", args.learning_rate, args.epochs, None)]
    if spec.uses_backbone_weights:
        phases.append(("fine-tune", args.fine_tune_learning_rate, args.fine_tune_epochs, args.fine_tune_from))
    history = []
    for index, (phase, learning_rate, epochs, first_trainable) in enumerate(phases):
        if epochs <= 0:
            continue
        if any((run_dir / f"backup-{later[0]}").exists() for later in phases[index + 1 :]):
            # A later phase was under way when the run stopped: its backup holds all the weights.
            LOGGER.info("Phase %s finished before the run stopped; its epochs are read from its log", phase)
            history += [{**row, "phase": phase} for row in logged_rows(run_dir / f"history-{phase}.csv")]
            continue
        if spec.uses_backbone_weights:
            set_trainable(model, first_trainable)
        rows = fit_phase(
            fitted,
            train_ds,
            val_ds,
            args,
            run_dir,
            phase=phase,
            learning_rate=learning_rate,
            epochs=epochs,
            initial_epoch=len(history),
            weights=class_weight,
        )
        history += [{**row, "phase": phase} for row in rows]
    return history


def train(
    spec: ModelSpec, args: TrainArgs, fit_gate: bool = True, fit_subtype: bool = True, members: Sequence[str] = ()
) -> Path:
    """Train ``spec`` and write its complete artifact directory.

    An ensemble (``spec.assembled_from``) is assembled from the trained model directories ``members`` instead
    (:func:`pneumo_core.ensemble.assemble`); everything after fitting is the same.

    With ``fit_gate``, the out-of-distribution gate is then fitted on the same training split and
    measured (see :func:`pneumo_core.gate_figures.fit_gate_dir`), so a retrained model never keeps
    the gate of the model it replaces. With ``fit_subtype``, the bacterial-vs-viral head is then fitted
    on the new model's frozen features (see :func:`pneumo_core.subtype.fit_subtype_dir`); a split with
    too few bacterial or viral images leaves the model without one (logged as a warning). With
    ``args.subtype_weight`` above 0, those features were trained to tell the subtypes apart as well.

    Returns:
        The model directory ``<out>/<name>``.
    """
    if spec.uses_backbone_weights and args.backbone_weights is None:
        raise ValueError(f"{spec.name} needs --backbone-weights PATH, 'imagenet' or 'none'.")
    if members and spec.assembled_from is None:
        raise ValueError(f"{spec.name} is trained, not assembled: --members is for an ensemble model.")
    if args.normal_zoom:  # 0 is off; anything else must be in range, checked before the images load
        check_normal_zoom(args.normal_zoom)
    if args.aspect_swap:
        check_aspect_swap(args.aspect_swap)
    keras.utils.set_random_seed(args.seed)
    started = time.time()
    frames = load_split_frames(args)
    needed = ("val", "test") if spec.assembled_from else tuple(frames)  # nothing to fit: an ensemble is assembled
    squares = {
        name: data.load_arrays(frames[name]["path"].tolist(), spec.input_size, framing=args.framing) for name in needed
    }
    targets = {name: data.labels_of(frames[name]) for name in needed}
    LOGGER.info("Loaded %s images in %.0f s", {k: len(v) for k, v in squares.items()}, time.time() - started)

    if spec.assembled_from:
        from pneumo_core.ensemble import assemble

        model, args = assemble(spec, args, members)
        history = []
    else:
        model, args = build_model(spec, args)
        history = run_phases(model, spec, args, squares, targets, frames)

    val_input = spec.model_input(squares["val"])
    calibration = calibrate(model, val_input, targets["val"])
    val_prob = model.predict(val_input, verbose=0, batch_size=64)[:, 0]
    threshold = choose_threshold(targets["val"], val_prob)
    test_prob = model.predict(spec.model_input(squares["test"]), verbose=0, batch_size=64)[:, 0]
    metrics = artifacts.ModelMetrics(
        model=spec.name,
        validation=split_metrics(targets["val"], val_prob, threshold, frames["val"]),
        test=split_metrics(targets["test"], test_prob, threshold, frames["test"]),
    )
    out_dir = write_artifacts(spec, args, model, metrics, history, calibration, frames, time.time() - started)
    if fit_gate:
        fit_gate_dir(out_dir, Path(args.data), Path(args.split_file))
    if fit_subtype:
        from pneumo_core.subtype import NotEnoughSubtypes, fit_subtype_dir

        try:
            fit_subtype_dir(out_dir, Path(args.data), Path(args.split_file))
        except NotEnoughSubtypes as error:
            LOGGER.warning("No subtype head for %s: %s", spec.name, error)
    return out_dir


def build_model(spec: ModelSpec, args: TrainArgs) -> tuple[keras.Model, TrainArgs]:
    """The registry's fresh model, or with ``args.init_from`` one holding that trained model's weights.

    Returns:
        The model, and ``args`` with the starting model's checksum recorded.

    Raises:
        ValueError: If the starting model has a different architecture (another builder, or other
            builder parameters); models sharing a builder, such as cnn and cnn_robust, may start from each other.
        ModelRefused: If its directory does not verify.
    """
    build_kwargs = {"weights": args.backbone_weights} if spec.uses_backbone_weights else {}
    model = spec.builder(input_size=spec.input_size, channels=spec.channels, **build_kwargs, **args.model_params)
    if args.init_from is None:
        return model, args
    start = artifacts.load_model_dir(Path(args.init_from))
    shapes = [tuple(weight.shape) for weight in model.weights]
    same_builder = start.spec.builder.__name__ == spec.builder.__name__
    if not same_builder or shapes != [tuple(weight.shape) for weight in start.model.weights]:
        raise ValueError(
            f"--init-from {args.init_from} holds a {start.spec.name} model whose layers differ from the {spec.name}"
            " being trained; start from a model of the same architecture trained with the same --params."
        )
    model.set_weights(start.model.get_weights())
    LOGGER.info("Starting from the weights of %s", args.init_from)
    return model, replace(args, init_from_sha256=artifacts.sha256_of(Path(args.init_from) / artifacts.MODEL_FILE))


def split_metrics(
    y_true: np.ndarray, prob: np.ndarray, threshold: float, frame: pd.DataFrame
) -> artifacts.SplitMetrics:
    """The typed metrics of one split at the operating threshold."""
    figures = compute_metrics(y_true, prob, threshold, frame["subtype"].to_numpy())
    return artifacts.from_json(artifacts.SplitMetrics, figures)


def write_artifacts(
    spec: ModelSpec,
    args: TrainArgs,
    model: keras.Model,
    metrics: artifacts.ModelMetrics,
    history: list[dict],
    calibration: dict,
    frames: dict[str, pd.DataFrame],
    seconds: float,
) -> Path:
    """Record the run as a :class:`~pneumo_core.artifacts.ModelConfig` and save the sealed model directory."""
    config = artifacts.ModelConfig(
        schema_version=artifacts.SCHEMA_VERSION,
        spec=artifacts.from_json(artifacts.SpecSummary, spec.to_json()),
        args=recorded_args(args),
        threshold=metrics.validation.threshold,
        threshold_rule=artifacts.ThresholdRule(
            text=THRESHOLD_RULE, min_sensitivity=MIN_SENSITIVITY, chosen_on="validation split"
        ),
        calibration=artifacts.Calibration(**calibration),
        data=artifacts.DataFacts(
            split_file=artifacts.repo_relative(args.split_file),
            split_hash=data.split_hash(Path(args.split_file)),
            split_sizes={name: len(frame) for name, frame in frames.items()},
            split_fractions=dict(data.SPLIT_FRACTIONS),
            population=KERMANY_POPULATION,
        ),
        provenance=artifacts.Provenance(
            training_seconds=round(seconds, 1),
            epochs_run=len(history),
            machine=this_machine(),
            libraries=library_versions(),
        ),
        parameters=int(model.count_params()),
        checksums={},
    )
    out_dir = Path(args.out) / spec.name
    params_file = Path(args.params_file).resolve() if args.params_file else None
    keep = [params_file.name] if params_file and params_file.parent == out_dir.resolve() else []
    artifacts.save_model_dir(
        out_dir,
        model=model,
        config=config,
        metrics=metrics,
        history=history,
        card=render_card(config, metrics),
        keep=keep,
    )
    LOGGER.info("Wrote %s (test ROC AUC %s)", out_dir, metrics.test.roc_auc)
    return out_dir


def recorded_args(args: TrainArgs) -> TrainArgs:
    """The arguments as ``config.json`` records them: paths relative to the repository."""
    paths = {name: artifacts.repo_relative(getattr(args, name)) for name in ("data", "out", "split_file", "run_dir")}
    if args.backbone_weights not in (None, "imagenet", "none"):
        paths["backbone_weights"] = artifacts.repo_relative(args.backbone_weights)
    for name in ("params_file", "init_from"):
        if getattr(args, name) is not None:
            paths[name] = artifacts.repo_relative(getattr(args, name))
    return replace(args, **paths)


def this_machine() -> artifacts.Machine:
    """The cores this process may use, the CPU model and the GPUs TensorFlow sees."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    gpus = tuple(
        tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
        for gpu in tf.config.list_physical_devices("GPU")
    )
    return artifacts.Machine(cpu_cores=cores, cpu_model=cpu_model(), gpus=gpus)


def cpu_model() -> str | None:
    """The CPU model name from ``/proc/cpuinfo`` (Linux) or the platform, None when unknown."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shape a trained model."""
    import sklearn

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }
