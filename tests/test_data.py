"""Tests of pneumo_core.data: file-name parsing, dataset listing, the patient-grouped split."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from pneumo_core import data

SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}


def make_records(seed: int = 7) -> pd.DataFrame:
    """A records frame like list_images' output: ~620 images of 300 patients, 1-3 images each.

    100 normal patients, 130 bacterial and 70 viral pneumonia patients.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for subtype, label, n_patients, offset in (
        ("normal", "NORMAL", 100, 0),
        ("bacteria", "PNEUMONIA", 130, 0),
        ("virus", "PNEUMONIA", 70, 1000),
    ):
        for index in range(n_patients):
            patient = f"IM-{index:04d}" if label == "NORMAL" else f"person{index + offset}"
            for image in range(int(rng.integers(1, 4))):
                name = f"{patient}-{image:04d}.jpeg" if label == "NORMAL" else f"{patient}_{subtype}_{image}.jpeg"
                rows.append(
                    {
                        "file": name,
                        "label": label,
                        "subtype": subtype,
                        "patient_id": patient,
                        "path": f"/x/{name}",
                    }
                )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def records() -> pd.DataFrame:
    """The large synthetic records frame."""
    return make_records()


def assert_patient_disjoint(split: pd.DataFrame) -> None:
    """No patient may appear in two splits."""
    per_patient = split.groupby("patient_id")["split"].nunique()
    assert per_patient.max() == 1, f"patients in several splits: {per_patient[per_patient > 1].index.tolist()}"


@pytest.mark.parametrize(
    ("file_name", "label", "expected"),
    [
        ("person1_bacteria_1.jpeg", "PNEUMONIA", ("bacteria", "person1")),
        ("person1609_virus_2791.jpeg", "PNEUMONIA", ("virus", "person1609")),
        ("Person12_Virus_44.JPEG", "PNEUMONIA", ("virus", "person12")),
        ("IM-0115-0001.jpeg", "NORMAL", ("normal", "IM-0115")),
        ("NORMAL2-IM-0427-0001.jpeg", "NORMAL", ("normal", "NORMAL2-IM-0427")),
        ("IM-0427-0001.jpeg", "NORMAL", ("normal", "IM-0427")),
        ("scan_42.png", "PNEUMONIA", ("unknown", "scan_42")),
        ("scan_42.png", "NORMAL", ("normal", "scan_42")),
    ],
)
def test_parse_file_name(file_name, label, expected):
    """Kermany names give subtype and patient; NORMAL2-IM-0427 and IM-0427 are different patients."""
    assert data.parse_file_name(file_name, label) == expected


def test_list_images_without_manifest(synthetic_dataset):
    """A manifest-free folder is listed with subtype and patient parsed from the file names."""
    frame = data.list_images(synthetic_dataset)
    assert list(frame.columns) == ["file", "label", "subtype", "patient_id", "path"]
    assert frame["label"].value_counts().to_dict() == {"NORMAL": 12, "PNEUMONIA": 13}
    assert frame["subtype"].value_counts().to_dict() == {"normal": 12, "bacteria": 7, "virus": 6}
    row = frame.set_index("file").loc["person1_bacteria_2.jpeg"]
    assert (row["subtype"], row["patient_id"]) == ("bacteria", "person1")
    assert frame.set_index("file").loc["NORMAL2-IM-0100-0001.jpeg", "patient_id"] == "NORMAL2-IM-0100"
    assert frame.groupby("label")["file"].apply(lambda f: f.is_monotonic_increasing).all()
    assert all(path.endswith(name) for path, name in zip(frame["path"], frame["file"], strict=True))


