"""Batch scoring: inputs (folders, zips, uploads), labels, local validation, the predict CLI and the Batch page."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import jpeg_bytes, synthetic_xray
from streamlit.testing.v1 import AppTest

from pneumo_core.__main__ import main
from pneumo_core.archive import ArchiveRefused
from pneumo_core.artifacts import load_model_dir
from pneumo_core.batch_scoring import (
    BatchRow,
    ProgressBar,
    command_line_batch,
    csv_bytes,
    local_validation,
    results_table,
    score,
    upload_batch,
)
from pneumo_core.diagnosis import Band
from pneumo_core.local_validation import (
    LabelsError,
    label_from_path,
    read_labels_csv,
    validate_locally,
    wilson_interval,
)
from pneumo_core.reading import Reader, Reading

APP = Path(__file__).resolve().parent.parent / "app.py"
SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "samples"
ROW_KEYS = {"image", "accepted", "ood_score", "reason", "probability", "label"}


def xray_jpeg(seed: int, bright: bool) -> bytes:
    """A tiny synthetic X-ray JPEG (bright = pneumonia-like for the test models)."""
    return jpeg_bytes(synthetic_xray(np.random.default_rng(seed), bright))


def zip_of(members: dict[str, bytes]) -> bytes:
    """A zip archive built in memory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def labelled_zip() -> bytes:
    """NORMAL/ and PNEUMONIA/ folders of 3 synthetic images each, a note and a non-image."""
    members = {f"site/NORMAL/n{i}.jpeg": xray_jpeg(i, bright=False) for i in range(3)}
    members |= {f"site/PNEUMONIA/p{i}.jpeg": xray_jpeg(10 + i, bright=True) for i in range(3)}
    members["site/README.txt"] = b"exported from PACS"
    members["site/NORMAL/broken.png"] = b"not really a png"
    return zip_of(members)


@pytest.fixture(scope="module")
def reader(trained_models_dir) -> Reader:
    """The tiny test cnn."""
    return Reader(load_model_dir(trained_models_dir / "cnn"))


# --- Inputs -------------------------------------------------------------------------------------


def test_upload_batch_expands_a_zip_skips_non_images_and_reads_folder_labels():
    """A zip's images are read in order with their paths; a .txt is skipped with a reason; folders give labels."""
    batch = upload_batch([("site.zip", labelled_zip())])
    names = [name for name, _ in batch.sources()]
    assert names == [
        "site/NORMAL/n0.jpeg",
        "site/NORMAL/n1.jpeg",
        "site/NORMAL/n2.jpeg",
        "site/PNEUMONIA/p0.jpeg",
        "site/PNEUMONIA/p1.jpeg",
        "site/PNEUMONIA/p2.jpeg",
        "site/NORMAL/broken.png",
    ]
    assert batch.count == 7
    assert [(item.name, item.reason) for item in batch.skipped] == [
        ("site/README.txt", "not a PNG, JPEG or DICOM file")
    ]
    assert batch.truth("site/NORMAL/n0.jpeg") == "NORMAL"
    assert batch.truth("site/PNEUMONIA/p2.jpeg") == "PNEUMONIA"


def test_upload_batch_labels_from_a_csv_uploaded_alongside_or_inside_the_zip():
    """Plain uploads get labels from a labels CSV (by file name); a CSV inside a zip labels its members."""
    labels = b"file,label\na.jpeg,pneumonia\nb.jpeg,NORMAL\n"
    batch = upload_batch([("a.jpeg", xray_jpeg(1, True)), ("b.jpeg", xray_jpeg(2, False))], labels)
    assert [batch.truth(name) for name, _ in batch.sources()] == ["PNEUMONIA", "NORMAL"]

    inner = zip_of({"x/1.jpeg": xray_jpeg(3, True), "labels.csv": b"file,label\nx/1.jpeg,1\n"})
    batch = upload_batch([("export.zip", inner)])
    assert batch.count == 1 and batch.truth("x/1.jpeg") == "PNEUMONIA"


def test_upload_batch_refuses_a_bad_zip_and_a_bad_labels_csv():
    """A path-traversal zip and a labels CSV without a label column give clear errors."""
    with pytest.raises(ArchiveRefused, match="points outside the archive"):
        upload_batch([("evil.zip", zip_of({"../../etc/x.png": b"x"}))])
    with pytest.raises(LabelsError, match="no label column"):
        upload_batch([("a.jpeg", xray_jpeg(1, True))], b"file,diagnosis\na.jpeg,NORMAL\n")


