"""The batch command on Ray Data gives the same rows as the in-process engine, a reason for every bad file.

One private Ray session serves the whole module (about 10 s to start on two cores) and the Ray
engine runs once, through the CLI to CSV; the in-process engine writes Parquet. The archive is a
handful of the tiny synthetic X-rays, a truncated JPEG and a text file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from pneumo_core.batch import (
    SCHEMA,
    BatchSettingsError,
    RaySettings,
    RayUnavailable,
    check_reachable,
    ray_session,
    score_files,
)
from pneumo_core.sources import expand_inputs

# A name no Ray log could contain by chance: the privacy test searches the logs for it.
MARKER_NAME = "patient-qq-unique-987.jpeg"
BAD_FILES = {"truncated.jpeg", "notes.txt"}


@pytest.fixture(scope="module")
def archive(tmp_path_factory, synthetic_dataset) -> Path:
    """Six synthetic X-rays (one under a distinctive name, two in a sub-folder), a truncated JPEG and a text file."""
    root = tmp_path_factory.mktemp("archive")
    (root / "sub").mkdir()
    normals = sorted((synthetic_dataset / "NORMAL").iterdir())[:3]
    pneumonias = sorted((synthetic_dataset / "PNEUMONIA").iterdir())[:3]
    shutil.copy(normals[0], root / MARKER_NAME)
    for source in normals[1:] + pneumonias[:1]:
        shutil.copy(source, root / source.name)
    for source in pneumonias[1:]:
        shutil.copy(source, root / "sub" / source.name)
    (root / "truncated.jpeg").write_bytes(normals[0].read_bytes()[:300])
    (root / "notes.txt").write_text("Not an X-ray: a text file left in the archive.\n")
    return root


@pytest.fixture(scope="module")
def model_dir(trained_models_dir) -> Path:
    """The tiny one-epoch CNN trained by conftest."""
    return trained_models_dir / "cnn"


@pytest.fixture(scope="module")
def ray_cluster():
    """A private Ray on this machine for the module; the engine reuses it instead of starting its own."""
    with ray_session():
        yield


@pytest.fixture(scope="module")
def local_rows(archive, model_dir, tmp_path_factory) -> list[dict]:
    """The in-process engine's rows for the archive."""
    out = tmp_path_factory.mktemp("local") / "preds.parquet"
    score_files(model_dir, expand_inputs([str(archive)]), out, engine="local")
    return pq.read_table(out).to_pylist()


@pytest.fixture(scope="module")
def ray_rows(ray_cluster, archive, trained_models_dir, tmp_path_factory) -> list[dict]:
    """The rows of ``python -m pneumo_core batch --engine ray`` (two actors, batches of three) in its CSV file."""
    from pneumo_core.__main__ import main

    out = tmp_path_factory.mktemp("ray") / "preds.csv"
    argv = ["batch", "--model", "cnn", "--data", str(archive / "*"), "--out", str(out), "--engine", "ray"]
    argv += ["--workers", "2", "--batch-size", "3", "--models-dir", str(trained_models_dir)]
    assert main(argv) == 0
    assert [path.name for path in out.parent.iterdir()] == [out.name], "a partial file was left behind"
    options = pa_csv.ConvertOptions(column_types=SCHEMA, strings_can_be_null=True)
    table = pa_csv.read_csv(out, convert_options=options)
    assert table.column_names == SCHEMA.names
    return table.to_pylist()


def test_ray_engine_matches_local_engine(local_rows, ray_rows):
    """Same columns, same images in the same (sorted) order, same decisions, probabilities equal within 1e-5."""
    assert [row["image"] for row in ray_rows] == [row["image"] for row in local_rows]
    assert [row["image"] for row in ray_rows] == sorted(row["image"] for row in ray_rows)
    for ray_row, local_row in zip(ray_rows, local_rows, strict=True):
        assert {key: value for key, value in ray_row.items() if key != "probability"} == {
            key: value for key, value in local_row.items() if key != "probability"
        }
        if local_row["accepted"]:
            assert ray_row["probability"] == pytest.approx(local_row["probability"], abs=1e-5)


def test_one_row_per_file_and_a_reason_for_every_bad_file(archive, ray_rows):
    """Nothing is dropped: the six X-rays are read, the truncated JPEG and the text file are refused with a reason."""
    files = sorted(str(path) for path in archive.rglob("*") if path.is_file())
    assert [row["image"] for row in ray_rows] == files
    for row in ray_rows:
        bad = Path(row["image"]).name in BAD_FILES
        assert row["accepted"] is not bad
        if bad:
            assert row["reason"] and row["probability"] is None and row["label"] is None
        else:
            assert (
                row["reason"] is None and 0.0 <= row["probability"] <= 1.0 and row["label"] in {"NORMAL", "PNEUMONIA"}
            )


def test_ray_logs_do_not_mention_image_names(ray_cluster, ray_rows):
    """Ray's session logs never contain an image's file name (the search first proves it sees the actor's logs)."""
    import ray

    # Ray has no public accessor for the session folder of a running cluster.
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    contents = [path.read_bytes() for path in logs.rglob("*") if path.is_file()]
    assert any(b"ReadBatch" in content for content in contents), "the search does not see the batch actors' logs"
    assert not any(MARKER_NAME.encode() in content for content in contents)


def test_refuses_an_unknown_output_format_before_starting_anything(archive, model_dir, tmp_path):
    """A ``.xlsx`` output is refused with a message naming the formats, and no file is written."""
    with pytest.raises(BatchSettingsError, match=r"\.parquet or \.csv"):
        score_files(model_dir, expand_inputs([str(archive)]), tmp_path / "preds.xlsx", engine="ray")
    assert not list(tmp_path.iterdir())


def test_refuses_a_pool_larger_than_the_cluster(ray_cluster, archive, model_dir, tmp_path):
    """More workers than the cluster has CPUs is an error naming both numbers, not a run that waits forever."""
    import ray

    cpus = int(ray.cluster_resources()["CPU"])
    with pytest.raises(BatchSettingsError, match=f"the Ray cluster has {cpus}"):
        score_files(
            model_dir,
            [archive / MARKER_NAME],
            tmp_path / "p.csv",
            engine="ray",
            ray_settings=RaySettings(workers=cpus + 1),
        )
    assert not list(tmp_path.iterdir())


def test_local_engine_refuses_ray_options(archive, model_dir, tmp_path):
    """``--workers`` without ``--engine ray`` would be silently ignored, so it is refused."""
    with pytest.raises(BatchSettingsError, match="need --engine ray"):
        score_files(model_dir, [archive / MARKER_NAME], tmp_path / "p.csv", ray_settings=RaySettings(workers=2))


def test_an_unreachable_cluster_address_fails_fast_with_a_hint():
    """Nothing listens on port 1: the error says so at once instead of Ray retrying for minutes."""
    with pytest.raises(RayUnavailable, match=r"Nothing answers at 127\.0\.0\.1:1 .*ray start --head"):
        check_reachable("127.0.0.1:1")


def test_schema_has_exactly_the_columns_of_a_reading_row():
    """Both engines write SCHEMA; a column added to Reading.to_row must be added to it, not silently dropped."""
    from pneumo_core.reading import Reading

    assert SCHEMA.names == list(Reading(model="cnn", threshold=0.5).to_row("x.png"))