def test_list_images_with_manifest_and_train_subfolder(synthetic_dataset, tmp_path):
    """A manifest.csv beside train/{NORMAL,PNEUMONIA} overrides subtype and patient id.

    Files the manifest does not cover fall back to the file name; non-images are ignored.
    """
    root = tmp_path / "chest_xray"
    shutil.copytree(synthetic_dataset, root / "train")
    (root / "train" / "NORMAL" / "readme.txt").write_text("not an image")
    pd.DataFrame(
        [
            {
                "file": "person1_bacteria_1.jpeg",
                "label": "PNEUMONIA",
                "subtype": "virus",
                "patient_id": "P-A",
            },
            {"file": "IM-0002-0001.jpeg", "label": "NORMAL", "subtype": "normal", "patient_id": "P-B"},
        ]
    ).to_csv(root / "manifest.csv", index=False)
    frame = data.list_images(root).set_index("file")
    assert len(frame) == 25
    assert "readme.txt" not in frame.index
    assert (
        frame.loc["person1_bacteria_1.jpeg", "subtype"],
        frame.loc["person1_bacteria_1.jpeg", "patient_id"],
    ) == (
        "virus",
        "P-A",
    )
    assert frame.loc["IM-0002-0001.jpeg", "patient_id"] == "P-B"
    assert frame.loc["person1_bacteria_2.jpeg", "patient_id"] == "person1"
    assert frame.loc["IM-0003-0001.jpeg", "patient_id"] == "IM-0003"


def test_list_images_errors(tmp_path):
    """A folder without NORMAL/PNEUMONIA, or with them empty, raises a ValueError."""
    with pytest.raises(ValueError, match="No NORMAL/ and PNEUMONIA/ folders"):
        data.list_images(tmp_path)
    for name in data.CLASS_NAMES:
        (tmp_path / name).mkdir()
    with pytest.raises(ValueError, match=r"No images \(PNG, JPEG or DICOM\) found"):
        data.list_images(tmp_path)
    (tmp_path / "NORMAL" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="1 other entries were skipped"):
        data.list_images(tmp_path)


def test_make_split_on_synthetic_folder(synthetic_dataset):
    """The tiny manifest-free dataset splits patient-disjointly with both classes in every split."""
    records = data.list_images(synthetic_dataset)
    split = data.make_split(records)
    assert list(split.columns) == data.SPLIT_COLUMNS
    assert len(split) == len(records)
    assert set(split["file"]) == set(records["file"])
    assert_patient_disjoint(split)
    for name, target in SPLIT_FRACTIONS.items():
        part = split[split["split"] == name]
        assert set(part["label"]) == set(data.CLASS_NAMES), f"{name} lacks a class"
        # 6 patients in the smallest subtype -> 6 folds dealt 4/1/1.
        assert abs(len(part) / len(split) - target) < 0.10
    pd.testing.assert_frame_equal(split, data.make_split(records))


@pytest.mark.parametrize("seed", [data.SPLIT_SEED, 7])
def test_make_split_large_is_disjoint_and_70_15_15(records, seed):
    """On ~620 images of 300 patients the split is patient-disjoint and 70/15/15 within 3 points."""
    split = data.make_split(records, seed=seed)
    assert len(split) == len(records)
    assert_patient_disjoint(split)
    fractions = split["split"].value_counts(normalize=True)
    for name, target in SPLIT_FRACTIONS.items():
        assert abs(fractions[name] - target) < 0.03, f"{name}: {fractions[name]:.3f}"


@pytest.mark.parametrize("seed", [data.SPLIT_SEED, 7])
def test_make_split_large_is_stratified(records, seed):
    """Each split's subtype and label proportions are within 4 points of the whole frame's."""
    split = data.make_split(records, seed=seed)
    for column in ("subtype", "label"):
        overall = split[column].value_counts(normalize=True)
        per_split = pd.crosstab(split["split"], split[column], normalize="index")
        deviation = (per_split - overall).abs().to_numpy().max()
        assert deviation < 0.04, f"{column} proportions deviate by {deviation:.3f}\n{per_split}"


def test_make_split_is_reproducible(records):
    """Same seed -> identical frame; another seed -> a different assignment."""
    first = data.make_split(records, seed=3)
    pd.testing.assert_frame_equal(first, data.make_split(records, seed=3))
    other = data.make_split(records, seed=4)
    assert (first["file"] == other["file"]).all()
    assert (first["split"] != other["split"]).mean() > 0.1


def test_make_split_keeps_all_images_of_a_patient_together(records):
    """Every image of a multi-image patient lands in its patient's split."""
    split = data.make_split(records)
    multi = split.groupby("patient_id").filter(lambda g: len(g) > 1)
    assert len(multi) > 100
    assert_patient_disjoint(multi)


