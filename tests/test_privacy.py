"""Uploaded X-rays are never written to disk or logged by the app.

A sample X-ray is copied under a distinctive file name, every file under the watched
folders is listed (path, size, mtime), the copy is uploaded through a real browser and
diagnosed, and then every new or modified file is searched for the upload's name and for
slices of its bytes. The server's own stdout/stderr must not mention the file either.

Watched: the repository (without ``.venv`` and ``.git``), the temporary folder, the top
level of the home folder and the home sub-folders where Python libraries keep state
(``~/.streamlit``, ``~/.cache``, ``~/.keras``, ``~/.local``). Toolchains such as ``~/.pyenv``
are not walked: nothing the app does writes there, and walking them takes far too long.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from browser_support import (
    REPO_ROOT,
    SAMPLES_DIR,
    SCREENSHOTS_DIR,
    app_page,
    streamlit_server,
    upload,
    wait_for_result,
)

pytestmark = pytest.mark.browser

UPLOAD_NAME = "patient-zz-unique-123.jpeg"
PRUNED_DIRS = {".venv", ".git", "node_modules"}
HOME_STATE_DIRS = (".streamlit", ".cache", ".keras", ".local")

Snapshot = dict[str, tuple[int, int]]


@pytest.fixture(scope="module")
def server(browser, trained_models_dir):
    """The app served on a free port with the tiny test models; its output goes to privacy_server.log."""
    with streamlit_server(trained_models_dir, "privacy_server.log") as running:
        yield running


def watched_roots() -> list[tuple[Path, bool]]:
    """Folders to list, each with whether to walk it recursively."""
    home = Path.home()
    roots = [(REPO_ROOT, True), (Path(tempfile.gettempdir()), True), (home, False)]
    roots += [(home / name, True) for name in HOME_STATE_DIRS]
    return roots


def snapshot(roots: list[tuple[Path, bool]]) -> Snapshot:
    """``{path: (size, mtime_ns)}`` of every regular file under ``roots`` (symlinks not followed)."""
    files: Snapshot = {}
    for root, recursive in roots:
        pending = [root]
        while pending:
            try:
                scanner = os.scandir(pending.pop())
            except OSError:
                continue
            with scanner:
                for entry in scanner:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if recursive and entry.name not in PRUNED_DIRS:
                                pending.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            stat = entry.stat(follow_symlinks=False)
                            files[entry.path] = (stat.st_size, stat.st_mtime_ns)
                    except OSError:
                        continue
    return files


def changed_files(before: Snapshot, after: Snapshot, ignored: list[Path]) -> list[Path]:
    """Files that are new or whose size or mtime changed, outside the ``ignored`` paths."""
    changed = [Path(path) for path, signature in after.items() if before.get(path) != signature]
    return [path for path in changed if not any(path == skip or skip in path.parents for skip in ignored)]


def needles(path: Path) -> list[bytes]:
    """What would betray the upload: its name (UTF-8 and UTF-16) and three 64-byte slices of its data.

    The slices come from the compressed image data, which is unique to this image (the
    JPEG headers are shared with the other samples).
    """
    data = path.read_bytes()
    slices = [data[len(data) * k // 4 : len(data) * k // 4 + 64] for k in (1, 2, 3)]
    stem = path.stem
    return [stem.encode(), stem.encode("utf-16-le"), *slices]


def files_containing(paths: list[Path], patterns: list[bytes]) -> list[Path]:
    """The files among ``paths`` that contain any of ``patterns``."""
    found = []
    for path in paths:
        try:
            with path.open("rb") as file:
                if os.fstat(file.fileno()).st_size == 0:
                    continue
                with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as content:
                    if any(content.find(pattern) != -1 for pattern in patterns):
                        found.append(path)
        except (OSError, ValueError):
            continue  # vanished, unreadable or not mappable (e.g. a special file)
    return found


def test_upload_is_not_written_to_disk_or_logged(browser, server, tmp_path):
    """After uploading and diagnosing an X-ray, no new or modified file and no server output contains it."""
    source = tmp_path / UPLOAD_NAME
    shutil.copyfile(SAMPLES_DIR / "person255_bacteria_1188.jpeg", source)
    patterns = needles(source)
    assert files_containing([source], patterns) == [source], "the search must find the upload in the upload itself"
    roots = watched_roots()
    ignored = [SCREENSHOTS_DIR, server.log_path]

    with app_page(browser, server.url, "privacy_upload") as page:
        before = snapshot(roots)
        upload(page, source)
        wait_for_result(page)
        page.get_by_test_id("stFileChipName").filter(has_text="123.jpeg").wait_for()
    after = snapshot(roots)

    changed = changed_files(before, after, ignored)
    leaks = files_containing(changed, patterns)
    assert not leaks, f"the upload's name or bytes were written to: {leaks}"
    log = server.log_path.read_bytes()
    assert not any(pattern in log for pattern in patterns), "the server's output mentions the upload"
    assert source.stem not in server.log_text()


def test_leak_search_finds_a_planted_copy(tmp_path):
    """The leak search is not vacuous: a copy of the bytes and a log line naming the file are both caught."""
    source = tmp_path / "source" / UPLOAD_NAME
    source.parent.mkdir()
    shutil.copyfile(SAMPLES_DIR / "person255_bacteria_1188.jpeg", source)
    roots = [(Path(tempfile.gettempdir()), True)]
    before = snapshot(roots)
    copy = tmp_path / "upload-cache.bin"
    copy.write_bytes(b"header" + source.read_bytes())
    log = tmp_path / "server.log"
    log.write_text(f"INFO received {source.name}\n")
    after = snapshot(roots)

    changed = changed_files(before, after, ignored=[source.parent])
    assert {copy, log} <= set(changed)
    assert set(files_containing(changed, needles(source))) == {copy, log}
