"""The bacterial-vs-viral head: fitted on frozen features, sealed with the model, shown only for pneumonia.

The fitting maths runs on synthetic features; the files, the Reader, Grad-CAM, the CLI and the pages run on a
copy of the tiny ``cnn`` from conftest with a head fitted by ``fit-subtype`` on the synthetic dataset.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import jpeg_bytes, synthetic_xray
from pdf_support import pdf_text, require_poppler
from streamlit.runtime.state.common import user_key_from_element_id
from streamlit.testing.v1 import AppTest

from pneumo_core import artifacts
from pneumo_core.__main__ import main
from pneumo_core.case_report import render_case_report
from pneumo_core.catalog import catalog
from pneumo_core.gradcam import overlay
from pneumo_core.imaging import read_xray, read_xray_file
from pneumo_core.reading import Reader, Reading
from pneumo_core.subtype import (
    L2_GRID,
    SUBTYPE_FILE,
    SUBTYPE_FILES,
    NotEnoughSubtypes,
    SplitFeatures,
    SubtypeReading,
    default_band,
    feature_network,
    fit,
    load_subtype_params,
    read_subtype_settings,
    three_class_figures,
)

APP = Path(__file__).resolve().parent.parent / "app.py"


def synthetic_split(rng: np.random.Generator, n_normal: int, n_bacteria: int, n_virus: int) -> SplitFeatures:
    """Features where bacteria and virus differ along the first ``head`` and ``pooled`` dimensions."""
    subtype = np.array(["normal"] * n_normal + ["bacteria"] * n_bacteria + ["virus"] * n_virus, dtype=object)
    sign = np.select([subtype == "bacteria", subtype == "virus"], [1.0, -1.0], 0.0)
    head = rng.normal(0, 1, (len(subtype), 4))
    head[:, 0] += 1.5 * sign
    pooled = rng.normal(0, 1, (len(subtype), 6))
    pooled[:, 0] += 1.0 * sign
    probability = np.where(
        subtype == "normal", rng.uniform(0.0, 0.4, len(subtype)), rng.uniform(0.6, 1.0, len(subtype))
    )
    return SplitFeatures(probability=probability, features={"head": head, "pooled": pooled}, subtype=subtype)


def test_fit_chooses_on_validation_and_measures_both_splits():
    """Every (feature set, C) is tried; the head separates the subtypes; the figures have the documented shape."""
    rng = np.random.default_rng(0)
    train, val, test = (synthetic_split(rng, 100, 200, 100) for _ in range(3))
    params = fit("cnn", "last_conv_act", train, val, test, threshold=0.5, split_hash="0" * 64)
    settings = params.settings
    assert len(settings.candidates) == 3 * len(L2_GRID)
    best = max(settings.candidates, key=lambda c: c.val_roc_auc)
    assert settings.validation.pneumonia.roc_auc == pytest.approx(best.val_roc_auc, abs=0.01)
    assert settings.features in ("pooled+head", "head") and params.weights.shape == (settings.feature_dims,)
    assert settings.test.pneumonia.roc_auc > 0.85 and settings.test.pneumonia.accuracy > 0.75
    assert settings.fitted_on.train_by_subtype == {"bacteria": 200, "virus": 100}
    three = settings.test.three_class
    assert three.classes == ("normal", "bacteria", "virus") and len(three.confusion) == 3
    assert sum(map(sum, three.confusion)) == 400 and three.by_class["normal"].sensitivity == 1.0
    assert 0.5 < three.macro_roc_auc <= 1.0
    assert settings.calibration.method in ("none", "platt (validation split)")


def test_fit_without_a_grad_cam_layer_uses_the_head_features_only():
    """The MLP has no Grad-CAM layer: only the output layer's input is offered."""
    rng = np.random.default_rng(1)
    train, val = synthetic_split(rng, 0, 40, 40), synthetic_split(rng, 0, 20, 20)
    params = fit("mlp", None, train, val, None, threshold=0.5, split_hash="0" * 64)
    assert {c.features for c in params.settings.candidates} == {"head"}
    assert params.settings.pooled_layer is None and params.settings.test is None


def test_too_few_subtypes_are_refused_with_a_reason():
    """A training split with a single viral image cannot give a head."""
    rng = np.random.default_rng(2)
    with pytest.raises(NotEnoughSubtypes, match="1 virus"):
        fit("cnn", "x", synthetic_split(rng, 5, 5, 1), synthetic_split(rng, 5, 5, 5), None, 0.5, "0" * 64)