def test_make_split_refuses_too_few_patients():
    """Fewer than 3 patients in a subtype is refused with a clear message."""
    tiny = pd.DataFrame(
        {
            "file": [f"f{i}.jpeg" for i in range(6)],
            "label": ["NORMAL"] * 4 + ["PNEUMONIA"] * 2,
            "subtype": ["normal"] * 4 + ["virus"] * 2,
            "patient_id": ["a", "b", "c", "d", "e", "f"],
        }
    )
    with pytest.raises(ValueError, match="Too few patients"):
        data.make_split(tiny)


def test_write_and_read_split_round_trip(records, tmp_path):
    """write_split returns the file's sha256; reading it back and rewriting gives identical bytes."""
    split = data.make_split(records)
    path = tmp_path / "sub" / "split.csv"
    digest = data.write_split(split, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest() == data.split_hash(path)
    assert b"\r\n" not in path.read_bytes()
    again = data.read_split(path)
    assert list(again.columns) == data.SPLIT_COLUMNS
    assert data.write_split(again, tmp_path / "again.csv") == digest


def test_read_split_missing_file(tmp_path):
    """A missing split file raises ValueError telling how to create it."""
    with pytest.raises(ValueError, match="pneumo_core split"):
        data.read_split(tmp_path / "nope.csv")


def test_committed_split_is_patient_disjoint_and_hashed():
    """splits/kermany_split.csv: patient-disjoint, 70/15/15, stratified, and split_hash() is its sha256."""
    path = data.DEFAULT_SPLIT_FILE
    assert path.is_file()
    split = data.read_split(path)
    assert list(split.columns) == data.SPLIT_COLUMNS
    assert not split.duplicated(["file", "label"]).any()
    assert_patient_disjoint(split)
    fractions = split["split"].value_counts(normalize=True)
    for name, target in SPLIT_FRACTIONS.items():
        assert abs(fractions[name] - target) < 0.02
    per_split = pd.crosstab(split["split"], split["subtype"], normalize="index")
    overall = split["subtype"].value_counts(normalize=True)
    assert (per_split - overall).abs().to_numpy().max() < 0.02
    assert data.split_hash() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_committed_split_is_reproduced_by_make_split(tmp_path):
    """Re-running make_split (default seed) on the committed split's records reproduces it byte for byte."""
    committed = data.read_split()
    redone = data.make_split(committed.drop(columns=["split"]))
    assert data.write_split(redone, tmp_path / "redone.csv") == data.split_hash()


def test_attach_paths_and_load_arrays(synthetic_dataset):
    """attach_paths joins the split with image paths; load_arrays squashes them to (n, size, size) uint8."""
    split = data.make_split(data.list_images(synthetic_dataset))
    joined = data.attach_paths(split, synthetic_dataset)
    assert joined["path"].notna().all()
    squares = data.load_arrays(joined["path"].tolist()[:5], 64, workers=2)
    assert squares.shape == (5, 64, 64)
    assert squares.dtype == np.uint8
    labels = data.labels_of(joined)
    assert labels.dtype == np.int32
    assert labels.tolist() == [int(label == "PNEUMONIA") for label in joined["label"]]
    # NORMAL images of the synthetic set are dark, PNEUMONIA bright.
    all_squares = data.load_arrays(joined["path"].tolist(), 32)
    assert all_squares[labels == 0].mean() + 80 < all_squares[labels == 1].mean()


def test_attach_paths_missing_images(synthetic_dataset):
    """A split naming files that are not in the folder is refused."""
    split = data.make_split(data.list_images(synthetic_dataset))
    extra = pd.concat([split, split.iloc[[0]].assign(file="IM-9999-0001.jpeg")], ignore_index=True)
    with pytest.raises(ValueError, match="1 images of the split are missing"):
        data.attach_paths(extra, synthetic_dataset)


def test_load_arrays_names_the_bad_file(tmp_path):
    """A non-image among the paths raises ValueError naming that path."""
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"bad\.jpeg"):
        data.load_arrays([str(bad)], 64)


# --- Odd folders: manifests, names, links and files that are not images (issue 6, item 3). ---

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def small_folder(root, per_class: int = 2):
    """``root/{NORMAL,PNEUMONIA}`` with ``per_class`` tiny Kermany-named JPEGs each (bytes need not decode)."""
    for label, stem in (("NORMAL", "IM-{:04d}-0001.jpeg"), ("PNEUMONIA", "person{}_bacteria_1.jpeg")):
        (root / label).mkdir(parents=True)
        for index in range(1, per_class + 1):
            (root / label / stem.format(index)).write_bytes(b"\xff\xd8\xff" + bytes(16))
    return root


