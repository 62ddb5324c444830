"""Model artifacts: one typed, sealed model directory and its matching save/load pair.

A model directory ``models/<name>/`` holds:

- ``model.keras``: the Keras model (its output is already calibrated), loaded with ``safe_mode`` (no code);
- ``config.json``: a :class:`ModelConfig` (spec summary, training arguments, the operating threshold,
  stored only here, its rule, the calibration, facts about the data and the population, provenance,
  and the sha256 of every other artifact file);
- ``metrics.json``: a :class:`ModelMetrics` (validation and internal-test figures);
- ``history.json``: one row per training epoch; ``card.md``: the model card (see :mod:`pneumo_core.report`);
- ``SHA256SUMS``: the sha256 of every other file of the directory, ``config.json`` included, in the
  ``sha256sum -c`` format;
- files added later (gate parameters, ``tuning.json``, ``robustness.json``), recorded with :func:`seal`.

**Integrity.** :func:`load_model_dir` refuses, with a :class:`ModelRefused` that says why, a directory
whose files do not match ``SHA256SUMS``, that holds a file ``SHA256SUMS`` does not list, whose
``config.json`` checksums disagree with it, whose JSON misses a key, or whose values are out of range
(threshold outside (0, 1), a metrics file computed at another threshold, ...). :func:`read_model_dir`
does the same without hashing ``model.keras`` (the catalog uses it to read the JSON). This detects
accidental edits and corruption, not a determined attacker: whoever can edit a file can recompute
``SHA256SUMS`` too; stopping that needs a signature checked against a key kept outside the directory.

Reading artifacts imports no TensorFlow; only loading or saving ``model.keras`` does.

Usage:
    loaded = load_model_dir(Path("models/cnn"))
    prob = loaded.predict_squares(squares)
    seal(Path("models/cnn"))  # after writing a new file (e.g. robustness.json) into the directory
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from pneumo_core.imaging import frame_square
from pneumo_core.registry import ModelSpec, get_spec

if TYPE_CHECKING:  # Keras (and TensorFlow) are imported only to load or save a model.
    import keras

LOGGER = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
CARD_FILE = "card.md"
SUMS_FILE = "SHA256SUMS"
REQUIRED_FILES = (CONFIG_FILE, MODEL_FILE, METRICS_FILE, HISTORY_FILE, CARD_FILE)
SCHEMA_VERSION = 2
OUTSIDE_REPO = "<outside the repository>"
SPLITS = ("train", "val", "test")
CONTRACT_FIELDS = ("input_size", "channels", "preprocess", "class_names")

_SUMS_LINE = re.compile(r"^([0-9a-f]{64}) [ *](\S(?:.*\S)?)$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
T = TypeVar("T")


class ModelRefused(ValueError):
    """A model directory that must not be used; ``str(error)`` is the user-facing reason."""


# --- The typed artifacts --------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecSummary:
    """The registry spec a model was trained with (see ``ModelSpec.to_json``)."""

    name: str
    description: str
    builder: str
    input_size: int
    channels: int
    preprocess: str
    gradcam_layer: str | None
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class EnsembleMember:
    """One trained model an ensemble averages: where it was, its checksum and how it was trained."""

    path: str  # relative to the repository
    model_sha256: str
    seed: int
    augment: str
    augment_strength: float
    normal_zoom: float
    init_from: str | None
    init_from_sha256: str | None
    epochs_run: int
    training_seconds: float
    aspect_swap: float = 0.0
    model: str | None = None  # its registry name (recorded since mixed ensembles; older records leave it out)


@dataclass(frozen=True)
class TrainArgs:
    """Resolved training arguments. In ``config.json`` paths are relative to the repository
    (a path outside it is recorded as ``<outside the repository>/<its name>``)."""

    model: str
    data: str
    out: str
    epochs: int
    fine_tune_epochs: int
    batch_size: int
    learning_rate: float
    fine_tune_learning_rate: float
    fine_tune_from: str | None
    backbone_weights: str | None
    split_file: str
    seed: int
    patience: int
    run_dir: str
    augment_strength: float = 1.0
    augment: str = "basic"  # augmentation policy (pneumo_core.augment)
    model_params: dict[str, int | float] = field(default_factory=dict)  # builder keywords (tuned values)
    params_file: str | None = None  # the tuning.json the hyper-parameters came from
    subtype_weight: float = 0.0  # weight of the bacterial-vs-viral loss trained jointly (0: binary loss only)
    framing: str = "squash"  # how an image becomes the square input (pneumo_core.imaging.FRAMINGS)
    init_from: str | None = None  # a trained model directory whose weights the run started from (warm start)
    init_from_sha256: str | None = None  # that directory's model.keras
    consistency_weight: float = 0.0  # weight of the two-view consistency loss (0: off; pneumo_core.train)
    normal_zoom: float = 0.0  # largest extra zoom into NORMAL training images (0: off; pneumo_core.augment)
    aspect_swap: float = 0.0  # one-axis zoom giving each class the other's proportions (0: off; pneumo_core.augment)
    members: tuple[EnsembleMember, ...] = ()  # the trained models an ensemble averages (pneumo_core.ensemble)


@dataclass(frozen=True)
class ThresholdRule:
    """How the operating threshold was chosen."""

    text: str  # the rule in one sentence, as shown on the card
    min_sensitivity: float  # the sensitivity target on ``chosen_on`` (0.95: "at least 95 %")
    chosen_on: str  # the images the threshold was chosen on, e.g. "validation split"


@dataclass(frozen=True)
class Calibration:
    """The Platt scaling ``p = sigmoid(scale * z + shift)`` folded into the model's last layer."""

    method: str
    scale: float
    shift: float