def test_three_class_view_at_the_threshold():
    """NORMAL below the threshold, else the more likely subtype; sensitivity and precision per class."""
    probability = np.array([0.1, 0.9, 0.9, 0.9, 0.2, 0.8])
    bacteria = np.array([0.9, 0.7, 0.3, 0.6, 0.1, 0.4])
    truth = np.array(["normal", "bacteria", "virus", "virus", "bacteria", "virus"], dtype=object)
    figures = three_class_figures(probability, bacteria, truth, threshold=0.5)
    assert figures.confusion == ((1, 0, 0), (1, 1, 0), (0, 1, 2))
    assert figures.by_class["virus"].sensitivity == pytest.approx(2 / 3)
    assert figures.by_class["bacteria"].precision == pytest.approx(1 / 2)
    assert figures.accuracy == pytest.approx(4 / 6)


def test_subtype_reading_names_a_subtype_only_outside_the_band():
    """Calibrated probabilities sum to one; inside the band the call is "uncertain"."""
    band = default_band()
    assert SubtypeReading(0.8, band).call == "bacteria"
    assert SubtypeReading(0.2, band).call == "virus"
    middle = SubtypeReading(0.55, band)
    assert middle.uncertain and middle.call == "uncertain"
    assert sum(middle.probabilities().values()) == pytest.approx(1.0)


# --- A head on the tiny cnn ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def subtype_models(trained_models_dir, synthetic_dataset, tmp_path_factory) -> Path:
    """A models folder with the tiny cnn plus a head fitted by the CLI, and the tiny mlp without one."""
    models_dir = tmp_path_factory.mktemp("subtype") / "models"
    for name in ("cnn", "mlp"):
        shutil.copytree(trained_models_dir / name, models_dir / name)
    split_file = trained_models_dir.parent / "split.csv"
    argv = ["fit-subtype", "--model", "cnn", "--data", str(synthetic_dataset), "--models-dir", str(models_dir)]
    assert main([*argv, "--split-file", str(split_file)]) == 0
    return models_dir


@pytest.fixture(scope="module")
def reader(subtype_models) -> Reader:
    """The Reader of the cnn with its head."""
    return Reader(artifacts.load_model_dir(subtype_models / "cnn"))


def synthetic_images(dataset: Path) -> list:
    """Every image of the synthetic dataset, decoded."""
    return [read_xray_file(path) for path in sorted(dataset.glob("*/*.jpeg"))]


def test_fitted_head_is_sealed_and_on_the_card(subtype_models):
    """fit-subtype writes subtype.npz and subtype.json, sealed; the card gets its section."""
    directory = subtype_models / "cnn"
    loaded = artifacts.load_model_dir(directory)
    assert set(SUBTYPE_FILES) <= set(loaded.config.checksums)
    settings = read_subtype_settings(directory)
    assert settings.model == "cnn" and settings.threshold == loaded.threshold
    assert settings.fitted_on.split_hash == loaded.config.data.split_hash
    assert "## Bacterial or viral" in (directory / "card.md").read_text()
    assert read_subtype_settings(subtype_models / "mlp") is None


def test_readme_table_summarises_each_head(subtype_models):
    """The README's subtype block has the head's test figures, and says so of a model without a head."""
    from pneumo_core.report import subtype_table

    table = subtype_table(subtype_models)
    test = read_subtype_settings(subtype_models / "cnn").test
    assert test is not None
    counts = test.pneumonia
    assert f"| `cnn` | {counts.n} ({counts.n_bacteria} bacterial, {counts.n_virus} viral) |" in table
    assert "| `mlp` | no head |" in table


def test_tampered_subtype_json_is_refused(subtype_models, tmp_path):
    """An edited subtype.json makes the model refuse to load, with or without SHA256SUMS rewritten by hand."""
    copy = tmp_path / "cnn"
    shutil.copytree(subtype_models / "cnn", copy)
    path = copy / SUBTYPE_FILE
    path.write_text(path.read_text().replace('"high": 0.65', '"high": 0.95'))
    with pytest.raises(artifacts.ModelRefused, match=SUBTYPE_FILE):
        artifacts.load_model_dir(copy)
    assert next(entry for entry in catalog(tmp_path) if entry.name == "cnn").refused
    with pytest.raises(artifacts.ModelRefused, match="does not match its checksum"):
        load_subtype_params(copy, artifacts.read_json(copy / "config.json")["checksums"])


def test_head_in_the_graph_matches_the_fitted_weights(reader, synthetic_dataset):
    """The Dense head on the model's graph gives the q of the numpy head on extracted features, and the same p."""
    squares = np.stack([reader.loaded.square(xray.gray) for xray in synthetic_images(synthetic_dataset)[:8]])
    probabilities, bacteria, gate_features = reader.subtype.forward(squares)
    settings = reader.subtype.settings
    sources = settings.features.split("+")
    outputs = feature_network(reader.loaded, sources)(squares)
    numpy_q = reader.subtype.params.bacteria(np.concatenate(outputs[1:], axis=1))
    np.testing.assert_allclose(bacteria, numpy_q, atol=1e-4)
    np.testing.assert_allclose(probabilities, reader.loaded.predict_squares(squares), atol=1e-5)
    assert gate_features.shape == (8, 0)  # the tiny cnn has no gate


