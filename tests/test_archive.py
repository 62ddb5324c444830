"""The zip checks of ``pneumo_core.archive``: bombs, path traversal, links, nesting and limits refused."""

from __future__ import annotations

import io
import stat
import struct
import zipfile

import pytest

from pneumo_core.archive import ArchiveLimits, ArchiveRefused, is_zip, open_zip


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive holding ``members`` (path -> bytes), built in memory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def refusal(data: bytes, limits: ArchiveLimits | None = None) -> str:
    """The reason ``open_zip`` refuses ``data`` (fails the test when it is accepted)."""
    with pytest.raises(ArchiveRefused) as caught:
        open_zip(data, limits) if limits else open_zip(data)
    return str(caught.value)


def test_members_are_yielded_with_paths_and_bytes_and_clutter_left_out():
    """Files come out with their folder paths; folders, __MACOSX and hidden files are left out silently."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("site/NORMAL/", b"")
        archive.writestr("site/NORMAL/a.jpeg", b"A" * 10)
        archive.writestr("site\\PNEUMONIA\\b.png", b"B" * 20)
        archive.writestr("__MACOSX/site/NORMAL/._a.jpeg", b"junk")
        archive.writestr("site/.DS_Store", b"junk")
        archive.writestr("site/Thumbs.db", b"junk")
    contents = open_zip(buffer.getvalue())
    assert len(contents) == 2
    assert contents.names == ("site/NORMAL/a.jpeg", "site/PNEUMONIA/b.png")
    assert list(contents.members()) == [("site/NORMAL/a.jpeg", b"A" * 10), ("site/PNEUMONIA/b.png", b"B" * 20)]


def test_is_zip_by_magic():
    """A zip is recognised by its first bytes, an image is not."""
    assert is_zip(zip_bytes({"a.png": b"x"}))
    assert not is_zip(b"\x89PNG\r\n\x1a\n" + b"0" * 20)


def test_zip_bomb_claiming_gigabytes_is_refused_from_its_header():
    """A highly compressible member that unpacks to gigabytes is refused before it is decompressed."""
    data = zip_bytes({"NORMAL/bomb.png": b"\0" * (2 * 1024**2)})
    # Rewrite the declared sizes (local header and central directory) to 3 GB, as a bomb claims.
    patched = bytearray(data)
    struct.pack_into("<I", patched, patched.find(b"PK\x03\x04") + 22, 3_000_000_000)
    struct.pack_into("<I", patched, patched.find(b"PK\x01\x02") + 24, 3_000_000_000)
    reason = refusal(bytes(patched))
    assert "'NORMAL/bomb.png' unpacks to 2,861 MB" in reason


def test_highly_compressed_member_is_refused_by_its_ratio():
    """A member compressed a thousandfold (honest sizes, under the size limits) is refused as a likely bomb."""
    reason = refusal(zip_bytes({"PNEUMONIA/zeros.png": b"\0" * (20 * 1024**2)}))
    assert "compressed" in reason and "to 1" in reason and "zip bomb" in reason


def test_member_lying_about_its_size_is_refused():
    """A member that holds more data than its header declares is refused (never read past the declared size)."""
    data = bytearray(zip_bytes({"NORMAL/liar.png": bytes(range(256)) * 4096}))
    struct.pack_into("<I", data, data.find(b"PK\x03\x04") + 22, 1000)
    struct.pack_into("<I", data, data.find(b"PK\x01\x02") + 24, 1000)
    reason = refusal(bytes(data))
    assert "'NORMAL/liar.png' does not match its header" in reason and "zip bomb" in reason


def test_total_uncompressed_size_limit():
    """The sum of the members' sizes is capped."""
    data = zip_bytes({f"NORMAL/{i}.png": bytes(range(256)) * 40 for i in range(5)})
    reason = refusal(data, ArchiveLimits(max_total_bytes=30_000))
    assert "unpacks to more than" in reason


def test_per_member_size_limit():
    """No single member may exceed the largest image size."""
    reason = refusal(zip_bytes({"big.png": bytes(range(256)) * 100}), ArchiveLimits(max_member_bytes=1000))
    assert "'big.png' unpacks to" in reason and "no image may be larger" in reason


def test_member_count_limit():
    """An archive with too many files is refused with the count and the limit."""
    reason = refusal(zip_bytes({f"{i}.png": b"x" for i in range(6)}), ArchiveLimits(max_members=5))
    assert "holds 6 files; the limit is 5" in reason


ESCAPING_NAMES = ["../evil.png", "NORMAL/../../evil.png", "/etc/evil.png", "C:/evil.png", "..\\evil.png"]


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_paths_escaping_the_root_are_refused(name):
    """'../' components, absolute paths and drive letters refuse the whole archive."""
    reason = refusal(zip_bytes({"NORMAL/ok.png": b"x", name: b"y"}))
    assert "points outside the archive" in reason


def test_symbolic_link_member_is_refused():
    """A member stored as a symbolic link is refused."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("NORMAL/link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    assert "is a symbolic link" in refusal(buffer.getvalue())


def test_nested_archive_is_refused_by_name_and_by_content():
    """A zip inside the zip is refused, whether it is named .zip or disguised as an image."""
    inner = zip_bytes({"a.png": b"x"})
    assert "contains another archive" in refusal(zip_bytes({"inner.zip": inner}))
    assert "is itself an archive" in refusal(zip_bytes({"NORMAL/disguised.png": inner}))


def test_not_a_zip_and_empty_zip_are_refused():
    """Bytes that are not a zip, and a zip with only folders, get clear reasons."""
    assert "not a readable zip archive" in refusal(b"PK\x03\x04 but garbage")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("NORMAL/", b"")
    assert "contains no files" in refusal(buffer.getvalue())


def test_encrypted_member_is_refused():
    """A password-protected member (encryption flag set) is refused."""
    data = bytearray(zip_bytes({"a.png": b"x" * 100}, zipfile.ZIP_STORED))
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        position = data.find(signature) + offset
        struct.pack_into("<H", data, position, struct.unpack_from("<H", data, position)[0] | 0x1)
    assert "is encrypted" in refusal(bytes(data))


def test_chosen_members_only_are_decompressed():
    """``members(indices)`` yields just those members, in the order asked."""
    contents = open_zip(zip_bytes({"a.png": b"A", "b.png": b"B", "c.png": b"C"}))
    assert list(contents.members([2, 0])) == [("c.png", b"C"), ("a.png", b"A")]
