"""Turn command-line inputs (files, folders, glob patterns) into the list of files to read.

Shared by ``predict`` and ``batch``. Folders are walked recursively and every file in them is
listed, images or not: the reader then refuses a non-image with a reason, so nothing in an
archive is silently skipped.

Usage:
    paths = expand_inputs(["archive/", "extra/*.dcm", "one.png"])
"""

from __future__ import annotations

import glob
import os
from pathlib import Path


class NoInputsFound(ValueError):
    """A folder or glob pattern on the command line matched no files; str(error) names it."""


def expand_inputs(items: list[str]) -> list[Path]:
    """The files named by ``items``, in the order given, each listed once.

    Args:
        items: File paths, folders (walked recursively, symlinked folders not followed, files in
            sorted order) or glob patterns (``*``, ``?``, ``[...]``; ``**`` matches any depth).
            A plain path that is not a folder is passed through even if it does not exist, so the
            reader reports it as unreadable instead of it vanishing.

    Returns:
        The files, duplicates removed (first occurrence kept).

    Raises:
        NoInputsFound: If a folder or glob pattern contains or matches no files.
    """
    paths: dict[Path, None] = {}
    for item in items:
        for path in _expand_one(item):
            paths.setdefault(path, None)
    return list(paths)


def _expand_one(item: str) -> list[Path]:
    if glob.has_magic(item):
        files = [file for match in sorted(glob.glob(item, recursive=True)) for file in _files_of(Path(match))]
        if not files:
            raise NoInputsFound(f"No files match the pattern {item!r}.")
        return files
    path = Path(item)
    if path.is_dir():
        files = _files_of(path)
        if not files:
            raise NoInputsFound(f"The folder {item} contains no files.")
        return files
    return [path]


def _files_of(path: Path) -> list[Path]:
    """``path`` itself, or every non-folder entry below it when it is a folder (sorted, depth first)."""
    if not path.is_dir():
        return [path]
    files = []
    for folder, subfolders, names in os.walk(path):
        subfolders.sort()
        files.extend(Path(folder) / name for name in sorted(names))
    return files
