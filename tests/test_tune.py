"""Hyper-parameter search: the registry's search space, a real 2-trial KerasTuner search on tiny
synthetic images, resuming it, the time budget, and ``train --params``."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import keras
import pytest

from pneumo_core import models, tune, tuning_figures
from pneumo_core.__main__ import main
from pneumo_core.registry import SearchParam, get_spec
from pneumo_core.train import TrainArgs, read_params, with_params

PROXY_SIZE = 32


@pytest.fixture(scope="module")
def tuning_work(tmp_path_factory, synthetic_dataset) -> dict[str, Path]:
    """A split of the synthetic dataset and the folders a search writes to."""
    work = tmp_path_factory.mktemp("tuning")
    split_file = work / "split.csv"
    assert main(["split", "--data", str(synthetic_dataset), "--out", str(split_file)]) == 0
    return {"data": synthetic_dataset, "split": split_file, "models": work / "models", "runs": work / "runs"}


def tune_argv(work: dict[str, Path], max_trials: int, budget_minutes: float = 10.0, proxy: int = PROXY_SIZE):
    """The command line of a search on the synthetic images, one epoch per trial."""
    argv = ["tune", "--model", "cnn", "--data", str(work["data"]), "--split-file", str(work["split"])]
    argv += ["--out", str(work["models"]), "--run-dir", str(work["runs"]), "--proxy-size", str(proxy)]
    return [*argv, "--epochs-per-trial", "1", "--max-trials", str(max_trials), "--budget-minutes", str(budget_minutes)]


def run_tune(work: dict[str, Path], max_trials: int, budget_minutes: float = 10.0) -> dict:
    """Run the real ``tune`` command on the synthetic images and return its tuning.json."""
    assert main(tune_argv(work, max_trials, budget_minutes)) == 0
    return json.loads((work["models"] / "cnn" / tune.TUNING_FILE).read_text())


@pytest.fixture(scope="module")
def first_search(tuning_work) -> dict:
    """tuning.json after a 2-trial search."""
    return run_tune(tuning_work, max_trials=2)


def test_cnn_builder_defaults_are_the_registry_defaults():
    """The shipped cnn is the untuned point of its search space: builder defaults equal registry defaults."""
    spec = get_spec("cnn")
    signature = inspect.signature(models.build_cnn).parameters
    for param in spec.search_space:
        if param.target == "model":
            assert signature[param.name].default == param.default, param.name
    assert spec.search_defaults()["learning_rate"] == spec.train.learning_rate


def test_build_cnn_follows_its_hyper_parameters():
    """Depth, filters and dense width change the built model."""
    model = models.build_cnn(input_size=32, channels=1, base_filters=16, depth=3, dense_units=32)
    convs = [layer for layer in model.layers if layer.name.endswith("_conv")]
    assert [layer.filters for layer in convs] == [16, 32, 48]
    assert model.get_layer("head_dense1").units == 32
    with pytest.raises(ValueError, match="too small"):
        models.build_cnn(input_size=8, channels=1, depth=6)


def test_search_param_rejects_a_default_outside_its_range():
    """A search parameter whose default is not one of its values is a clear ValueError."""
    with pytest.raises(ValueError, match="not a choice"):
        SearchParam("depth", default=7, target="model", choices=(3, 4))
    with pytest.raises(ValueError, match="low <= default <= high"):
        SearchParam("dropout", default=0.9, target="model", low=0.0, high=0.5)


def test_two_trial_search_writes_tuning_json(first_search):
    """A 2-trial search records both trials, the defaults first, the best one, proxy, budget and machine."""
    summary = first_search
    assert summary["model"] == "cnn"
    assert summary["n_trials"] == summary["n_completed"] == 2
    trials = summary["trials"]
    assert [trial["status"] for trial in trials] == ["COMPLETED", "COMPLETED"]
    assert trials[0]["values"] == summary["defaults"] == tune.clean_values(get_spec("cnn").search_defaults())
    assert trials[1]["values"] != trials[0]["values"]
    for trial in trials:
        assert 0.0 <= trial["val_roc_auc"] <= 1.0
        assert trial["epochs_run"] == trial["best_epoch"] == 1
        assert trial["seconds"] > 0 and not trial["cut_short_by_budget"]
        assert set(trial["values"]) == {param.name for param in get_spec("cnn").search_space}
    best = max(trials, key=lambda trial: trial["val_roc_auc"])
    assert summary["best"] == {
        "trial_id": best["trial_id"],
        "values": best["values"],
        "val_roc_auc": best["val_roc_auc"],
    }
    assert summary["baseline"]["trial_id"] == trials[0]["trial_id"]
    objective = summary["objective"]
    assert objective["name"] == "val_roc_auc" and "validation" in objective["description"]
    assert objective["robustness_term"] is None and "judged on robustness afterwards" in objective["robustness_note"]
    assert summary["proxy"]["input_size"] == PROXY_SIZE and summary["proxy"]["full_input_size"] == 160
    assert summary["proxy"]["epochs_per_trial"] == 1
    assert summary["budget"] == {"max_trials": 2, "budget_minutes": 10.0}
    assert summary["sessions"][0]["stopped_by"] == "max_trials" and summary["sessions"][0]["finished"]
    assert summary["wall_seconds"] > 0
    assert summary["data"]["n_val"] > 0 and summary["data"]["n_train"] > 0
    assert {"cpu", "usable_cpus", "tensorflow", "keras_tuner"} <= set(summary["machine"])


def test_search_resumes_and_stops_at_the_budget(tuning_work, first_search, capsys):
    """Rerunning continues the same project; a spent budget starts no trial; other proxy settings are refused."""
    resumed = run_tune(tuning_work, max_trials=3)
    assert resumed["n_trials"] == 3
    assert resumed["trials"][:2] == first_search["trials"]
    assert len(resumed["sessions"]) == 2
    no_time = run_tune(tuning_work, max_trials=10, budget_minutes=0)
    assert no_time["n_trials"] == 3
    assert no_time["sessions"][-1]["stopped_by"] == "budget"
    assert no_time["sessions"][-1]["trials_run"] == 0
    assert main(tune_argv(tuning_work, max_trials=10, proxy=PROXY_SIZE * 2)) == 2
    assert "would not be comparable" in capsys.readouterr().err


def test_train_params_take_the_best_settings(tuning_work, first_search):
    """``train --params tuning.json`` resolves the best values into model and training arguments."""
    values = read_params(tuning_work["models"] / "cnn" / tune.TUNING_FILE)
    assert values == first_search["best"]["values"]
    base = TrainArgs(
        model="cnn", data="d", out="o", epochs=1, fine_tune_epochs=0, batch_size=8, learning_rate=1e-3,
        fine_tune_learning_rate=1e-5, fine_tune_from=None, backbone_weights=None, split_file="s", seed=1,
        patience=1, run_dir="r",
    )  # fmt: skip
    resolved = with_params(base, get_spec("cnn"), values)
    assert resolved.learning_rate == values["learning_rate"]
    assert resolved.augment_strength == values["augment_strength"]
    assert resolved.model_params == {k: values[k] for k in ("base_filters", "depth", "dropout", "dense_units")}
    with pytest.raises(ValueError, match="no hyper-parameter width"):
        with_params(base, get_spec("cnn"), {"width": 3})


def test_tune_refuses_a_model_without_search_space(tuning_work, capsys):
    """mlp declares no search space: the CLI says so and exits with 2."""
    argv = ["tune", "--model", "mlp", "--data", str(tuning_work["data"]), "--split-file", str(tuning_work["split"])]
    assert main(argv) == 2
    assert "declares no search space" in capsys.readouterr().err


def test_tuning_table_and_parallel_coordinates(tuning_work, first_search):
    """The Compare page's table and figure show every trial, best first, from tuning.json alone."""
    tuning = tuning_figures.read_tuning(tuning_work["models"] / "cnn")
    table = tuning_figures.tuning_table(tuning)
    assert len(table) == tuning["n_trials"]
    assert table.index[0] == tuning["best"]["trial_id"] and "best" in table.iloc[0]["note"]
    assert table[tuning_figures.SCORE_LABEL].is_monotonic_decreasing
    assert {param.name for param in get_spec("cnn").search_space} <= set(table.columns)
    figure = tuning_figures.parallel_coordinates_figure(tuning)
    dimensions = figure.data[0].dimensions
    assert [dim.label for dim in dimensions][-1] == tuning_figures.SCORE_LABEL
    assert "learning_rate (log)" in [dim.label for dim in dimensions]
    assert len(dimensions[0].values) == tuning["n_completed"]
    caption = tuning_figures.tuning_caption(tuning)
    assert f"{PROXY_SIZE}x{PROXY_SIZE} px" in caption and "robustness" in caption
    section = tuning_figures.tuning_markdown(tuning)
    assert section.startswith("## Hyper-parameter search") and "| depth | 5 |" in section
    assert tuning_figures.read_tuning(tuning_work["data"]) is None


def test_train_with_params_builds_the_best_model(tuning_work, first_search, tmp_path):
    """``train --params tuning.json`` trains the best trial's architecture and records its settings."""
    tuning_file = tuning_work["models"] / "cnn" / tune.TUNING_FILE
    best = read_params(tuning_file)
    argv = [
        "train",
        "--model",
        "cnn",
        "--data",
        str(tuning_work["data"]),
        "--epochs",
        "1",
        "--params",
        str(tuning_file),
    ]
    argv += ["--split-file", str(tuning_work["split"]), "--out", str(tmp_path / "models"), "--run-dir", str(tmp_path)]
    assert main(argv) == 0
    config = json.loads((tmp_path / "models" / "cnn" / "config.json").read_text())
    assert config["args"]["model_params"] == {k: best[k] for k in ("base_filters", "depth", "dropout", "dense_units")}
    assert config["args"]["learning_rate"] == best["learning_rate"]
    assert config["args"]["augment_strength"] == best["augment_strength"]
    model = keras.saving.load_model(tmp_path / "models" / "cnn" / "model.keras", compile=False)
    convs = [layer for layer in model.layers if layer.name.endswith("_conv")]
    assert len(convs) == best["depth"] and convs[0].filters == best["base_filters"]