def test_reader_gives_a_subtype_to_pneumonia_readings_only(reader, synthetic_dataset):
    """A subtype exactly when the reading is an accepted PNEUMONIA; its probabilities are in [0, 1]."""
    readings = reader.read_many(synthetic_images(synthetic_dataset))
    for reading in readings:
        assert (reading.subtype is not None) == (reading.accepted and reading.label == "PNEUMONIA")
        if reading.subtype is not None:
            assert 0.0 <= reading.subtype.bacteria <= 1.0
    normal = Reading(model="cnn", threshold=0.5, probability=0.1, label="NORMAL")
    assert normal.subtype_fields() == {"subtype": None, "subtype_probabilities": None}


def test_grad_cam_explains_either_subtype(reader, synthetic_dataset):
    """Grad-CAM of the subtype logit: a map in [0, 1] per subtype; an unknown target is refused."""
    xray = synthetic_images(synthetic_dataset)[-1]
    for target in ("bacteria", "virus"):
        heat = reader.heatmap(xray, "Grad-CAM", target)
        assert heat.shape == (160, 160) and 0.0 <= heat.min() <= heat.max() <= 1.0
    with pytest.raises(ValueError, match="Cannot explain"):
        reader.heatmap(xray, "Grad-CAM", "fungal")


def predict_rows(capsys, models_dir: Path, model: str, images: list[str], extra: tuple[str, ...] = ()) -> list[dict]:
    """Run ``predict --json`` and parse its lines."""
    main(["predict", "--model", model, "--models-dir", str(models_dir), "--json", *extra, *images])
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_predict_json_and_csv_carry_the_subtype(subtype_models, synthetic_dataset, capsys, tmp_path):
    """predict --json: subtype and subtype_probabilities, null unless PNEUMONIA; --csv: the same, flattened."""
    out = tmp_path / "out.csv"
    rows = predict_rows(capsys, subtype_models, "cnn", [str(synthetic_dataset)], ("--csv", str(out)))
    assert len(rows) == len(list(synthetic_dataset.glob("*/*.jpeg")))
    for row in rows:
        if row["label"] == "PNEUMONIA":
            assert row["subtype"] in ("bacteria", "virus", "uncertain")
            assert set(row["subtype_probabilities"]) == {"bacteria", "virus"}
            assert sum(row["subtype_probabilities"].values()) == pytest.approx(1.0)
        else:
            assert row["subtype"] is None and row["subtype_probabilities"] is None
    with out.open() as handle:
        table = list(csv.DictReader(handle))
    assert {"subtype", "subtype_probability_bacteria", "subtype_probability_virus"} <= set(table[0])
    assert [r["subtype"] or None for r in table] == [row["subtype"] for row in rows]
    without_head = predict_rows(capsys, subtype_models, "mlp", [str(synthetic_dataset)])
    assert all(row["subtype"] is None and row["subtype_probabilities"] is None for row in without_head)


def test_case_report_has_a_subtype_line(subtype_models, reader):
    """The PDF states the subtype in one line when the reading has one."""
    require_poppler()
    entry = next(entry for entry in catalog(subtype_models) if entry.name == "cnn")
    gray = synthetic_xray(np.random.default_rng(0), bright=True)
    reading = Reading(
        model="cnn", threshold=0.5, probability=0.9, label="PNEUMONIA", subtype=reader.subtype.reading(0.8)
    )
    pdf = render_case_report(
        entry=entry, reading=reading, image=gray, overlay=overlay(gray, np.zeros((8, 8))), method="Grad-CAM",
        explained="BACTERIAL (vs viral)",
    )  # fmt: skip
    text = " ".join(pdf_text(pdf).split())
    assert "Bacterial or viral" in text and "more likely bacterial" in text


# --- Pages ------------------------------------------------------------------------------------------


@pytest.fixture
def app(subtype_models, monkeypatch) -> AppTest:
    """The app on the Diagnose page, with the tiny cnn (with a head) and mlp (without)."""
    monkeypatch.setenv("PNEUMO_MODELS_DIR", str(subtype_models))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def subtype_block_shown(at: AppTest) -> bool:
    """Whether the page shows the subtype summary."""
    return any(markdown.value.startswith("**Subtype:") for markdown in at.markdown)


def pneumonia_upload(reader: Reader, dataset: Path) -> tuple[str, bytes, str]:
    """A synthetic image the cnn reads as PNEUMONIA, as an upload."""
    for path in sorted(dataset.glob("PNEUMONIA/*.jpeg")):
        if reader.read(read_xray(path.read_bytes())).label == "PNEUMONIA":
            return ("upload.jpeg", path.read_bytes(), "image/jpeg")
    pytest.fail("the tiny cnn reads no synthetic pneumonia image as PNEUMONIA")