def test_two_zips_are_told_apart_by_their_names():
    """With several archives, member names are prefixed with the archive's name."""
    first = zip_of({"NORMAL/a.jpeg": xray_jpeg(1, False)})
    second = zip_of({"NORMAL/a.jpeg": xray_jpeg(2, False)})
    batch = upload_batch([("monday.zip", first), ("tuesday.zip", second)])
    assert [name for name, _ in batch.sources()] == ["monday/NORMAL/a.jpeg", "tuesday/NORMAL/a.jpeg"]


def test_command_line_batch_walks_folders_but_reads_named_files_as_given(tmp_path):
    """Folders give their supported files (recursively); odd entries are skipped with a reason; named files stay."""
    (tmp_path / "NORMAL" / "deep").mkdir(parents=True)
    (tmp_path / "NORMAL" / "deep" / "a.jpeg").write_bytes(xray_jpeg(1, False))
    (tmp_path / "NORMAL" / "notes.txt").write_text("not an image")
    (tmp_path / "NORMAL" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "NORMAL" / "dangling.png").symlink_to(tmp_path / "missing.png")
    named = tmp_path / "named.txt"
    named.write_text("read anyway: it was named")
    batch = command_line_batch([str(tmp_path / "NORMAL"), str(named)])
    assert [name for name, _ in batch.sources()] == [str(tmp_path / "NORMAL/deep/a.jpeg"), str(named)]
    assert {item.name: item.reason for item in batch.skipped} == {
        str(tmp_path / "NORMAL/dangling.png"): "it is a broken symbolic link",
        str(tmp_path / "NORMAL/notes.txt"): "it is not a PNG, JPEG or DICOM image",
    }


def test_command_line_batch_reads_a_zip_and_refuses_an_empty_folder(tmp_path):
    """A .zip on the command line is read from memory; a folder without images is a usage error."""
    archive = tmp_path / "site.zip"
    archive.write_bytes(zip_of({"PNEUMONIA/p.jpeg": xray_jpeg(1, True)}))
    batch = command_line_batch([str(archive)])
    assert [name for name, _ in batch.sources()] == [f"{archive}/PNEUMONIA/p.jpeg"]
    assert batch.truth(f"{archive}/PNEUMONIA/p.jpeg") == "PNEUMONIA"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="No PNG, JPEG or DICOM image to read"):
        command_line_batch([str(tmp_path / "empty")])


# --- Reading and results ------------------------------------------------------------------------


def test_score_reads_every_image_in_batches_and_reports_progress(reader):
    """One row per image in order; an unreadable member is refused with a reason; progress reaches the total."""
    batch = upload_batch([("site.zip", labelled_zip())])
    seen = []
    rows = score(reader, batch, batch_size=2, progress=lambda done, total: seen.append((done, total)))
    assert [row.name for row in rows] == [name for name, _ in batch.sources()]
    assert seen[-1] == (7, 7) and [done for done, _ in seen] == sorted(done for done, _ in seen)
    broken = rows[-1]
    assert not broken.reading.accepted and "not an image" in broken.reading.reason
    assert all(row.reading.accepted and 0.0 <= row.reading.probability <= 1.0 for row in rows[:-1])
    assert [row.truth for row in rows] == ["NORMAL"] * 3 + ["PNEUMONIA"] * 3 + ["NORMAL"]


def test_score_runs_each_forward_pass_through_the_given_queue(reader):
    """With ``through``, every batch's forward pass is handed to it (the app's shared work queue)."""
    batch = upload_batch([("site.zip", labelled_zip())])
    calls = []

    def through(job):
        calls.append(1)
        return job()

    rows = score(reader, batch, batch_size=3, through=through)
    assert len(rows) == 7 and len(calls) == 3  # 6 readable images in batches of 3 (the broken one is not passed)


def test_results_table_and_csv():
    """The table shows percentages, the grey band's INDETERMINATE and the true label; the CSV has raw values."""
    rows = [
        BatchRow("a.png", Reading(model="cnn", threshold=0.5, probability=0.8123, label="PNEUMONIA"), "PNEUMONIA"),
        BatchRow("b.png", Reading(model="cnn", threshold=0.5, accepted=False, reason="Not an X-ray."), None),
    ]
    table = results_table(rows)
    assert list(table.columns) == ["file", "accepted", "probability of pneumonia", "reading", "true label", "reason"]
    assert table.iloc[0].tolist() == ["a.png", "yes", "81.2%", "PNEUMONIA", "PNEUMONIA", ""]
    assert table.iloc[1].tolist() == ["b.png", "no", "", "", "", "Not an X-ray."]
    assert results_table(rows, Band(low=0.4, high=0.9))["reading"].tolist() == ["INDETERMINATE", ""]
    parsed = list(csv.DictReader(io.StringIO(csv_bytes(rows).decode())))
    assert ROW_KEYS | {"truth", "threshold", "model"} == set(parsed[0])
    assert parsed[0]["probability"] == "0.8123" and parsed[1]["reason"] == "Not an X-ray."


