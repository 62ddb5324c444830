"""`evaluate` on odd folders: one test per case of issue 6 (item 3), each through the real CLI or evaluate_folder.

Every folder is built in tmp_path from a few images of the session's synthetic dataset plus one
oddity. A run either succeeds with the oddity reported (skipped entry or unreadable image) and
metrics on the rest, or fails with exit code 2 and a one-line message: never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from dicom_fixtures import make_test_dicom

from pneumo_core import data
from pneumo_core.__main__ import main
from pneumo_core.artifacts import load_model_dir
from pneumo_core.evaluate import NothingReadable, evaluate_folder
from pneumo_core.imaging import read_xray_file

PER_CLASS = 4


@pytest.fixture
def folder(tmp_path, synthetic_dataset) -> Path:
    """``tmp_path/data/{NORMAL,PNEUMONIA}`` with the first four synthetic images of each class."""
    root = tmp_path / "data"
    for label in data.CLASS_NAMES:
        (root / label).mkdir(parents=True)
        for source in sorted((synthetic_dataset / label).iterdir())[:PER_CLASS]:
            shutil.copy(source, root / label / source.name)
    return root


@pytest.fixture(scope="module")
def mlp(trained_models_dir):
    """The session's one-epoch mlp, loaded once for the evaluate_folder tests."""
    return load_model_dir(trained_models_dir / "mlp")


def run_evaluate(models_dir: Path, folder: Path, capsys) -> tuple[int, dict | None, str]:
    """Run `evaluate --model mlp --data folder --out result.json`; return exit code, result and stderr."""
    out = folder.parent / "result.json"
    argv = ["evaluate", "--model", "mlp", "--models-dir", str(models_dir), "--data", str(folder), "--out", str(out)]
    exit_code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return exit_code, json.loads(out.read_text()) if out.is_file() else None, err


def warnings_of(caplog) -> str:
    """All warning messages logged during the test, one per line."""
    return "\n".join(record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING)


def test_numeric_patient_ids_in_manifest(trained_models_dir, folder, capsys):
    """A manifest.csv with numeric (and one empty) patient ids evaluates (was a pandas 3 TypeError)."""
    (folder / "manifest.csv").write_text(
        "file,label,subtype,patient_id\n"
        "IM-0001-0001.jpeg,NORMAL,normal,1\n"
        "IM-0001-0002.jpeg,NORMAL,normal,\n"
        "person1_bacteria_1.jpeg,PNEUMONIA,bacteria,2\n"
    )
    exit_code, result, _ = run_evaluate(trained_models_dir, folder, capsys)
    assert exit_code == 0
    assert result["metrics"]["n"] == 2 * PER_CLASS
    assert result["unreadable"] == result["skipped"] == []


@pytest.mark.parametrize(
    "manifest",
    ["file,label,subtype\nIM-0001-0001.jpeg,NORMAL,normal\n", "file,label,subtype,patient_id\n,,,\n"],
    ids=["no-patient-column", "empty-values"],
)
def test_missing_patient_ids_in_manifest(trained_models_dir, folder, capsys, manifest):
    """A manifest without patient ids (no column, or empty values) falls back to the file names."""
    (folder / "manifest.csv").write_text(manifest)
    exit_code, result, _ = run_evaluate(trained_models_dir, folder, capsys)
    assert exit_code == 0
    assert result["metrics"]["n_per_class"] == {"NORMAL": PER_CLASS, "PNEUMONIA": PER_CLASS}


def test_malformed_manifest_exits_2_with_a_clear_message(trained_models_dir, folder, capsys):
    """A manifest without a 'file' column stops evaluate with exit code 2 and a message naming it."""
    (folder / "manifest.csv").write_text("image,patient\nIM-0001-0001.jpeg,1\n")
    exit_code, result, err = run_evaluate(trained_models_dir, folder, capsys)
    assert exit_code == 2
    assert result is None
    assert "error:" in err
    assert "manifest.csv has no 'file' column" in err


def make_folder_named_like_an_image(normal: Path) -> None:
    (normal / "x.png").mkdir()
    (normal / "x.png" / "inner.jpeg").write_bytes(b"never looked at")


def make_symlink_loop(normal: Path) -> None:
    (normal / "loop.png").symlink_to(normal / "loop.png")


def make_dangling_symlink(normal: Path) -> None:
    (normal / "gone.jpeg").symlink_to(normal / "deleted-long-ago.jpeg")


