"""Safe reading of an uploaded ``.zip`` of images, entirely in memory.

Every member is checked before anything is handed out: the number of members, each member's
declared and real size, the total size, the compression ratio, paths that would escape the
archive's root (``../``, absolute paths, drive letters), symbolic links, encrypted members and
archives nested inside the archive. One bad member refuses the whole archive with a reason a
user can act on, because an archive built to harm (a zip bomb, a path-traversal zip) should not
be half-read. Nothing is ever written to disk.

Operating-system clutter (folders, ``__MACOSX/`` resource forks, ``.DS_Store``, ``Thumbs.db`` and
other hidden files) is left out silently.

Usage:
    contents = open_zip(upload_bytes)          # raises ArchiveRefused
    for name, data in contents.members():      # one decompressed member in memory at a time
        ...
"""

from __future__ import annotations

import io
import stat
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from pneumo_core.imaging import MAX_BYTES

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".jar", ".cab", ".iso")
# Magic bytes of archive and compressed formats, so a nested archive is caught whatever its name.
_ARCHIVE_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"7z\xbc\xaf\x27\x1c", b"Rar!")
_TAR_MAGIC_OFFSET = 257
_SNIFF_BYTES = 264
_CLUTTER_NAMES = {"thumbs.db", "desktop.ini"}
_CHUNK = 1 << 20


class ArchiveRefused(ValueError):
    """A zip file that is not read; ``str(error)`` is the user-facing reason."""


@dataclass(frozen=True)
class ArchiveLimits:
    """What an archive may hold.

    Attributes:
        max_members: Most files (folders and clutter not counted).
        max_member_bytes: Largest uncompressed file: the size of the largest image we accept.
        max_total_bytes: Largest sum of uncompressed file sizes.
        max_ratio: Highest uncompressed/compressed ratio of one member; images barely compress,
            a zip bomb compresses a thousandfold.
        ratio_floor_bytes: Members smaller than this are exempt from the ratio check (a tiny file
            that compresses well cannot do harm).
    """

    max_members: int = 10_000
    max_member_bytes: int = MAX_BYTES
    max_total_bytes: int = 2 * 1024**3
    max_ratio: float = 100.0
    ratio_floor_bytes: int = 1024**2


DEFAULT_LIMITS = ArchiveLimits()


@dataclass(frozen=True)
class ZipContents:
    """A checked archive: its members can be read one at a time with :meth:`members`."""

    data: bytes
    infos: tuple[zipfile.ZipInfo, ...]

    def __len__(self) -> int:
        return len(self.infos)

    @property
    def names(self) -> tuple[str, ...]:
        """The member paths, in archive order (``/``-separated, relative to the archive's root)."""
        return tuple(_clean_name(info.filename) for info in self.infos)

    def members(self, indices: Iterable[int] | None = None) -> Iterator[tuple[str, bytes]]:
        """Yield ``(path, bytes)`` for each member (or those at ``indices``), decompressing one at a time."""
        chosen = self.infos if indices is None else [self.infos[index] for index in indices]
        with zipfile.ZipFile(io.BytesIO(self.data)) as archive:
            for info in chosen:
                yield _clean_name(info.filename), _read_bounded(archive, info, info.file_size)


def is_zip(data: bytes) -> bool:
    """Whether bytes look like a zip archive (by their first four bytes)."""
    return data[:4] in ZIP_MAGIC