@dataclass(frozen=True)
class Population:
    """Who the training images come from: what the app and the card say about the model's reach."""

    source: str  # dataset, citation and licence
    summary: str  # short, for a disclaimer line: "pediatric chest X-rays (ages 1-5) from one hospital"
    description: str  # one sentence for the model card
    not_validated_on: str  # "adults, other hospitals, other scanners or lateral views"


@dataclass(frozen=True)
class DataFacts:
    """The data a model was trained and evaluated on."""

    split_file: str  # relative to the repository
    split_hash: str  # sha256 of the split file
    split_sizes: dict[str, int]  # images per split: train, val, test
    split_fractions: dict[str, float]  # the nominal proportions of the split: train 0.70, val 0.15, test 0.15
    population: Population


@dataclass(frozen=True)
class Machine:
    """The machine a model was trained on."""

    cpu_cores: int  # cores available to the training process
    cpu_model: str | None  # None when the operating system does not say
    gpus: tuple[str, ...]  # empty when trained without a GPU


@dataclass(frozen=True)
class Provenance:
    """How the model was produced. ``machine`` is None when it was not recorded (older models)."""

    training_seconds: float  # wall time of the training run, from loading the images to the saved model
    epochs_run: int
    machine: Machine | None
    libraries: dict[str, str]  # python, tensorflow, keras, ... versions


@dataclass(frozen=True)
class ModelConfig:
    """Everything ``config.json`` records about a trained model."""

    schema_version: int
    spec: SpecSummary
    args: TrainArgs
    threshold: float  # the operating threshold: an image is called PNEUMONIA when p >= threshold
    threshold_rule: ThresholdRule
    calibration: Calibration
    data: DataFacts
    provenance: Provenance
    parameters: int
    checksums: dict[str, str]  # sha256 of every artifact file except config.json and SHA256SUMS

    @property
    def min_sensitivity(self) -> float:
        """The validation sensitivity the threshold rule guarantees (0.95 means "at least 95 %")."""
        return self.threshold_rule.min_sensitivity

    @property
    def population(self) -> Population:
        """Who the training images come from."""
        return self.data.population

    @property
    def split_percentages(self) -> str:
        """The split proportions as "70/15/15" (train/val/test)."""
        return "/".join(f"{self.data.split_fractions[name] * 100:.0f}" for name in ("train", "val", "test"))


@dataclass(frozen=True)
class Confusion:
    """Confusion matrix ``[[TN, FP], [FN, TP]]`` and its rates at one threshold (None when undefined)."""

    threshold: float
    matrix: tuple[tuple[int, int], tuple[int, int]]
    accuracy: float | None
    precision: float | None
    recall: float | None
    sensitivity: float | None
    specificity: float | None
    f1: float | None


@dataclass(frozen=True)
class RocCurve:
    """A thinned ROC curve."""

    fpr: tuple[float, ...]
    tpr: tuple[float, ...]
    thresholds: tuple[float, ...]


@dataclass(frozen=True)
class SubtypeSensitivity:
    """Sensitivity on one pneumonia subtype."""

    n: int
    sensitivity: float


