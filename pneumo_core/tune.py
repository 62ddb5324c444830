"""Hyper-parameter search with KerasTuner over a registry model's declared search space.

Bayesian optimisation on small proxy inputs with few epochs per trial. The objective is the
exact ROC AUC (scikit-learn) on the patient-grouped validation split, at the best epoch of
each trial; the test split is never loaded. There is no robustness term yet (the robustness
evaluation does not exist); ``tuning.json`` says so. The first trial runs the untuned
defaults, so every search has a baseline. The train and validation images are decoded once
and shared by all trials.

Trials live in a KerasTuner project directory (``runs/tune/<model>/``): running the command
again with the same proxy settings continues the search (``--max-trials`` counts all trials).
The time budget applies to each run: no trial starts that is not expected to finish in time,
and a trial still running at the deadline is cut short (and marked so). A live summary is
rewritten in the project directory after every trial; at the end the summary (every trial's
settings and score, budget, wall time, proxy settings, best settings, machine) goes to
``<out>/<model>/tuning.json``, and a sealed model directory is re-sealed. ``--budget-minutes 0``
only rewrites the summary. ``train --params`` trains with the best settings.

Usage:
    python -m pneumo_core tune --model cnn --data DIR --max-trials 40 --budget-minutes 80 --proxy-size 64
    python -m pneumo_core train --model cnn --data DIR --params models/cnn/tuning.json
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf
from keras_tuner.engine.trial import Trial, TrialStatus
from sklearn.metrics import roc_auc_score

from pneumo_core import artifacts, data
from pneumo_core.registry import ModelSpec, SearchParam
from pneumo_core.train import class_weights, make_dataset

LOGGER = logging.getLogger(__name__)

TUNING_FILE = "tuning.json"
SESSIONS_FILE = "sessions.json"
OBJECTIVE = "val_roc_auc"
TUNABLE_TRAIN_ARGS = ("learning_rate", "augment_strength")
ROBUSTNESS_NOTE = (
    "No robustness term: the objective is validation ROC AUC alone (validation shares the training pool's "
    "framing shortcuts); a model retrained with the best settings is judged on robustness afterwards "
    "(python -m pneumo_core candidate)."
)


class TuningError(ValueError):
    """A search that cannot run; ``str(error)`` is the user-facing reason."""


@dataclass(frozen=True)
class TuneArgs:
    """Resolved arguments of a search, recorded in ``tuning.json``."""

    model: str
    data: str
    out: str
    run_dir: str
    split_file: str
    max_trials: int = 30
    budget_minutes: float = 85.0
    proxy_size: int = 96
    epochs_per_trial: int = 6
    batch_size: int = 32
    seed: int = data.SPLIT_SEED


@dataclass(frozen=True)
class ProxyData:
    """The decoded, squashed train and validation arrays, loaded once for every trial."""

    squares: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    split_hash: str
    load_seconds: float


def check_searchable(spec: ModelSpec) -> None:
    """Refuse models that declare no search space or parameters ``tune`` cannot apply.

    Raises:
        TuningError: With the reason.
    """
    if not spec.search_space:
        raise TuningError(f"{spec.name} declares no search space in the registry; nothing to tune.")
    if spec.uses_backbone_weights:
        raise TuningError(f"{spec.name} is a transfer model; tune supports models trained from scratch only.")
    unsupported = [p.name for p in spec.search_space if p.target == "train" and p.name not in TUNABLE_TRAIN_ARGS]
    if unsupported:
        raise TuningError(f"tune cannot apply the training parameter(s) {', '.join(unsupported)}.")


def load_proxy_data(args: TuneArgs) -> ProxyData:
    """Decode the train and validation images of the split once, squashed to the proxy size.

    Raises:
        ValueError: If the split file or an image is missing, or a split lacks a class.
    """
    started = time.monotonic()
    split_path = Path(args.split_file)
    frame = data.attach_paths(data.read_split(split_path), Path(args.data))
    squares, targets = {}, {}
    for part in ("train", "val"):
        rows = frame[frame["split"] == part]
        squares[part] = data.load_arrays(rows["path"].tolist(), args.proxy_size)
        targets[part] = data.labels_of(rows)
        if len(np.unique(targets[part])) < 2:
            raise TuningError(f"The {part} split needs images of both classes to tune.")
    seconds = time.monotonic() - started
    LOGGER.info("Loaded %s proxy images in %.0f s", {k: len(v) for k, v in squares.items()}, seconds)
    return ProxyData(squares, targets, data.split_hash(split_path), seconds)


def declare(hp: kt.HyperParameters, param: SearchParam):
    """Declare one registry search parameter on KerasTuner's ``hp`` and return its value."""
    if param.choices:
        return hp.Choice(param.name, list(param.choices), default=param.default, ordered=True)
    sampling = "log" if param.log else "linear"
    return hp.Float(param.name, param.low, param.high, step=param.step, sampling=sampling, default=param.default)