def by_file(frame: pd.DataFrame) -> dict:
    """``{(label, file): (subtype, patient_id)}`` of a listing."""
    return {(row.label, row.file): (row.subtype, row.patient_id) for row in frame.itertuples()}


def test_list_images_with_numeric_and_missing_patient_ids(tmp_path):
    """A manifest with numeric patient ids, some empty, lists them as strings (no pandas 3 TypeError).

    Leading zeros survive; an empty patient id or subtype falls back to the file name.
    """
    root = small_folder(tmp_path)
    (root / "manifest.csv").write_text(
        "file,label,subtype,patient_id\n"
        "IM-0001-0001.jpeg,NORMAL,normal,12\n"
        "IM-0002-0001.jpeg,NORMAL,,007\n"
        "person1_bacteria_1.jpeg,PNEUMONIA,virus,\n"
    )
    frame = data.list_images(root)
    assert all(frame[column].map(type).eq(str).all() for column in data.RECORD_COLUMNS)
    assert by_file(frame) == {
        ("NORMAL", "IM-0001-0001.jpeg"): ("normal", "12"),
        ("NORMAL", "IM-0002-0001.jpeg"): ("normal", "007"),
        ("PNEUMONIA", "person1_bacteria_1.jpeg"): ("virus", "person1"),
        ("PNEUMONIA", "person2_bacteria_1.jpeg"): ("bacteria", "person2"),
    }


@pytest.mark.parametrize(
    ("manifest", "expected_patient"),
    [
        ("file,label,subtype\nIM-0001-0001.jpeg,NORMAL,normal\n", "IM-0001"),
        ("file,patient_id\nIM-0001-0001.jpeg,42\n", "42"),
        ("file,label,subtype,patient_id\n", "IM-0001"),
        (" file , label , patient_id \nIM-0001-0001.jpeg , NORMAL , 5 \n", "5"),
    ],
    ids=["no-patient-column", "no-label-column", "header-only", "padded"],
)
def test_list_images_tolerates_missing_manifest_columns(tmp_path, manifest, expected_patient):
    """A manifest without some columns, or without rows, falls back to the file names where it is silent."""
    root = small_folder(tmp_path)
    (root / "manifest.csv").write_text(manifest)
    frame = data.list_images(root)
    assert by_file(frame)[("NORMAL", "IM-0001-0001.jpeg")] == ("normal", expected_patient)
    assert by_file(frame)[("PNEUMONIA", "person2_bacteria_1.jpeg")] == ("bacteria", "person2")


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (b"", "cannot be read as a CSV file"),
        (b"name,patient_id\nIM-0001-0001.jpeg,1\n", "has no 'file' column"),
        (b'file,label\n"IM-0001-0001.jpeg,NORMAL\n', "cannot be read as a CSV file"),
        (b"file,label\n\xff\xfe\x00,NORMAL\n", "cannot be read as a CSV file"),
        (b"file,label\nIM-0001-0001.jpeg,NORMAL\nIM-0001-0001.jpeg,NORMAL\n", "lists IM-0001-0001.jpeg / NORMAL more"),
    ],
    ids=["empty", "no-file-column", "unterminated-quote", "not-utf8", "duplicate-row"],
)
def test_malformed_manifest_is_a_clear_value_error(tmp_path, manifest, message):
    """A manifest that cannot be used raises ManifestError (a ValueError) naming manifest.csv."""
    root = small_folder(tmp_path)
    (root / "manifest.csv").write_bytes(manifest)
    with pytest.raises(data.ManifestError, match=message) as caught:
        data.list_images(root)
    assert "manifest.csv" in str(caught.value)


def dicom_like_bytes() -> bytes:
    """A 128-byte preamble and ``DICM``: enough for the listing to recognise a DICOM file."""
    return bytes(128) + b"DICM" + bytes(32)


