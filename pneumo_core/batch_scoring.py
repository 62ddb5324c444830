"""Many images at once: what to read (files, folders, zips, uploads), their true labels, and the result table.

Used by ``python -m pneumo_core predict`` and the Batch page. Images are streamed through
:func:`pneumo_core.reading.read_sources`, so at most one batch of decoded images is in memory, and a
zip archive is decompressed one member at a time after :func:`pneumo_core.archive.open_zip` checked it.

- Command line: files named explicitly are always read (an unreadable one gets a refused row);
  folders are walked recursively and only supported files (PNG, JPEG, DICOM, by suffix or by their
  first bytes) are read, every other entry is skipped with a reason; a ``.zip`` is read from memory.
- Uploads: image files and ``.zip`` archives; inside an archive, files whose suffix is not an image
  format are skipped with a reason, and ``.csv`` files are read as labels (columns ``file,label``).
- True labels come from a ``NORMAL/`` or ``PNEUMONIA/`` folder in an image's path, or from a labels CSV
  (which wins where both exist); labelled images give a local validation.

Usage:
    batch = command_line_batch(["site_archive/", "extra.dcm"])
    rows = score(Reader(loaded), batch)
    validation = local_validation(rows, loaded.threshold)
"""

from __future__ import annotations

import csv
import glob
import io
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TextIO

import pandas as pd

from pneumo_core.archive import DEFAULT_LIMITS, ArchiveRefused, ZipContents, is_zip, open_zip
from pneumo_core.diagnosis import Band, percent, verdict
from pneumo_core.imaging import SUPPORTED_SUFFIXES, is_supported_file
from pneumo_core.local_validation import (
    LocalValidation,
    label_from_path,
    match_label,
    read_labels_csv,
    validate_locally,
)
from pneumo_core.reading import DEFAULT_BATCH_SIZE, Reader, Reading, Source, read_sources
from pneumo_core.sources import expand_inputs

LABELS_SUFFIX = ".csv"
Progress = Callable[[int, int], None]
Through = Callable[[Callable[[], list[Reading]]], list[Reading]]
# How often (at most) a progress callback is told, in fractions of the total.
PROGRESS_STEP = 0.01


@dataclass(frozen=True)
class Skipped:
    """An entry that is not read, and why (shown to the user; never logged)."""

    name: str
    reason: str


@dataclass(frozen=True)
class ArchivePart:
    """The members of a checked archive to read, named ``prefix + member path``."""

    prefix: str
    contents: ZipContents
    indices: tuple[int, ...]

    def sources(self) -> Iterator[Source]:
        """Yield ``(name, bytes)`` per chosen member, decompressing one member at a time."""
        for name, data in self.contents.members(self.indices):
            yield self.prefix + name, data