@dataclass(frozen=True)
class SplitMetrics:
    """The figures of one model on one set of images (see :func:`pneumo_core.metrics.compute_metrics`)."""

    n: int
    n_per_class: dict[str, int]
    accuracy: float | None
    precision: float | None
    recall: float | None
    sensitivity: float | None
    specificity: float | None
    f1: float | None
    roc_auc: float | None
    pr_auc: float | None
    log_loss: float
    brier: float
    ece: float
    threshold: float  # the threshold these figures were computed at
    confusion_at_threshold: Confusion
    confusion_at_half: Confusion = field(metadata={"json": "confusion_at_0.5"})
    roc_curve: RocCurve | None
    sensitivity_by_subtype: dict[str, SubtypeSensitivity]


@dataclass(frozen=True)
class ModelMetrics:
    """``metrics.json``: the model's figures on the validation and the internal test split."""

    model: str
    validation: SplitMetrics
    test: SplitMetrics


@dataclass(frozen=True)
class ModelArtifacts:
    """The verified JSON of a model directory (everything but the Keras model itself)."""

    directory: Path
    config: ModelConfig
    metrics: ModelMetrics
    history: tuple[dict, ...]


# --- JSON <-> dataclasses -------------------------------------------------------------------------


class SchemaError(ValueError):
    """JSON that does not have the shape of its dataclass; the message names the key."""


def to_json(value: object) -> object:
    """A dataclass (nested dataclasses, tuples, dicts) as JSON-ready data, using each field's JSON name."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {_json_name(item): to_json(getattr(value, item.name)) for item in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


def from_json(kind: type[T], payload: object, where: str = "") -> T:
    """Build a dataclass from JSON data, checking every key and type.

    Keys of fields without a default are required; unknown keys are refused.

    Raises:
        SchemaError: Naming the first missing, unknown or mistyped key.
    """
    return _decode(kind, payload, where)


def _json_name(item: dataclasses.Field) -> str:
    return item.metadata.get("json", item.name)


def _decode(kind: Any, value: object, where: str) -> Any:
    if dataclasses.is_dataclass(kind):
        return _decode_dataclass(kind, value, where)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = []
        for option in (option for option in args if option is not type(None)):
            try:
                return _decode(option, value, where)
            except SchemaError as error:
                problems.append(error)
        raise problems[-1]
    if origin is tuple:
        return _decode_tuple(args, value, where)
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            raise SchemaError(f"'{where}' should be an object, not {_kind_of(value)}")
        return {str(key): _decode(args[1], item, f"{where}.{key}") for key, item in value.items()}
    return _decode_scalar(kind, value, where)


def _decode_dataclass(kind: Any, value: object, where: str) -> Any:
    if not isinstance(value, dict):
        raise SchemaError(f"'{where or 'the file'}' should be an object, not {_kind_of(value)}")
    hints = typing.get_type_hints(kind)
    known = {}
    for item in dataclasses.fields(kind):
        key = _json_name(item)
        path = f"{where}.{key}" if where else key
        if key in value:
            known[item.name] = _decode(hints[item.name], value[key], path)
        elif item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
            raise SchemaError(f"the key '{path}' is missing")
    unknown = sorted(set(value) - {_json_name(item) for item in dataclasses.fields(kind)})
    if unknown:
        raise SchemaError(f"the key '{where + '.' if where else ''}{unknown[0]}' is not expected")
    return kind(**known)


def _decode_tuple(args: tuple, value: object, where: str) -> tuple:
    if not isinstance(value, list):
        raise SchemaError(f"'{where}' should be a list, not {_kind_of(value)}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_decode(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if len(value) != len(args):
        raise SchemaError(f"'{where}' should have {len(args)} items, not {len(value)}")
    return tuple(_decode(kind, item, f"{where}[{i}]") for i, (kind, item) in enumerate(zip(args, value, strict=True)))


def _decode_scalar(kind: Any, value: object, where: str) -> Any:
    if kind is Any:
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise SchemaError(f"'{where}' is {value}, not a finite number")
        return float(value)
    if kind in (int, str, bool) and type(value) is kind:
        return value
    raise SchemaError(f"'{where}' should be {kind.__name__}, not {_kind_of(value)}")


def _kind_of(value: object) -> str:
    return "null" if value is None else f"{type(value).__name__} {json.dumps(value)[:40]}"


# --- Files, checksums and the seal --------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: Path, payload: object) -> None:
    """Write JSON (dataclasses included) with sorted keys and a trailing newline (stable diffs)."""
    path.write_text(json.dumps(to_json(payload), indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file, failing with a message that names it."""
    if not path.is_file():
        raise ValueError(f"{path.name} is missing.")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path.name} is not valid JSON ({error}).") from None