def clean_values(values: dict) -> dict[str, int | float]:
    """Hyper-parameter values as plain JSON numbers (step arithmetic rounded away)."""
    return {name: round(float(value), 8) if isinstance(value, float) else int(value) for name, value in values.items()}


class ProxyHyperModel(kt.HyperModel):
    """Builds the registry model at the proxy input size from a trial's values."""

    def __init__(self, spec: ModelSpec, proxy_size: int):
        super().__init__(name=spec.name)
        self.spec = spec
        self.proxy_size = proxy_size

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        values = {param.name: declare(hp, param) for param in self.spec.search_space}
        model_kwargs = {p.name: values[p.name] for p in self.spec.search_space if p.target == "model"}
        return self.spec.builder(input_size=self.proxy_size, channels=self.spec.channels, **model_kwargs)


class BudgetedOracle(kt.oracles.BayesianOptimizationOracle):
    """Bayesian optimisation that runs the defaults first and starts no trial past the budget."""

    def __init__(self, *, defaults: dict, deadline: float, **kwargs):
        super().__init__(**kwargs)
        self.defaults = defaults
        self.deadline = deadline
        self.trial_seconds: list[float] = []
        self.stopped_by_budget = False

    def has_time_for_a_trial(self) -> bool:
        """Whether the median trial so far still fits before the deadline."""
        expected = statistics.median(self.trial_seconds) if self.trial_seconds else 0.0
        return time.monotonic() + expected < self.deadline

    def create_trial(self, tuner_id):
        if not self.has_time_for_a_trial():
            self.stopped_by_budget = True
            return Trial(self.hyperparameters.copy(), status=TrialStatus.STOPPED)
        return super().create_trial(tuner_id)

    def populate_space(self, trial_id):
        if not self.trials:
            return {"status": TrialStatus.RUNNING, "values": dict(self.defaults)}
        return super().populate_space(trial_id)


class ValidationRocAuc(keras.callbacks.Callback):
    """Exact validation ROC AUC after every epoch, added to the logs as ``val_roc_auc``."""

    def __init__(self, val_input: np.ndarray, val_targets: np.ndarray):
        super().__init__()
        self.val_input = val_input
        self.val_targets = val_targets
        self.scores: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        prob = self.model.predict(self.val_input, batch_size=128, verbose=0)[:, 0]
        score = float(roc_auc_score(self.val_targets, prob)) if np.isfinite(prob).all() else 0.0
        self.scores.append(score)
        if logs is not None:
            logs[OBJECTIVE] = score
        LOGGER.info("epoch %d: loss %.4f, val ROC AUC %.4f", epoch + 1, (logs or {}).get("loss", np.nan), score)


class StopAtDeadline(keras.callbacks.Callback):
    """Stops training at the end of the batch during which the deadline passes."""

    def __init__(self, deadline: float):
        super().__init__()
        self.deadline = deadline
        self.fired = False

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() >= self.deadline:
            self.fired = True
            self.model.stop_training = True