def open_zip(data: bytes, limits: ArchiveLimits = DEFAULT_LIMITS) -> ZipContents:
    """Check a zip archive completely, without writing anything to disk.

    The central directory is checked first (names, declared sizes, ratios, member types); then
    every member is decompressed once, in chunks that are counted and dropped, to prove that it
    is no larger than it claims, that it is intact, and that it is not itself an archive.

    Args:
        data: The bytes of the ``.zip`` file.
        limits: What the archive may hold.

    Returns:
        The checked archive, whose :meth:`ZipContents.members` yield the files.

    Raises:
        ArchiveRefused: With the reason, for the first problem found.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as error:
        raise ArchiveRefused("This file is not a readable zip archive (it is corrupt or not a zip).") from error
    with archive:
        infos = tuple(info for info in archive.infolist() if not _is_clutter(info))
        _check_directory(infos, limits)
        for info in infos:
            _check_content(archive, info)
    return ZipContents(data=data, infos=infos)


def _is_clutter(info: zipfile.ZipInfo) -> bool:
    """Folders and operating-system files that are not part of what the user meant to send."""
    if info.is_dir():
        return True
    parts = _clean_name(info.filename).split("/")
    return parts[0] == "__MACOSX" or parts[-1].startswith(".") or parts[-1].lower() in _CLUTTER_NAMES


def _check_directory(infos: tuple[zipfile.ZipInfo, ...], limits: ArchiveLimits) -> None:
    """Checks that need only the central directory."""
    if not infos:
        raise ArchiveRefused("The zip archive contains no files.")
    if len(infos) > limits.max_members:
        raise ArchiveRefused(
            f"The zip archive holds {len(infos):,} files; the limit is {limits.max_members:,}. "
            "Split it into smaller ones."
        )
    total = 0
    for info in infos:
        _check_member_header(info, limits)
        total += info.file_size
        if total > limits.max_total_bytes:
            raise ArchiveRefused(
                f"The zip archive unpacks to more than {limits.max_total_bytes / 1024**3:.0f} GB; "
                "split it into smaller ones."
            )


def _check_member_header(info: zipfile.ZipInfo, limits: ArchiveLimits) -> None:
    name = info.filename
    if _escapes_root(name):
        raise ArchiveRefused(
            f"The zip archive is refused: the member {name!r} points outside the archive "
            "(an absolute path or '..'). Re-create the archive from the folder itself."
        )
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ArchiveRefused(
            f"The zip archive is refused: {name!r} is a symbolic link. Archive the files themselves, not links."
        )
    if info.flag_bits & 0x1:
        raise ArchiveRefused(
            f"The zip archive is refused: {name!r} is encrypted. Upload an archive without a password."
        )
    if name.lower().endswith(ARCHIVE_SUFFIXES):
        raise ArchiveRefused(
            f"The zip archive is refused: it contains another archive ({name!r}). Unpack nested archives first."
        )
    if info.file_size > limits.max_member_bytes:
        raise ArchiveRefused(
            f"The zip archive is refused: {name!r} unpacks to {info.file_size / 1024**2:,.0f} MB; "
            f"no image may be larger than {limits.max_member_bytes / 1024**2:.0f} MB."
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size >= limits.ratio_floor_bytes and ratio > limits.max_ratio:
        raise ArchiveRefused(
            f"The zip archive is refused: {name!r} is compressed {ratio:,.0f} to 1, far more than any "
            "X-ray image (a zip bomb?)."
        )


def _check_content(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Decompress one member in counted chunks: real size, integrity and nested-archive magic."""
    size = 0
    head = b""
    try:
        with archive.open(info) as member:
            while chunk := member.read(_CHUNK):
                if len(head) < _SNIFF_BYTES:
                    head += chunk[: _SNIFF_BYTES - len(head)]
                size += len(chunk)
                if size > info.file_size:
                    raise ArchiveRefused(_size_lie(info))
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as error:
        raise ArchiveRefused(_corrupt(info, error)) from error
    if size != info.file_size:
        raise ArchiveRefused(_size_lie(info))
    if head.startswith(_ARCHIVE_MAGIC) or head[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + 5] == b"ustar":
        raise ArchiveRefused(
            f"The zip archive is refused: {info.filename!r} is itself an archive. Unpack nested archives first."
        )


def _read_bounded(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """A member's bytes, never reading more than ``limit`` bytes (the archive was checked, but be safe)."""
    try:
        with archive.open(info) as member:
            data = member.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise ArchiveRefused(_corrupt(info, error)) from error
    if len(data) > limit:
        raise ArchiveRefused(_size_lie(info))
    return data


def _size_lie(info: zipfile.ZipInfo) -> str:
    return (
        f"The zip archive is refused: {info.filename!r} unpacks to more than the "
        f"{info.file_size:,} bytes its header declares (a zip bomb?)."
    )


def _corrupt(info: zipfile.ZipInfo, error: Exception) -> str:
    if isinstance(error, NotImplementedError):
        return f"The zip archive is refused: {info.filename!r} uses a compression method we cannot read."
    if "CRC" in str(error):
        # zipfile stops at the declared size, so a member that holds more fails its checksum.
        return (
            f"The zip archive is refused: {info.filename!r} does not match its header (it is corrupt, "
            "or holds more data than it declares: a zip bomb?)."
        )
    return f"The zip archive is refused: {info.filename!r} is corrupt and cannot be unpacked."


def _clean_name(name: str) -> str:
    """A member path with ``/`` separators (some Windows tools write ``\\``)."""
    return name.replace("\\", "/")


def _escapes_root(name: str) -> bool:
    """Whether a member path is absolute, has a drive letter, a NUL byte or a ``..`` component."""
    cleaned = _clean_name(name)
    if "\x00" in cleaned or cleaned.startswith("/") or (len(cleaned) > 1 and cleaned[1] == ":"):
        return True
    return ".." in PurePosixPath(cleaned).parts