def repo_relative(path: str | Path, root: Path = REPO_ROOT) -> str:
    """``path`` (absolute, or relative to the working directory) relative to the repository.

    A path outside the repository is recorded as ``<outside the repository>/<its name>``, so no
    build machine's folders end up in the artifacts.
    """
    resolved = Path(path).expanduser().resolve()
    try:
        return resolved.relative_to(root.resolve()).as_posix() or "."
    except ValueError:
        return f"{OUTSIDE_REPO}/{resolved.name}"


def artifact_files(directory: Path) -> list[str]:
    """Every file of a model directory but ``SHA256SUMS``, as sorted paths relative to it."""
    return sorted(
        path.relative_to(directory).as_posix()
        for path in directory.rglob("*")
        if path.is_file() and path.name != SUMS_FILE
    )


def seal(directory: Path, updated: Iterable[str] = ()) -> None:
    """Record files added to (or rewritten in) a sealed model directory.

    Call it after writing, for example, ``robustness.json`` into ``models/<name>/``. Every file the
    current ``SHA256SUMS`` lists must still match it, except those named in ``updated`` (files you
    rewrote on purpose), so that sealing never blesses an accidental edit; files it does not list yet
    are added. ``config.json``'s checksums and ``SHA256SUMS`` are then rewritten.

    Raises:
        ModelRefused: If the directory is not sealed, or a file changed that is not in ``updated``.
    """
    updated = set(updated)
    listed = _read_sums(directory)
    for name, digest in listed.items():
        path = directory / name
        if name in updated or not path.is_file():
            continue
        if sha256_of(path) != digest:
            problem = f"{name} changed since the model was sealed (name it in `updated` if that was on purpose)."
            raise _refused(directory, problem)
    _write_seal(directory)


def _write_seal(directory: Path) -> None:
    """Put the checksum of every artifact into config.json, then write SHA256SUMS over every file."""
    config = read_json(directory / CONFIG_FILE)
    config["checksums"] = {
        name: sha256_of(directory / name) for name in artifact_files(directory) if name != CONFIG_FILE
    }
    write_json(directory / CONFIG_FILE, config)
    lines = [f"{sha256_of(directory / name)}  {name}\n" for name in artifact_files(directory)]
    (directory / SUMS_FILE).write_text("".join(lines))


def _read_sums(directory: Path) -> dict[str, str]:
    path = directory / SUMS_FILE
    if not path.is_file():
        raise _refused(directory, f"it has no {SUMS_FILE} file, so its files cannot be checked.")
    sums = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        match = _SUMS_LINE.match(line)
        if match is None:
            raise _refused(directory, f"line {number} of {SUMS_FILE} is not a `sha256sum` line.")
        sums[match.group(2)] = match.group(1)
    return sums


def verify_files(directory: Path, skip_hash: Iterable[str] = ()) -> dict[str, str]:
    """Check a model directory against its ``SHA256SUMS``.

    Args:
        directory: The model directory.
        skip_hash: Files whose presence is checked but whose bytes are not hashed (the catalog skips
            the large ``model.keras``; :func:`load_model_dir` hashes everything).

    Returns:
        The sha256 of every listed file.

    Raises:
        ModelRefused: If ``SHA256SUMS`` is missing or malformed, lists a missing file, does not list
            a file of the directory, or a file does not match its checksum.
    """
    for name in REQUIRED_FILES:
        if not (directory / name).is_file():
            raise _refused(directory, f"its file {name} is missing.")
    sums = _read_sums(directory)
    present = artifact_files(directory)
    for name in present:
        if name not in sums:
            raise _refused(directory, f"{name} is not listed in {SUMS_FILE} (run `seal` after adding a file).")
    skip = set(skip_hash)
    for name, expected in sums.items():
        path = directory / name
        if name not in present:
            raise _refused(directory, f"{name}, listed in {SUMS_FILE}, is missing.")
        if name not in skip and sha256_of(path) != expected:
            raise _refused(
                directory,
                f"{name} does not match its sha256 in {SUMS_FILE}: the file was edited or corrupted "
                f"(expected {expected[:12]}..., got {sha256_of(path)[:12]}...).",
            )
    return sums


def _refused(directory: Path, problem: str) -> ModelRefused:
    return ModelRefused(
        f"The model in models/{directory.name} was refused: {problem} "
        "Restore its folder from the repository or retrain it."
    )