class ProxyTuner(kt.Tuner):
    """Runs each trial on the preloaded proxy arrays and writes the summary after it."""

    def __init__(self, spec: ModelSpec, args: TuneArgs, proxy: ProxyData, session: dict, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        self.args = args
        self.proxy = proxy
        self.session = session
        self.val_input = keras.ops.convert_to_numpy(spec.preprocess(proxy.squares["val"][..., None]))
        self.weights = class_weights(proxy.targets["train"])

    def run_trial(self, trial, *fit_args, **fit_kwargs):
        started = time.monotonic()
        hp = trial.hyperparameters
        keras.utils.set_random_seed(self.args.seed)
        model = self.hypermodel.build(hp)
        settings = {**self.spec.search_defaults(), **hp.values}
        model.compile(optimizer=keras.optimizers.Adam(settings["learning_rate"]), loss="binary_crossentropy")
        train_ds = make_dataset(
            self.proxy.squares["train"],
            self.proxy.targets["train"],
            self.spec,
            self.args.batch_size,
            self.args.seed,
            augment_strength=settings.get("augment_strength", 1.0),
        )
        auc = ValidationRocAuc(self.val_input, self.proxy.targets["val"])
        deadline = StopAtDeadline(self.oracle.deadline)
        model.fit(
            train_ds, epochs=self.args.epochs_per_trial, class_weight=self.weights, callbacks=[auc, deadline], verbose=0
        )
        seconds = time.monotonic() - started
        self.oracle.trial_seconds.append(seconds)
        return {
            OBJECTIVE: max(auc.scores),
            "best_epoch": int(np.argmax(auc.scores)) + 1,
            "epochs_run": len(auc.scores),
            "cut_short_by_budget": float(deadline.fired),
            "seconds": seconds,
            "parameters": float(model.count_params()),
        }

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        self.session["search_seconds"] = round(time.monotonic() - self.session["_started"], 1)
        self.session["trials_run"] += 1
        write_outputs(self, finished=False)


def trial_rows(oracle: kt.Oracle) -> list[dict]:
    """One JSON row per trial of the project, in the order they were created."""
    rows = []
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        metrics = {
            name: trial.metrics.get_last_value(name)
            for name in (OBJECTIVE, "best_epoch", "epochs_run", "cut_short_by_budget", "seconds", "parameters")
            if trial.metrics.exists(name)
        }
        rows.append(
            {
                "trial_id": trial_id,
                "status": str(trial.status),
                "values": clean_values(trial.hyperparameters.values),
                OBJECTIVE: metrics.get(OBJECTIVE),
                "best_epoch": _int_or_none(metrics.get("best_epoch")),
                "epochs_run": _int_or_none(metrics.get("epochs_run")),
                "cut_short_by_budget": bool(metrics.get("cut_short_by_budget", 0.0)),
                "seconds": None if "seconds" not in metrics else round(metrics["seconds"], 1),
                "parameters": _int_or_none(metrics.get("parameters")),
                "error": _last_line(trial.message) if trial.status != TrialStatus.COMPLETED else None,
            }
        )
    return rows


def _last_line(message: str | None) -> str | None:
    return message.strip().splitlines()[-1] if message and message.strip() else None


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


def machine_info() -> dict:
    """Where the search ran: CPU, cores, niceness and library versions."""
    cpu_model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu_model = names[0] if names else cpu_model
    return {
        "platform": platform.platform(),
        "cpu": cpu_model,
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "niceness": os.nice(0) if hasattr(os, "nice") else None,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_tuner": kt.__version__,
    }


def summary(tuner: ProxyTuner, sessions: list[dict]) -> dict:
    """The ``tuning.json`` payload: objective, proxy, budget, sessions, trials and best settings."""
    spec, args = tuner.spec, tuner.args
    trials = trial_rows(tuner.oracle)
    scored = [row for row in trials if row[OBJECTIVE] is not None]
    best = max(scored, key=lambda row: row[OBJECTIVE], default=None)
    baseline = next((row for row in scored if row["values"] == clean_values(spec.search_defaults())), None)
    return {
        "model": spec.name,
        "tuner": f"keras-tuner {kt.__version__} Bayesian optimisation (first trial: the untuned defaults)",
        "objective": {
            "name": OBJECTIVE,
            "direction": "max",
            "description": "exact ROC AUC on the patient-grouped validation split at the trial's best epoch; "
            "the test split is never loaded",
            "robustness_term": None,
            "robustness_note": ROBUSTNESS_NOTE,
        },
        "proxy": {
            "input_size": args.proxy_size,
            "full_input_size": spec.input_size,
            "epochs_per_trial": args.epochs_per_trial,
            "batch_size": args.batch_size,
            "note": f"Trials train at {args.proxy_size}x{args.proxy_size} px (the model uses "
            f"{spec.input_size}x{spec.input_size}) for {args.epochs_per_trial} epochs, without early stopping or "
            "learning-rate reduction, to fit many trials into the budget on a CPU; scores rank settings and are "
            "lower than a full training's.",
        },
        "budget": {"max_trials": args.max_trials, "budget_minutes": args.budget_minutes},
        "wall_seconds": round(sum(s["load_seconds"] + s["search_seconds"] for s in sessions), 1),
        "sessions": [_public(session) for session in sessions],
        "data": {
            "split_file": Path(args.split_file).name,
            "split_hash": tuner.proxy.split_hash,
            "n_train": len(tuner.proxy.targets["train"]),
            "n_val": len(tuner.proxy.targets["val"]),
        },
        "search_space": [param.to_json() for param in spec.search_space],
        "defaults": clean_values(spec.search_defaults()),
        "n_trials": len(trials),
        "n_completed": len(scored),
        "trials": trials,
        "best": None if best is None else {k: best[k] for k in ("trial_id", "values", OBJECTIVE)},
        "baseline": None if baseline is None else {k: baseline[k] for k in ("trial_id", OBJECTIVE)},
        "args": asdict(args),
        "machine": machine_info(),
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_outputs(tuner: ProxyTuner, finished: bool) -> Path:
    """Write ``sessions.json`` and ``tuning.json`` into the project directory; once the search
    has finished, also write ``tuning.json`` beside the model and re-seal a sealed model directory.

    Returns:
        The ``tuning.json`` written last.
    """
    project_dir = Path(tuner.project_dir)
    tuner.session["finished"] = finished
    sessions = [*_read_sessions(project_dir, tuner.session["id"]), tuner.session]
    artifacts.write_json(project_dir / SESSIONS_FILE, [_public(session) for session in sessions])
    payload = summary(tuner, sessions)
    artifacts.write_json(project_dir / TUNING_FILE, payload)
    if not finished:
        return project_dir / TUNING_FILE
    out_dir = Path(tuner.args.out) / tuner.spec.name
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(out_dir / TUNING_FILE, payload)
    if (out_dir / artifacts.SUMS_FILE).is_file():
        artifacts.seal(out_dir, updated=[TUNING_FILE])
    return out_dir / TUNING_FILE


def _public(session: dict) -> dict:
    """A session record without its in-memory clock (keys starting with ``_``)."""
    return {key: value for key, value in session.items() if not key.startswith("_")}


def _read_sessions(project_dir: Path, current_id: str) -> list[dict]:
    """Sessions recorded by earlier runs of this project (the current one excluded)."""
    path = project_dir / SESSIONS_FILE
    if not path.is_file():
        return []
    return [session for session in json.loads(path.read_text()) if session.get("id") != current_id]


def trial_settings(args: TuneArgs) -> dict:
    """What makes two trials' scores comparable: proxy, epochs, batch size, seed and the split."""
    return {
        "proxy_size": args.proxy_size,
        "epochs_per_trial": args.epochs_per_trial,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "split_hash": data.split_hash(Path(args.split_file)) if Path(args.split_file).is_file() else None,
    }


def check_resumable(project_dir: Path, settings: dict) -> None:
    """Refuse to continue a project whose earlier trials ran under other settings.

    Raises:
        TuningError: Naming the differing settings.
    """
    for session in _read_sessions(project_dir, current_id=""):
        earlier = session.get("settings", {})
        differing = sorted(key for key in settings if key in earlier and earlier[key] != settings[key])
        if differing:
            described = ", ".join(f"{key} {earlier[key]} (now {settings[key]})" for key in differing)
            raise TuningError(
                f"The search in {project_dir} ran with {described}; its scores would not be comparable. "
                "Pass the same settings to continue it, or another --run-dir to start a new search."
            )


def tune(spec: ModelSpec, args: TuneArgs) -> Path:
    """Run (or continue) the search for ``spec`` and write its ``tuning.json``.

    Returns:
        The path of ``tuning.json``.

    Raises:
        TuningError: If the model cannot be tuned or the arguments are out of range.
        ValueError: If the split file or the data are missing.
    """
    check_searchable(spec)
    if args.max_trials < 1 or args.epochs_per_trial < 1 or args.budget_minutes < 0:
        raise TuningError("--max-trials and --epochs-per-trial must be positive, --budget-minutes not negative.")
    settings = trial_settings(args)
    check_resumable(Path(args.run_dir) / spec.name, settings)
    proxy = load_proxy_data(args)
    started = time.monotonic()
    oracle = BudgetedOracle(
        defaults=spec.search_defaults(),
        deadline=started + 60.0 * args.budget_minutes,
        objective=kt.Objective(OBJECTIVE, direction="max"),
        max_trials=args.max_trials,
        num_initial_points=max(3, args.max_trials // 3),
        seed=args.seed,
    )
    session = {
        "id": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_seconds": round(proxy.load_seconds, 1),
        "search_seconds": 0.0,
        "trials_run": 0,
        "budget_minutes": args.budget_minutes,
        "max_trials": args.max_trials,
        "settings": settings,
        "_started": started,
    }
    tuner = ProxyTuner(
        spec,
        args,
        proxy,
        session,
        oracle=oracle,
        hypermodel=ProxyHyperModel(spec, args.proxy_size),
        directory=args.run_dir,
        project_name=spec.name,
        overwrite=False,
    )
    oracle.trial_seconds = [row["seconds"] for row in trial_rows(oracle) if row["seconds"] is not None]
    tuner.search(verbose=1)
    session["search_seconds"] = round(time.monotonic() - started, 1)
    session["stopped_by"] = "budget" if oracle.stopped_by_budget else "max_trials"
    path = write_outputs(tuner, finished=True)
    LOGGER.info("Wrote %s (%d trials)", path, len(oracle.trials))
    return path