def make_readme(normal: Path) -> None:
    (normal / "README.txt").write_text("These images come from ...")


@pytest.mark.parametrize(
    ("make", "entry", "reason"),
    [
        (make_folder_named_like_an_image, "NORMAL/x.png", "it is a folder, not an image file"),
        (make_symlink_loop, "NORMAL/loop.png", "it is a symbolic link loop"),
        (make_dangling_symlink, "NORMAL/gone.jpeg", "it is a broken symbolic link"),
        (make_readme, "NORMAL/README.txt", "it is not a PNG, JPEG or DICOM image"),
    ],
    ids=["folder-named-x.png", "symlink-loop", "dangling-symlink", "readme"],
)
def test_entries_that_are_not_images_are_skipped_with_a_warning(
    trained_models_dir, folder, capsys, caplog, make, entry, reason
):
    """The entry is skipped, named in a warning and in the result's `skipped`; the images are evaluated."""
    make(folder / "NORMAL")
    with caplog.at_level(logging.WARNING):
        exit_code, result, _ = run_evaluate(trained_models_dir, folder, capsys)
    assert exit_code == 0
    assert result["metrics"]["n"] == 2 * PER_CLASS
    assert [item["file"] for item in result["skipped"]] == [entry]
    assert result["skipped"][0]["reason"].startswith(reason)
    assert entry.split("/")[1] in warnings_of(caplog)
    assert reason in warnings_of(caplog)


def truncated_jpeg(good: Path) -> bytes:
    return good.read_bytes()[: len(good.read_bytes()) // 3]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.jpeg", lambda good: b"just some text saved with an image suffix\n"),
        ("IM-0099-0001.jpeg", truncated_jpeg),
        ("IM-0098-0001.png", lambda good: b""),
    ],
    ids=["text-named-jpeg", "corrupt-jpeg", "empty-png"],
)
def test_unreadable_images_are_reported_and_the_rest_evaluated(
    trained_models_dir, folder, capsys, caplog, name, content
):
    """An image-named file that does not decode is listed under `unreadable` with a reason; metrics use the rest."""
    good = next((folder / "NORMAL").iterdir())
    (folder / "NORMAL" / name).write_bytes(content(good))
    with caplog.at_level(logging.WARNING):
        exit_code, result, _ = run_evaluate(trained_models_dir, folder, capsys)
    assert exit_code == 0
    assert result["n_listed"] == 2 * PER_CLASS + 1
    assert result["metrics"]["n"] == 2 * PER_CLASS
    assert [item["file"] for item in result["unreadable"]] == [f"NORMAL/{name}"]
    assert result["unreadable"][0]["reason"]
    assert "1 unreadable left out" in result["data"]
    assert f"NORMAL/{name}" in warnings_of(caplog)


def test_empty_class_folder_gives_metrics_for_the_other_class(trained_models_dir, folder, capsys, caplog):
    """With NORMAL/ empty, evaluate still runs: specificity and ROC AUC are undefined (None), not a crash."""
    for path in (folder / "NORMAL").iterdir():
        path.unlink()
    with caplog.at_level(logging.WARNING):
        exit_code, result, _ = run_evaluate(trained_models_dir, folder, capsys)
    assert exit_code == 0
    metrics = result["metrics"]
    assert metrics["n_per_class"] == {"NORMAL": 0, "PNEUMONIA": PER_CLASS}
    assert metrics["specificity"] is None
    assert metrics["roc_auc"] is None
    assert "NORMAL holds no images" in warnings_of(caplog)