# --- Reading, validating, loading and saving -----------------------------------------------------------


def _read_typed(directory: Path, file_name: str, kind: type[T]) -> T:
    try:
        return from_json(kind, read_json(directory / file_name))
    except SchemaError as error:
        raise _refused(directory, f"in {file_name}, {error}.") from None
    except ValueError as error:
        raise _refused(directory, str(error)) from None


def read_model_dir(directory: Path, verify_model_file: bool = False) -> ModelArtifacts:
    """Read and verify a model directory's JSON (no TensorFlow needed).

    Args:
        directory: The model directory.
        verify_model_file: Also hash ``model.keras`` (the catalog leaves that to :func:`load_model_dir`).

    Raises:
        ModelRefused: If a file is missing, edited or corrupted, or a value is missing or out of range.
    """
    if not directory.is_dir():
        raise ModelRefused(f"The model folder models/{directory.name} does not exist.")
    sums = verify_files(directory, skip_hash=() if verify_model_file else (MODEL_FILE,))
    config = _read_typed(directory, CONFIG_FILE, ModelConfig)
    metrics = _read_typed(directory, METRICS_FILE, ModelMetrics)
    history = read_json(directory / HISTORY_FILE)
    problem = (
        _config_problem(config)
        or _checksums_problem(config, sums)
        or _metrics_problem(config, metrics)
        or _history_problem(history)
    )
    if problem:
        raise _refused(directory, problem)
    return ModelArtifacts(directory=directory, config=config, metrics=metrics, history=tuple(history))


def _config_problem(config: ModelConfig) -> str | None:
    """What is wrong with a config's values, or None."""
    if config.schema_version != SCHEMA_VERSION:
        return f"its config.json has schema version {config.schema_version}, this app reads {SCHEMA_VERSION}."
    data = config.data
    checks = (
        (0.0 < config.threshold < 1.0, f"its threshold {config.threshold:g} is not between 0 and 1."),
        (0.0 < config.min_sensitivity <= 1.0, f"its sensitivity target {config.min_sensitivity:g} is not in (0, 1]."),
        (config.calibration.scale > 0, f"its calibration scale {config.calibration.scale:g} is not positive."),
        (_HEX64.match(data.split_hash) is not None, "its split hash is not a sha256."),
        (set(data.split_sizes) == set(data.split_fractions) == set(SPLITS), "its splits are not train, val, test."),
        (all(n > 0 for n in data.split_sizes.values()), "a split size is not positive."),
        (abs(sum(data.split_fractions.values()) - 1.0) < 1e-6, "its split fractions do not add up to 1."),
        (config.provenance.training_seconds >= 0 and config.parameters > 0, "its training facts are negative."),
    )
    problem = next((message for ok, message in checks if not ok), None)
    return problem or _spec_problem(config.spec)


def _checksums_problem(config: ModelConfig, sums: Mapping[str, str]) -> str | None:
    """Whether config.json's checksums name the same files and digests as SHA256SUMS."""
    if config.checksums != {name: digest for name, digest in sums.items() if name != CONFIG_FILE}:
        return f"the checksums in config.json disagree with {SUMS_FILE}."
    return None


def _spec_problem(summary: SpecSummary) -> str | None:
    """Whether the registry still describes the model the way it was trained."""
    try:
        spec = get_spec(summary.name)
    except ValueError as error:
        return str(error)
    current = spec.to_json()
    for name in CONTRACT_FIELDS:
        recorded = to_json(getattr(summary, name))
        if recorded != current[name]:
            return f"it was trained with {name} = {recorded}, but the registry now says {current[name]}."
    return None


def _metrics_problem(config: ModelConfig, metrics: ModelMetrics) -> str | None:
    if metrics.model != config.spec.name:
        return f"its metrics.json is for the model {metrics.model!r}, not {config.spec.name!r}."
    for part, figures in (("validation", metrics.validation), ("test", metrics.test)):
        if not math.isclose(figures.threshold, config.threshold, rel_tol=0, abs_tol=1e-9):
            return (
                f"its threshold in config.json ({config.threshold:.6g}) is not the one its {part} metrics were "
                f"computed at ({figures.threshold:.6g})."
            )
    return None


def _history_problem(history: object) -> str | None:
    if not isinstance(history, list) or not all(isinstance(row, dict) and "epoch" in row for row in history):
        return "its history.json is not a list of epochs."
    return None


