"""Integrity of model directories: every edit, missing key or file is refused with a clear reason.

Each test works on a copy of a tiny model trained by the real CLI (``trained_models_dir``). "Re-summed by
hand" means someone edited a file and then rewrote ``SHA256SUMS`` with ``sha256sum`` (bypassing the seal):
the value checks must still refuse what is wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import pytest
from streamlit.testing.v1 import AppTest

from pneumo_core import artifacts
from pneumo_core.artifacts import ModelRefused
from pneumo_core.catalog import best_model, catalog
from pneumo_core.report import refresh_card

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def model_copy(trained_models_dir, tmp_path) -> Path:
    """A private copy of the trained tiny ``cnn`` directory."""
    copy = tmp_path / "models" / "cnn"
    shutil.copytree(trained_models_dir / "cnn", copy)
    return copy


def edit_json(path: Path, change) -> None:
    """Apply ``change`` to the parsed JSON of ``path`` and write it back, as a hand edit would."""
    payload = json.loads(path.read_text())
    change(payload)
    path.write_text(json.dumps(payload, indent=2))


def resum_by_hand(directory: Path) -> None:
    """Rewrite SHA256SUMS over every file, as `sha256sum * > SHA256SUMS` would (config.json untouched)."""
    names = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != "SHA256SUMS")
    lines = [f"{hashlib.sha256((directory / name).read_bytes()).hexdigest()}  {name}\n" for name in names]
    (directory / "SHA256SUMS").write_text("".join(lines))


def refused(directory: Path) -> str:
    """The reason both the catalog reader and the loader give; they must agree."""
    with pytest.raises(ModelRefused) as from_reader:
        artifacts.read_model_dir(directory)
    with pytest.raises(ModelRefused) as from_loader:
        artifacts.load_model_dir(directory)
    assert str(from_reader.value) == str(from_loader.value)
    return str(from_loader.value)


def set_key(key: str, value):
    def change(payload):
        payload[key] = value

    return change


def drop_key(key: str):
    def change(payload):
        del payload[key]

    return change


# --- Edits are detected --------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.5, 0, 7])
def test_edited_threshold_is_refused(model_copy, threshold):
    """Setting the threshold to 0.5, 0 or 7 in config.json is detected by the checksum."""
    edit_json(model_copy / "config.json", set_key("threshold", threshold))
    reason = refused(model_copy)
    assert "config.json does not match its sha256 in SHA256SUMS" in reason
    assert "models/cnn" in reason
    assert str(model_copy.parent) not in reason  # no server path in a user-facing message


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        (0, "its threshold 0 is not between 0 and 1"),
        (7, "its threshold 7 is not between 0 and 1"),
        (0.5, "is not the one its validation metrics were computed at"),
    ],
)
def test_edited_threshold_resummed_by_hand_is_still_refused(model_copy, threshold, expected):
    """With SHA256SUMS recomputed by hand, the value checks catch the edited threshold."""
    edit_json(model_copy / "config.json", set_key("threshold", threshold))
    resum_by_hand(model_copy)
    assert expected in refused(model_copy)


def test_edited_calibration_is_refused(model_copy):
    """A changed calibration scale is detected."""
    edit_json(model_copy / "config.json", lambda config: config["calibration"].update(scale=2.0))
    assert "config.json does not match" in refused(model_copy)


def test_edited_metrics_are_refused(model_copy):
    """A prettier test ROC AUC in metrics.json is detected, also when SHA256SUMS is recomputed by hand."""
    edit_json(model_copy / "metrics.json", lambda metrics: metrics["test"].update(roc_auc=0.999))
    assert "metrics.json does not match its sha256 in SHA256SUMS" in refused(model_copy)
    resum_by_hand(model_copy)
    assert "the checksums in config.json disagree with SHA256SUMS" in refused(model_copy)


def test_edited_card_and_history_are_refused(model_copy):
    """Every artifact is covered, not only the model and the config."""
    (model_copy / "card.md").write_text((model_copy / "card.md").read_text() + "\nValidated on adults.\n")
    assert "card.md does not match" in refused(model_copy)


# --- Missing keys and files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (drop_key("threshold"), "in config.json, the key 'threshold' is missing"),
        (drop_key("checksums"), "in config.json, the key 'checksums' is missing"),
        (lambda config: config["data"].pop("split_hash"), "the key 'data.split_hash' is missing"),
        (set_key("threshold", "0.85"), "'threshold' should be float, not str"),
        (set_key("threshold", None), "'threshold' should be float, not null"),
        (set_key("gate", {}), "the key 'gate' is not expected"),
        (lambda config: config["calibration"].update(scale=-1.0), "its calibration scale -1 is not positive"),
        (lambda config: config["spec"].update(input_size=64), "trained with input_size = 64, but the registry"),
        (lambda config: config["spec"].update(name="resnet"), "Unknown model 'resnet'"),
    ],
)
def test_bad_config_resummed_by_hand_is_refused(model_copy, change, expected):
    """A missing or mistyped key gives a refusal naming it, never a KeyError or TypeError."""
    edit_json(model_copy / "config.json", change)
    resum_by_hand(model_copy)
    assert expected in refused(model_copy)


def test_config_that_is_not_json_is_refused(model_copy):
    """A truncated config.json is refused as invalid JSON."""
    (model_copy / "config.json").write_text('{"threshold": 0.5')
    resum_by_hand(model_copy)
    assert "config.json is not valid JSON" in refused(model_copy)


def test_missing_sums_file_is_refused(model_copy):
    """Without SHA256SUMS nothing can be checked, so the model is refused."""
    (model_copy / "SHA256SUMS").unlink()
    assert "it has no SHA256SUMS file" in refused(model_copy)


def test_malformed_sums_file_is_refused(model_copy):
    """A SHA256SUMS line that is not `<64 hex>  <name>` is refused."""
    (model_copy / "SHA256SUMS").write_text("not a checksum line\n")
    assert "line 1 of SHA256SUMS is not a `sha256sum` line" in refused(model_copy)


@pytest.mark.parametrize("file_name", ["metrics.json", "history.json", "card.md"])
def test_missing_artifact_is_refused(model_copy, file_name):
    """Each required file missing is refused with its name."""
    (model_copy / file_name).unlink()
    assert f"its file {file_name} is missing" in refused(model_copy)


def test_unsealed_new_file_is_refused_until_sealed(model_copy):
    """A file added without seal() is refused; after seal() it is covered and the model loads."""
    (model_copy / "gate.json").write_text('{"ood_threshold": 3.0}\n')
    assert "gate.json is not listed in SHA256SUMS" in refused(model_copy)
    artifacts.seal(model_copy)
    loaded = artifacts.load_model_dir(model_copy)
    assert loaded.config.checksums["gate.json"] == artifacts.sha256_of(model_copy / "gate.json")
    (model_copy / "gate.json").write_text('{"ood_threshold": 99.0}\n')
    assert "gate.json does not match" in refused(model_copy)
    artifacts.seal(model_copy, updated=["gate.json"])
    artifacts.read_model_dir(model_copy)


def test_seal_never_blesses_an_accidental_edit(model_copy):
    """Sealing after adding a file refuses when another file was edited meanwhile."""
    edit_json(model_copy / "config.json", set_key("threshold", 0.5))
    (model_copy / "robustness.json").write_text("{}\n")
    with pytest.raises(ModelRefused, match=r"config.json changed since the model was sealed"):
        artifacts.seal(model_copy)


def test_refresh_card_reseals_and_refuses_an_edited_directory(model_copy):
    """`report` re-renders the card and re-seals; on an edited directory it refuses instead of sealing."""
    (model_copy / "card.md").write_text("stale card\n")
    artifacts.seal(model_copy, updated=["card.md"])
    refresh_card(model_copy)
    assert "not a medical device" in (model_copy / "card.md").read_text()
    artifacts.load_model_dir(model_copy)
    edit_json(model_copy / "config.json", set_key("threshold", 0.5))
    with pytest.raises(ModelRefused, match=r"config.json does not match"):
        refresh_card(model_copy)


def test_sums_file_is_sha256sum_compatible(model_copy):
    """`sha256sum -c SHA256SUMS` accepts the file the seal writes."""
    (model_copy / "extra").mkdir()
    (model_copy / "extra" / "gate.npz").write_bytes(b"\x00\x01")
    artifacts.seal(model_copy)
    assert "extra/gate.npz" in (model_copy / "SHA256SUMS").read_text()
    checked = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=model_copy, capture_output=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    artifacts.load_model_dir(model_copy)


def test_model_carrying_code_is_refused(model_copy):
    """A model.keras with a Lambda layer (code) is refused by safe_mode even when properly sealed."""
    inputs = keras.Input((160, 160, 1))
    outputs = keras.layers.Dense(1, activation="sigmoid", name="pneumonia")(
        keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=(1, 2)))(inputs)
    )
    keras.Model(inputs, outputs).save(model_copy / "model.keras")
    artifacts.seal(model_copy, updated=["model.keras"])
    artifacts.read_model_dir(model_copy, verify_model_file=True)
    with pytest.raises(ModelRefused, match=r"model.keras cannot be loaded safely"):
        artifacts.load_model_dir(model_copy)


def test_save_model_dir_refuses_invalid_values(trained_models_dir, tmp_path):
    """save_model_dir validates before writing: a threshold of 7 writes nothing."""
    loaded = artifacts.load_model_dir(trained_models_dir / "mlp")
    config = dataclasses.replace(loaded.config, threshold=7.0)
    target = tmp_path / "mlp"
    with pytest.raises(ValueError, match=r"threshold 7 is not between 0 and 1"):
        artifacts.save_model_dir(
            target, model=loaded.model, config=config, metrics=loaded.metrics, history=[], card="card"
        )
    assert not target.exists()


def test_save_and_load_round_trip(trained_models_dir, tmp_path):
    """save_model_dir writes a sealed directory (dropping the replaced model's extra files) that reads back equal."""
    loaded = artifacts.load_model_dir(trained_models_dir / "mlp")
    history = artifacts.read_model_dir(trained_models_dir / "mlp").history
    target = tmp_path / "mlp"
    shutil.copytree(trained_models_dir / "mlp", target)
    (target / "robustness.json").write_text("{}\n")  # describes the model being replaced
    (target / "tuning.json").write_text("{}\n")  # where the new model's settings came from
    artifacts.save_model_dir(
        target,
        model=loaded.model,
        config=loaded.config,
        metrics=loaded.metrics,
        history=history,
        card="# card\n",
        keep=["tuning.json"],
    )
    again = artifacts.load_model_dir(target)
    assert again.metrics == loaded.metrics
    assert dataclasses.replace(again.config, checksums={}) == dataclasses.replace(loaded.config, checksums={})
    assert set(again.config.checksums) == {"model.keras", "metrics.json", "history.json", "card.md", "tuning.json"}
    assert not (target / "robustness.json").exists()


# --- The catalog and the pages carry on ----------------------------------------------------------------


@pytest.fixture
def models_with_one_refused(trained_models_dir, tmp_path) -> Path:
    """A models folder with a good ``mlp`` and a ``cnn`` whose threshold was edited to 0.5."""
    models = tmp_path / "models"
    for name in ("cnn", "mlp"):
        shutil.copytree(trained_models_dir / name, models / name)
    edit_json(models / "cnn" / "config.json", set_key("threshold", 0.5))
    return models


def test_catalog_lists_a_refused_model_with_its_reason(models_with_one_refused):
    """The catalog does not raise: the refused model carries its reason, the others are usable."""
    entries = {entry.name: entry for entry in catalog(models_with_one_refused)}
    assert entries["cnn"].refused and not entries["cnn"].shipped
    assert "config.json does not match" in entries["cnn"].refused_reason
    assert entries["cnn"].unavailable_reason == entries["cnn"].refused_reason
    assert entries["mlp"].shipped and not entries["mlp"].refused
    assert best_model(list(entries.values())).name == "mlp"
    assert not entries["densenet201"].refused


def test_catalog_refuses_a_folder_holding_another_model(trained_models_dir, tmp_path):
    """A cnn directory copied into models/mlp is refused for mlp."""
    shutil.copytree(trained_models_dir / "cnn", tmp_path / "mlp")
    entry = {entry.name: entry for entry in catalog(tmp_path)}["mlp"]
    assert "holds the model 'cnn', not 'mlp'" in entry.refused_reason


@pytest.mark.parametrize("page", ["pages/compare.py", "pages/cards.py"])
def test_pages_show_a_refusal_and_carry_on(models_with_one_refused, monkeypatch, page):
    """Compare and Cards show the refusal as an error and still show the other model."""
    monkeypatch.setenv("PNEUMO_MODELS_DIR", str(models_with_one_refused))
    at = AppTest.from_file(str(REPO_ROOT / page), default_timeout=60).run()
    assert not at.exception, at.exception
    assert any("config.json does not match" in error.value for error in at.error)
    if page.endswith("compare.py"):
        assert list(at.dataframe[0].value.index) == ["mlp"]
    else:
        assert any("Model card: `mlp`" in markdown.value for markdown in at.markdown)


NO_TENSORFLOW = """
import sys
from streamlit.testing.v1 import AppTest
import pneumo_core.catalog, pneumo_core.figures, pneumo_core.report
for page in ("pages/compare.py", "pages/cards.py", "pages/diagnose.py"):  # Diagnose before any image.
    at = AppTest.from_file(page, default_timeout=60).run()
    assert not at.exception, at.exception
    assert not at.error, [error.value for error in at.error]
loaded = sorted(name for name in ("tensorflow", "keras", "tf_keras_vis") if name in sys.modules)
print("loaded:", loaded)
sys.exit(1 if loaded else 0)
"""


def test_catalog_and_json_pages_import_no_tensorflow(trained_models_dir):
    """Catalog, figures, report, Compare, Cards and the Diagnose page before an image import no TensorFlow."""
    env = {**os.environ, "PNEUMO_MODELS_DIR": str(trained_models_dir), "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