@dataclass(frozen=True)
class Batch:
    """What to read: plain sources and checked archives, in order, plus skipped entries and labels.

    Attributes:
        parts: ``(name, bytes | Path)`` sources and archive parts, in the order given.
        count: How many images will be read (the progress bar's total).
        skipped: Entries that will not be read.
        labels: True labels from labels CSVs, ``{file: "NORMAL" | "PNEUMONIA"}``.
    """

    parts: tuple[Source | ArchivePart, ...]
    count: int
    skipped: tuple[Skipped, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    def sources(self) -> Iterator[Source]:
        """Yield ``(name, bytes | Path)`` lazily: archive members are decompressed one at a time."""
        for part in self.parts:
            if isinstance(part, ArchivePart):
                yield from part.sources()
            else:
                yield part

    def truth(self, name: str) -> str | None:
        """The true label of an image: the labels CSV first, else a NORMAL/PNEUMONIA folder in its path."""
        return match_label(name, self.labels) or label_from_path(name)


# --- What to read -------------------------------------------------------------------------------


def command_line_batch(items: Sequence[str]) -> Batch:
    """The images named on a command line.

    Args:
        items: Files, folders (walked recursively) and glob patterns (see :func:`expand_inputs`).

    Raises:
        ValueError: If a folder or pattern holds no files, or no supported image is left to read.
        ArchiveRefused: If a ``.zip`` given on the command line fails its checks.
    """
    parts: list = []
    skipped: list[Skipped] = []
    seen: set[Path] = set()
    count = 0
    for item in items:
        from_folder = glob.has_magic(item) or Path(item).is_dir()
        for path in expand_inputs([item]):
            if path in seen:
                continue
            seen.add(path)
            if _zip_path(path):
                contents = open_zip(_read_archive(path))
                part, member_skips = _archive_part(f"{path}/", contents)
                parts.append(part)
                skipped += member_skips
                count += len(part.indices)
            elif not from_folder or is_supported_file(path):
                parts.append((str(path), path))
                count += 1
            elif not path.name.startswith("."):
                skipped.append(Skipped(str(path), _folder_skip_reason(path)))
    if not count:
        raise ValueError("No PNG, JPEG or DICOM image to read in " + ", ".join(items) + ".")
    return Batch(parts=tuple(parts), count=count, skipped=tuple(skipped))


def upload_batch(uploads: Sequence[tuple[str, bytes]], labels_csv: bytes | None = None) -> Batch:
    """The images of uploaded files: images as they are, zip archives checked and expanded.

    Args:
        uploads: ``(file name, bytes)`` per uploaded file. A ``.zip`` (by content) is expanded; a
            ``.csv`` is read as labels; anything else is read as an image.
        labels_csv: An optional separately uploaded labels CSV.

    Raises:
        ArchiveRefused: If an archive fails its checks (the message names the archive's problem).
        LabelsError: If a labels CSV cannot be used.
    """
    parts: list = []
    skipped: list[Skipped] = []
    labels: dict[str, str] = dict(read_labels_csv(labels_csv)) if labels_csv is not None else {}
    archives = sum(is_zip(data) for _, data in uploads)
    count = 0
    for name, data in uploads:
        if is_zip(data):
            contents = open_zip(data)
            prefix = f"{PurePosixPath(name).stem}/" if archives > 1 else ""
            part, member_skips = _archive_part(prefix, contents)
            labels.update(_labels_in_archive(contents, prefix))
            parts.append(part)
            skipped += member_skips
            count += len(part.indices)
        elif name.lower().endswith(LABELS_SUFFIX):
            labels.update(read_labels_csv(data))
        else:
            parts.append((name, data))
            count += 1
    return Batch(parts=tuple(parts), count=count, skipped=tuple(skipped), labels=labels)


def _zip_path(path: Path) -> bool:
    if path.suffix.lower() == ".zip":
        return True
    try:
        with path.open("rb") as handle:
            return is_zip(handle.read(4))
    except OSError:
        return False


def _read_archive(path: Path) -> bytes:
    """A zip file's bytes, refusing files larger than an archive may unpack to."""
    size = path.stat().st_size
    if size > DEFAULT_LIMITS.max_total_bytes:
        raise ArchiveRefused(f"{path} is larger than {DEFAULT_LIMITS.max_total_bytes / 1024**3:.0f} GB.")
    return path.read_bytes()


def _archive_part(prefix: str, contents: ZipContents) -> tuple[ArchivePart, list[Skipped]]:
    """The members of an archive to read as images, and the others as skipped entries."""
    chosen = []
    skipped = []
    for index, name in enumerate(contents.names):
        suffix = PurePosixPath(name).suffix.lower()
        if suffix == LABELS_SUFFIX:
            continue
        if suffix in SUPPORTED_SUFFIXES or not suffix or suffix[1:].isdigit():
            chosen.append(index)
        else:
            skipped.append(Skipped(prefix + name, "not a PNG, JPEG or DICOM file"))
    return ArchivePart(prefix, contents, tuple(chosen)), skipped


def _labels_in_archive(contents: ZipContents, prefix: str) -> dict[str, str]:
    """Labels from the ``.csv`` files of an archive (file paths in them are relative to the archive)."""
    labels: dict[str, str] = {}
    csv_members = [index for index, name in enumerate(contents.names) if name.lower().endswith(LABELS_SUFFIX)]
    for _, data in contents.members(csv_members):
        labels.update({prefix + file: label for file, label in read_labels_csv(data).items()})
    return labels


def _folder_skip_reason(path: Path) -> str:
    if path.is_symlink() and not path.exists():
        return "it is a broken symbolic link"
    if path.exists() and not path.is_file():
        return "it is not a regular file (a pipe, socket or device)"
    return "it is not a PNG, JPEG or DICOM image"


# --- Reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchRow:
    """One image's reading and, when known, its true label."""

    name: str
    reading: Reading
    truth: str | None = None

    def to_row(self) -> dict:
        """The reading's flat row (:meth:`Reading.to_row`) plus ``truth``."""
        return {**self.reading.to_row(self.name), "truth": self.truth}


class _QueuedReader:
    """A reader whose batched forward passes each go through ``through`` (e.g. a shared work queue)."""

    def __init__(self, reader: Reader, through: Through) -> None:
        self._reader = reader
        self._through = through

    def read_many(self, xrays: Sequence, *args, **kwargs) -> list[Reading]:
        return self._through(lambda: self._reader.read_many(xrays, *args, **kwargs))

    def refused(self, reason: str) -> Reading:
        return self._reader.refused(reason)


def stream(
    reader: Reader,
    batch: Batch,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
    through: Through | None = None,
) -> Iterator[BatchRow]:
    """Yield one :class:`BatchRow` per image, in order, reading ``batch_size`` images at a time.

    Args:
        reader: The model to read with.
        batch: What to read.
        batch_size: How many decoded images are held in memory at once.
        progress: Called with ``(done, total)`` about every 1% of the images and at the end.
        through: Runs each batch's forward pass, e.g. ``WORK_QUEUE.run``, so that a long batch
            takes turns with other users' single images instead of holding the model for minutes.
    """
    step = max(1, int(batch.count * PROGRESS_STEP))
    if through is not None:
        reader = _QueuedReader(reader, through)
    for done, (name, reading) in enumerate(read_sources(reader, batch.sources(), batch_size), start=1):
        yield BatchRow(name=name, reading=reading, truth=batch.truth(name))
        if progress is not None and (done % step == 0 or done == batch.count):
            progress(done, batch.count)


def score(
    reader: Reader,
    batch: Batch,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
    through: Through | None = None,
) -> list[BatchRow]:
    """All rows of :func:`stream` (readings only: no image is kept)."""
    return list(stream(reader, batch, batch_size, progress, through))


# --- Results ------------------------------------------------------------------------------------


def results_table(rows: Sequence[BatchRow], band: Band | None = None) -> pd.DataFrame:
    """The table a clinician reads: file, accepted, probability (%), reading, subtype, true label, reason.

    Args:
        rows: The batch's rows.
        band: The model's grey band of indeterminate scores: a probability inside it reads
            ``INDETERMINATE``, as on the Diagnose page (the CSV keeps the label at the threshold).
    """
    flat = [row.to_row() for row in rows]
    table = pd.DataFrame(
        {
            "file": [row.name for row in rows],
            "accepted": ["yes" if row.reading.accepted else "no" for row in rows],
            "probability of pneumonia": [
                "" if row.reading.probability is None else percent(row.reading.probability) for row in rows
            ],
            "reading": [verdict(row.reading, band) if row.reading.accepted else "" for row in rows],
        }
    )
    if any(item.get("subtype") for item in flat):
        table["subtype"] = [item.get("subtype") or "" for item in flat]
    if any(row.truth for row in rows):
        table["true label"] = [row.truth or "" for row in rows]
    table["reason"] = [row.reading.reason or "" for row in rows]
    return table


def csv_bytes(rows: Sequence[BatchRow]) -> bytes:
    """The rows as CSV (UTF-8): the columns of :meth:`Reading.to_row` plus ``truth``."""
    buffer = io.StringIO()
    writer = None
    for row in rows:
        item = row.to_row()
        if writer is None:
            writer = csv.DictWriter(buffer, fieldnames=list(item), lineterminator="\n")
            writer.writeheader()
        writer.writerow(item)
    return buffer.getvalue().encode("utf-8")


def local_validation(rows: Sequence[BatchRow], threshold: float) -> LocalValidation | None:
    """Figures on the labelled images the model accepted, or ``None`` when none is labelled and accepted."""
    labelled = [row for row in rows if row.truth]
    read = [row for row in labelled if row.reading.accepted and row.reading.probability is not None]
    if not read:
        return None
    return validate_locally(
        [row.truth for row in read],
        [row.reading.probability for row in read],
        threshold,
        n_refused=len(labelled) - len(read),
    )


# --- Command-line progress ----------------------------------------------------------------------


class ProgressBar:
    """A small progress bar on a text stream (stderr): redrawn in place on a terminal, a line per 10% otherwise.

    Usage:
        bar = ProgressBar(total=5000)
        bar.update(done=37)
        bar.write("a line of output")   # printed above the bar
        bar.close()
    """

    WIDTH = 30
    REDRAW_S = 0.1

    def __init__(self, total: int, stream: TextIO | None = None, label: str = "images") -> None:
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.label = label
        self.done = 0
        self.started = time.monotonic()
        self.interactive = self.stream.isatty()
        self._last_draw = 0.0
        self._last_decile = -1

    def update(self, done: int) -> None:
        """Set how many items are done and redraw when due."""
        self.done = done
        if self.interactive:
            now = time.monotonic()
            if now - self._last_draw >= self.REDRAW_S or done >= self.total:
                self._last_draw = now
                self.stream.write("\r" + self.line())
                self.stream.flush()
        else:
            decile = done * 10 // self.total
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(self.line() + "\n")
                self.stream.flush()

    def line(self) -> str:
        """E.g. ``[#########---------------------]  30% 1500/5000 images, 42.1/s, 83 s left``."""
        fraction = min(self.done / self.total, 1.0)
        filled = int(fraction * self.WIDTH)
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = f", {left:.0f} s left" if rate > 0 and self.done < self.total else ""
        return (
            f"[{'#' * filled}{'-' * (self.WIDTH - filled)}] {fraction:4.0%} "
            f"{self.done}/{self.total} {self.label}, {rate:.1f}/s{eta}"
        )

    def write(self, text: str, stream: TextIO | None = None) -> None:
        """Print a line (to ``stream``, default stdout) without mangling the bar on a terminal."""
        if self.interactive:
            self.stream.write("\r\033[K")
            self.stream.flush()
        print(text, file=stream or sys.stdout, flush=self.interactive)
        if self.interactive:
            self.stream.write(self.line())
            self.stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()