def test_local_validation_counts_only_labelled_accepted_images():
    """Unlabelled rows are ignored; refused labelled rows are counted apart."""
    reading = Reading(model="cnn", threshold=0.5, probability=0.9, label="PNEUMONIA")
    refused = Reading(model="cnn", threshold=0.5, accepted=False, reason="x")
    rows = [BatchRow("a", reading, "PNEUMONIA"), BatchRow("b", reading, None), BatchRow("c", refused, "NORMAL")]
    validation = local_validation(rows, 0.5)
    assert validation.metrics.n == 1 and validation.n_refused == 1
    assert local_validation([BatchRow("b", reading, None)], 0.5) is None


# --- Local validation ---------------------------------------------------------------------------


def test_wilson_interval_matches_the_textbook_value():
    """Wilson 95% interval of 9/10 is about 0.596 to 0.982; no trials gives None."""
    interval = wilson_interval(9, 10)
    assert interval.low == pytest.approx(0.5958, abs=1e-3) and interval.high == pytest.approx(0.9821, abs=1e-3)
    assert interval.estimate == 0.9 and interval.wide
    assert wilson_interval(0, 0) is None


def test_validate_locally_threshold_for_95_percent_sensitivity_and_its_intervals():
    """The suggested threshold reaches sensitivity >= 0.95 on the images; small samples are flagged as such."""
    rng = np.random.default_rng(7)
    truths = ["PNEUMONIA"] * 40 + ["NORMAL"] * 20
    probabilities = np.concatenate([rng.uniform(0.3, 1.0, 40), rng.uniform(0.0, 0.6, 20)])
    validation = validate_locally(truths, probabilities, threshold=0.8)
    suggested = validation.suggested
    assert suggested.sensitivity.estimate >= 0.95
    assert suggested.sensitivity.trials == 40 and suggested.specificity.trials == 20
    assert suggested.threshold < 0.8
    assert validation.shipped.sensitivity.estimate == pytest.approx((probabilities[:40] >= 0.8).mean())
    text = " ".join(validation.summary())
    assert "rest on 60 labelled images (40 pneumonia, 20 normal)" in text
    assert "95% CI" in text and "Too few images to change the threshold on" in text


def test_validate_locally_with_one_class_gives_no_threshold():
    """With only normal images there is no ROC and no suggested threshold, and the summary says why."""
    validation = validate_locally(["NORMAL"] * 5, [0.1, 0.2, 0.3, 0.6, 0.9], threshold=0.5)
    assert validation.suggested is None and validation.shipped.sensitivity is None
    assert validation.shipped.specificity.successes == 3
    assert "needs both NORMAL and PNEUMONIA images" in " ".join(validation.summary())


def test_label_sources():
    """Folder names (nearest wins, any case) and CSV labels (names, 0/1) are understood; bad CSVs say why."""
    assert label_from_path("export/pneumonia/2024/x.dcm") == "PNEUMONIA"
    assert label_from_path("NORMAL/PNEUMONIA/x.dcm") == "PNEUMONIA"
    assert label_from_path("NORMAL.png") is None
    assert read_labels_csv(b"File , Label\na.png, 0\nb.png,Pneumonia\n") == {"a.png": "NORMAL", "b.png": "PNEUMONIA"}
    with pytest.raises(LabelsError, match=r"Line 2 .* 'maybe'"):
        read_labels_csv(b"file,label\na.png,maybe\n")
    with pytest.raises(LabelsError, match="two different labels"):
        read_labels_csv(b"file,label\na.png,NORMAL\na.png,PNEUMONIA\n")


# --- Command line -------------------------------------------------------------------------------


def site_folder(root: Path) -> Path:
    """A folder with NORMAL/ and PNEUMONIA/ images, one unreadable .png and one .txt."""
    for label, bright in (("NORMAL", False), ("PNEUMONIA", True)):
        (root / label).mkdir(parents=True)
        for i in range(2):
            (root / label / f"{label.lower()}{i}.jpeg").write_bytes(xray_jpeg(i + 20 * bright, bright))
    return root