@dataclass(frozen=True)
class LoadedModel:
    """A trained, verified model with everything the app and the CLI need to use it (read-only)."""

    spec: ModelSpec
    model: keras.Model
    config: ModelConfig
    directory: Path
    metrics: ModelMetrics | None = None

    @property
    def threshold(self) -> float:
        """The operating threshold chosen on the validation split."""
        return self.config.threshold

    @property
    def framing(self) -> str:
        """How an image becomes this model's square input, as it was trained (see ``imaging.FRAMINGS``)."""
        return self.config.args.framing

    def square(self, gray: np.ndarray) -> np.ndarray:
        """A decoded grayscale image as this model's square input (its framing, then squashed)."""
        return frame_square(gray, self.spec.input_size, self.framing)

    @functools.cached_property
    def forward(self):
        """The model with its preprocessing, compiled once (see :mod:`pneumo_core.forward`)."""
        from pneumo_core.forward import compiled_forward

        return compiled_forward(self.model, self.spec)

    def predict_squares(self, squares: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Pneumonia probabilities for ``(n, size, size)`` uint8 squares."""
        starts = range(0, len(squares), batch_size)
        probs = [self.forward(squares[start : start + batch_size])[:, 0] for start in starts]
        return np.concatenate(probs) if probs else np.zeros(0, dtype=np.float32)

    def label(self, prob: float) -> str:
        """Class name at the operating threshold."""
        return self.spec.class_names[int(prob >= self.threshold)]


def load_model_dir(directory: Path) -> LoadedModel:
    """Load a model directory after verifying every file and value.

    Raises:
        ModelRefused: If a file is missing, edited or corrupted, a value is missing or out of range,
            or ``model.keras`` cannot be loaded safely (for example a layer that carries code).
    """
    import keras

    found = read_model_dir(directory, verify_model_file=True)
    try:
        model = keras.saving.load_model(directory / MODEL_FILE, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a file it cannot or must not load.
        raise _refused(directory, f"{MODEL_FILE} cannot be loaded safely ({type(error).__name__}).") from error
    return LoadedModel(
        spec=get_spec(found.config.spec.name),
        model=model,
        config=found.config,
        directory=directory,
        metrics=found.metrics,
    )


def save_model_dir(
    directory: Path,
    *,
    model: keras.Model,
    config: ModelConfig,
    metrics: ModelMetrics,
    history: Sequence[Mapping],
    card: str,
    keep: Iterable[str] = (),
) -> Path:
    """Write a complete model directory and seal it; :func:`load_model_dir` reads it back.

    ``config.checksums`` is filled in here (pass an empty dict). The model is saved without
    optimizer state. Everything is validated before anything is written. Other files of an earlier
    model in ``directory`` (``robustness.json``, gate parameters, ...) are removed, since they describe
    another model, except those named in ``keep`` (e.g. the ``tuning.json`` this model's settings came from).

    Returns:
        ``directory``.

    Raises:
        ValueError: If the config or metrics hold an invalid value (nothing is written then).
    """
    problem = _config_problem(config) or _metrics_problem(config, metrics) or _history_problem(to_json(list(history)))
    if problem:
        raise ValueError(f"Not saving {config.spec.name}: {problem}")
    directory.mkdir(parents=True, exist_ok=True)
    for name in artifact_files(directory):
        if name not in REQUIRED_FILES and name not in set(keep):
            LOGGER.warning("Removing %s from %s: it belongs to the model being replaced.", name, directory)
            (directory / name).unlink()
    _save_clean(model, directory / MODEL_FILE)
    write_json(directory / METRICS_FILE, metrics)
    write_json(directory / HISTORY_FILE, list(history))
    (directory / CARD_FILE).write_text(card)
    write_json(directory / CONFIG_FILE, dataclasses.replace(config, checksums={}))
    (directory / SUMS_FILE).unlink(missing_ok=True)
    _write_seal(directory)
    return directory


def _save_clean(model: keras.Model, path: Path) -> None:
    """Save the model without optimizer state (a fresh, uncompiled copy)."""
    import keras

    clean = keras.Model.from_config(model.get_config())
    clean.set_weights(model.get_weights())
    clean.save(path)


def shipped_model_dirs(models_dir: Path = MODELS_DIR) -> dict[str, Path]:
    """Model directories that exist (with a config, a seal or a model file), keyed by name, in registry order."""
    from pneumo_core.registry import model_names

    markers = (CONFIG_FILE, SUMS_FILE, MODEL_FILE)
    return {
        name: models_dir / name
        for name in model_names()
        if any((models_dir / name / marker).is_file() for marker in markers)
    }