def test_nothing_readable_exits_2_with_the_reasons(trained_models_dir, tmp_path, capsys):
    """A folder whose images all fail to decode stops with exit code 2 and names them with their reasons."""
    root = tmp_path / "data"
    for label in data.CLASS_NAMES:
        (root / label).mkdir(parents=True)
        (root / label / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    exit_code, result, err = run_evaluate(trained_models_dir, root, capsys)
    assert exit_code == 2
    assert result is None
    assert "error: None of the 2 images" in err
    assert "NORMAL/broken.png:" in err
    assert "PNEUMONIA/broken.png:" in err


def test_odd_but_valid_names_are_evaluated(trained_models_dir, folder, capsys):
    """Spaces, unicode, upper-case suffixes and extension-less JPEGs are images like any other."""
    pneumonia = folder / "PNEUMONIA"
    first, second, *_ = sorted(pneumonia.iterdir())
    first.rename(pneumonia / "Röntgen Aufnahme 1.JPEG")
    second.rename(pneumonia / "x-ray without suffix")
    exit_code, result, _ = run_evaluate(trained_models_dir, folder, capsys)
    assert exit_code == 0
    assert result["metrics"]["n_per_class"] == {"NORMAL": PER_CLASS, "PNEUMONIA": PER_CLASS}
    assert result["skipped"] == result["unreadable"] == []


def test_non_utf8_name_is_skipped_not_fatal(mlp, folder):
    """A file name that is not valid UTF-8 is skipped with an escaped name, so JSON and the console stay safe."""
    raw = os.fsencode(folder / "NORMAL") + b"/scan\xff.png"
    with open(raw, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")
    result = evaluate_folder(mlp, folder)
    assert result["skipped"] == [
        {"file": "NORMAL/scan\\udcff.png", "reason": "its name is not valid UTF-8 text; rename the file"}
    ]
    json.dumps(result, ensure_ascii=False).encode("utf-8")


class CountingModel:
    """Wraps a LoadedModel and records the size of every batch it predicts."""

    def __init__(self, loaded):
        self._loaded = loaded
        self.batches: list[int] = []

    def __getattr__(self, name):
        return getattr(self._loaded, name)

    def predict_squares(self, squares, batch_size: int = 32):
        self.batches.append(len(squares))
        return self._loaded.predict_squares(squares, batch_size)


def test_images_are_decoded_in_bounded_batches(mlp, folder):
    """With batch_size=3, no more than 3 images are predicted at once, and the metrics equal one big batch."""
    (folder / "PNEUMONIA" / "broken.jpeg").write_bytes(b"\xff\xd8\xff not really")
    counting = CountingModel(mlp)
    small = evaluate_folder(counting, folder, batch_size=3)
    assert counting.batches and max(counting.batches) <= 3
    assert sum(counting.batches) == 2 * PER_CLASS
    whole = evaluate_folder(mlp, folder, batch_size=64)
    np.testing.assert_allclose(small["metrics"]["log_loss"], whole["metrics"]["log_loss"], rtol=1e-5)
    assert small["unreadable"] == whole["unreadable"]


def test_evaluate_folder_raises_nothing_readable(mlp, tmp_path):
    """evaluate_folder raises NothingReadable (a ValueError) when no chosen image decodes."""
    for label in data.CLASS_NAMES:
        (tmp_path / label).mkdir()
        (tmp_path / label / "x.jpeg").write_text("text")
    with pytest.raises(NothingReadable, match="could be read"):
        evaluate_folder(mlp, tmp_path)


def test_dicom_files_are_evaluated_and_match_their_jpeg(mlp, folder):
    """A `.dcm` file and an extension-less DICOM named by its UID are images; each reads like its source JPEG.

    A CT DICOM is listed (it is DICOM) but refused by the decoder, so it is reported as unreadable.
    """
    pneumonia = folder / "PNEUMONIA"
    first, second, *_ = sorted(pneumonia.iterdir())
    (pneumonia / "scan.dcm").write_bytes(make_test_dicom(np.array(read_xray_file(first).gray)))
    (pneumonia / "1.2.826.0.1.3680043.2.1125").write_bytes(make_test_dicom(np.array(read_xray_file(second).gray)))
    (pneumonia / "head.dcm").write_bytes(make_test_dicom(np.array(read_xray_file(second).gray), modality="CT"))
    with_dicom = evaluate_folder(mlp, folder)
    assert with_dicom["metrics"]["n_per_class"] == {"NORMAL": PER_CLASS, "PNEUMONIA": PER_CLASS + 2}
    assert [item["file"] for item in with_dicom["unreadable"]] == ["PNEUMONIA/head.dcm"]
    assert "CT" in with_dicom["unreadable"][0]["reason"]
    assert with_dicom["skipped"] == []
    # The same pixels as JPEG and as DICOM give the same probability, so adding the DICOM copies of two
    # JPEGs gives the metrics of a folder holding those two JPEGs twice.
    for source, copy in ((first, "copy-1.jpeg"), (second, "copy-2.jpeg")):
        shutil.copy(source, pneumonia / copy)
    for name in ("scan.dcm", "1.2.826.0.1.3680043.2.1125", "head.dcm"):
        (pneumonia / name).unlink()
    with_copies = evaluate_folder(mlp, folder)
    np.testing.assert_allclose(with_dicom["metrics"]["log_loss"], with_copies["metrics"]["log_loss"], atol=1e-3)