def test_predict_csv_and_json_exit_zero_when_every_image_is_read(trained_models_dir, tmp_path, capsys):
    """predict on a folder writes one CSV row per image, prints JSON lines and exits 0; progress goes to stderr."""
    folder = site_folder(tmp_path / "site")
    out = tmp_path / "out" / "readings.csv"
    argv = ["predict", "--model", "cnn", "--models-dir", str(trained_models_dir), str(folder), "--csv", str(out)]
    assert main([*argv, "--json", "--batch-size", "3"]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert len(lines) == 4 and set(lines[0]) >= ROW_KEYS
    assert [line["truth"] for line in lines] == ["NORMAL", "NORMAL", "PNEUMONIA", "PNEUMONIA"]
    assert "100% 4/4 images" in captured.err and "read 4 of 4 images, 0 refused" in captured.err
    rows = list(csv.DictReader(out.open()))
    assert [row["image"] for row in rows] == [line["image"] for line in lines]
    assert set(rows[0]) >= ROW_KEYS and all(row["accepted"] == "True" for row in rows)


def test_predict_exits_one_when_some_are_refused_and_warns_about_skipped(trained_models_dir, tmp_path, capsys):
    """An unreadable image gives a refused row and exit code 1; a non-image in a folder is skipped with a warning."""
    folder = site_folder(tmp_path / "site")
    (folder / "NORMAL" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    (folder / "NORMAL" / "notes.txt").write_text("not an image")
    assert main(["predict", "--model", "cnn", "--models-dir", str(trained_models_dir), str(folder)]) == 1
    captured = capsys.readouterr()
    assert f"warning: skipped {folder / 'NORMAL' / 'notes.txt'}" in captured.err
    assert f"{folder / 'NORMAL' / 'corrupt.png'}: refused:" in captured.out
    assert "read 4 of 5 images, 1 refused" in captured.err


def test_predict_usage_errors_exit_two(trained_models_dir, tmp_path, capsys):
    """An empty folder, a zip bomb-like refusal and a bad option are usage errors (exit code 2)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["predict", "--model", "cnn", "--models-dir", str(trained_models_dir)]
    assert main([*base, str(empty)]) == 2
    evil = tmp_path / "evil.zip"
    evil.write_bytes(zip_of({"../x.jpeg": xray_jpeg(1, True)}))
    assert main([*base, str(evil)]) == 2
    assert "points outside the archive" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        main([*base, "--batch-size", "0", str(empty)])
    assert caught.value.code == 2


def test_progress_bar_prints_a_line_per_tenth_when_not_a_terminal():
    """Off a terminal the bar prints at most eleven lines, ending at 100%."""
    stream = io.StringIO()
    bar = ProgressBar(total=200, stream=stream)
    for done in range(1, 201):
        bar.update(done)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11 and "0% 1/200" in lines[0]
    assert lines[-1].startswith("[" + "#" * 30 + "] 100% 200/200 images")


# --- The Batch page (AppTest) -------------------------------------------------------------------


@pytest.fixture
def batch_page(trained_models_dir, monkeypatch) -> AppTest:
    """The app switched to the Batch page, with the tiny test models."""
    monkeypatch.setenv("PNEUMO_MODELS_DIR", str(trained_models_dir))
    at = AppTest.from_file(str(APP), default_timeout=90)
    at.run()
    at.switch_page("pages/batch.py").run()
    assert not at.exception, at.exception
    return at


def dataframe_with(at: AppTest, column: str):
    """The one table on the page that has ``column`` (AppTest finds dataframes by position, not key)."""
    tables = [frame.value for frame in at.dataframe if column in frame.value.columns]
    assert len(tables) == 1, [list(frame.value.columns) for frame in at.dataframe]
    return tables[0]


def test_batch_page_reads_a_labelled_zip_and_validates_locally(batch_page):
    """Upload a labelled zip, press Read: the table, the CSV download and the local-validation figures appear."""
    at = batch_page
    assert any("Upload X-rays or a zip archive to start." in info.value for info in at.info)
    at.file_uploader(key="batch_upload").set_value([("site.zip", labelled_zip(), "application/zip")])
    at.run()
    assert not at.exception, at.exception
    assert any("**7** image(s) to read" in m.value for m in at.markdown)
    at.button(key="batch_run").click().run()
    assert not at.exception, at.exception
    table = dataframe_with(at, "accepted")
    assert len(table) == 7 and list(table["true label"]) == ["NORMAL"] * 3 + ["PNEUMONIA"] * 3 + ["NORMAL"]
    assert [metric.label for metric in at.metric] == ["Images read", "PNEUMONIA", "INDETERMINATE", "Refused"]
    assert at.metric[0].value == "6" and at.metric[3].value == "1"
    assert any("rest on 6 labelled images (3 pneumonia, 3 normal)" in m.value for m in at.markdown)
    assert len(at.get("plotly_chart")) == 2
    assert dataframe_with(at, "ROC AUC").index.tolist() == [at.selectbox(key="batch_model").value]


def test_batch_page_refuses_a_path_traversal_zip(batch_page):
    """A zip with ../ paths gives one clear error and no table."""
    at = batch_page
    at.file_uploader(key="batch_upload").set_value([("evil.zip", zip_of({"../x.png": b"x"}), "application/zip")])
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "points outside the archive" in at.error[0].value
    assert not at.button