def test_diagnose_shows_the_subtype_block_for_pneumonia_only(app, reader, synthetic_dataset):
    """A pneumonia reading of a model with a head shows the block and offers both subtypes as heatmap
    targets; the same image read by a model without a head shows neither; a normal reading no block."""
    app.selectbox(key="model").set_value("cnn").run()
    app.file_uploader(key="upload").set_value(pneumonia_upload(reader, synthetic_dataset)).run()
    assert not app.exception, app.exception
    assert subtype_block_shown(app)
    assert any("separate bacterial from viral pneumonia poorly" in caption.value for caption in app.caption)
    assert app.radio(key="explain_class_subtype").options == [
        "PNEUMONIA",
        "NORMAL",
        "BACTERIAL (vs viral)",
        "VIRAL (vs bacterial)",
    ]
    app.radio(key="explain_class_subtype").set_value("virus").run()
    assert not app.exception, app.exception
    assert any(image.proto.imgs[0].caption == "Grad-CAM for VIRAL (vs bacterial)" for image in app.get("image"))
    app.selectbox(key="model").set_value("mlp").run()
    assert not app.exception, app.exception
    assert not subtype_block_shown(app)
    assert app.radio(key="explain_class").options == ["PNEUMONIA", "NORMAL"]
    app.selectbox(key="model").set_value("cnn").run()
    dark = ("normal.jpeg", jpeg_bytes(synthetic_xray(np.random.default_rng(5), bright=False)), "image/jpeg")
    app.file_uploader(key="upload").set_value(dark).run()
    assert reader.read(read_xray(dark[1])).label == "NORMAL"
    assert not app.exception, app.exception
    assert not subtype_block_shown(app)


def test_compare_page_shows_three_class_matrices_and_the_subtype_roc(app):
    """The Compare page draws the 3 x 3 matrix of each model with a head, and the bacterial-vs-viral ROC."""
    app.switch_page("pages/compare.py").run()
    assert not app.exception, app.exception
    keys = [user_key_from_element_id(chart.proto.id) for chart in app.get("plotly_chart")]
    assert "subtype_confusion_cnn" in keys and "subtype_roc" in keys
    assert "subtype_confusion_mlp" not in keys


def test_train_fits_the_subtype_head(synthetic_dataset, tmp_path):
    """`train` ends by fitting the head of the model it wrote, sealed with the rest."""
    argv = ["train", "--model", "mlp", "--data", str(synthetic_dataset), "--epochs", "1", "--out", str(tmp_path)]
    argv += ["--run-dir", str(tmp_path / "runs"), "--split-file", str(tmp_path / "split.csv"), "--no-gate"]
    assert main(argv) == 0
    loaded = artifacts.load_model_dir(tmp_path / "mlp")
    assert set(SUBTYPE_FILES) <= set(loaded.config.checksums)
    assert Reader(loaded).subtype is not None


def test_masked_subtype_loss_counts_only_the_pneumonia_images():
    """A target of -1 (a normal image) adds no loss; 1 and 0 give the usual binary cross-entropy."""
    from pneumo_core.train import masked_subtype_loss

    predicted = np.array([[0.8], [0.8], [0.8]], dtype="float32")
    loss = np.asarray(masked_subtype_loss(np.array([[1.0], [0.0], [-1.0]], dtype="float32"), predicted))
    np.testing.assert_allclose(loss, [-np.log(0.8), -np.log(0.2), 0.0], rtol=1e-4)


def test_train_with_a_joint_subtype_loss_saves_the_binary_model(synthetic_dataset, tmp_path):
    """`train --subtype-weight` fits a second output alongside, then saves the one-output model and its head."""
    argv = ["train", "--model", "mlp", "--data", str(synthetic_dataset), "--epochs", "2", "--out", str(tmp_path)]
    argv += ["--run-dir", str(tmp_path / "runs"), "--split-file", str(tmp_path / "split.csv"), "--no-gate"]
    assert main([*argv, "--subtype-weight", "0.5"]) == 0
    loaded = artifacts.load_model_dir(tmp_path / "mlp")
    assert loaded.config.args.subtype_weight == 0.5
    assert len(loaded.model.outputs) == 1 and "subtype" not in [layer.name for layer in loaded.model.layers]
    history = json.loads((tmp_path / "mlp" / "history.json").read_text())
    assert {"auc", "val_auc", "subtype_loss", "val_subtype_loss"} <= set(history[0])
    assert "Trained jointly with a bacterial-vs-viral output" in (tmp_path / "mlp" / "card.md").read_text()
    assert Reader(loaded).subtype is not None