def test_scan_images_skips_odd_entries_with_a_warning(tmp_path, caplog):
    """Folders named like images, link loops, dangling links, pipes, non-images and undecodable names are skipped.

    Each is named in a warning and in ``skipped``; hidden files are ignored silently; odd but valid
    names (spaces, unicode), ``.dcm`` files, extension-less DICOM/PNG files and symlinks to images are listed.
    """
    root = small_folder(tmp_path)
    normal, pneumonia = root / "NORMAL", root / "PNEUMONIA"
    (normal / "x.png").mkdir()
    (normal / "loop.jpeg").symlink_to(normal / "loop.jpeg")
    (normal / "gone.jpeg").symlink_to(tmp_path / "does-not-exist.jpeg")
    os.mkfifo(normal / "fifo.png")
    (normal / "README.txt").write_text("not an image")
    (normal / ".DS_Store").write_bytes(b"\x00\x01")
    (normal / "Röntgen bild 1.JPG").write_bytes(b"\xff\xd8\xff")
    (normal / "scan.dcm").write_bytes(b"anything: decoding decides")
    (normal / "1.2.840.10008.5.1.4").write_bytes(dicom_like_bytes())
    (pneumonia / "no_suffix_png").write_bytes(PNG_MAGIC + bytes(8))
    (pneumonia / "link.jpeg").symlink_to(pneumonia / "person1_bacteria_1.jpeg")
    (pneumonia / "text.jpeg").write_text("a text file with an image suffix is listed; evaluate reports it")
    os.close(os.open(os.fsencode(pneumonia) + b"/bad\xffname.png", os.O_CREAT | os.O_WRONLY))

    with caplog.at_level(logging.WARNING, logger="pneumo_core.data"):
        listing = data.scan_images(root)

    listed = set(zip(listing.records["label"], listing.records["file"], strict=True))
    assert listed == {
        ("NORMAL", "IM-0001-0001.jpeg"),
        ("NORMAL", "IM-0002-0001.jpeg"),
        ("NORMAL", "Röntgen bild 1.JPG"),
        ("NORMAL", "scan.dcm"),
        ("NORMAL", "1.2.840.10008.5.1.4"),
        ("PNEUMONIA", "person1_bacteria_1.jpeg"),
        ("PNEUMONIA", "person2_bacteria_1.jpeg"),
        ("PNEUMONIA", "no_suffix_png"),
        ("PNEUMONIA", "link.jpeg"),
        ("PNEUMONIA", "text.jpeg"),
    }
    reasons = {entry.file: entry.reason for entry in listing.skipped}
    assert reasons == {
        "NORMAL/README.txt": "it is not a PNG, JPEG or DICOM image",
        "NORMAL/fifo.png": "it is not a regular file (a pipe, socket or device)",
        "NORMAL/gone.jpeg": "it is a broken symbolic link (its target does not exist)",
        "NORMAL/loop.jpeg": "it is a symbolic link loop",
        "NORMAL/x.png": "it is a folder, not an image file (sub-folders are not searched)",
        "PNEUMONIA/bad\\udcffname.png": "its name is not valid UTF-8 text; rename the file",
    }
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == len(reasons)
    for file, reason in reasons.items():
        assert any(file.split("/")[1] in message and reason in message for message in warnings), file
    assert ".DS_Store" not in " ".join(warnings)
    assert listing.records.groupby("label")["file"].apply(lambda f: f.is_monotonic_increasing).all()


def test_empty_class_folder_is_listed_with_a_warning(tmp_path, caplog):
    """An empty NORMAL/ is not an error for the listing; it is named in a warning."""
    root = small_folder(tmp_path)
    for path in (root / "NORMAL").iterdir():
        path.unlink()
    with caplog.at_level(logging.WARNING, logger="pneumo_core.data"):
        frame = data.list_images(root)
    assert set(frame["label"]) == {"PNEUMONIA"}
    assert any("NORMAL holds no images" in record.getMessage() for record in caplog.records)


def test_load_arrays_names_a_missing_or_special_file(tmp_path):
    """load_arrays turns OS errors and non-regular files into a ValueError naming the path."""
    with pytest.raises(ValueError, match=r"gone\.jpeg: The file does not exist"):
        data.load_arrays([str(tmp_path / "gone.jpeg")], 64)
    os.mkfifo(tmp_path / "fifo.jpeg")
    with pytest.raises(ValueError, match=r"fifo\.jpeg: This is not a regular file"):
        data.load_arrays([str(tmp_path / "fifo.jpeg")], 64)
