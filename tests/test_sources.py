"""Tests of pneumo_core.sources.expand_inputs: folders, glob patterns and plain paths on a command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumo_core.sources import NoInputsFound, expand_inputs


@pytest.fixture
def tree(tmp_path) -> Path:
    """``a.png``, ``notes.txt``, ``sub/b.dcm``, ``sub/deeper/c.jpeg`` and an empty folder."""
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    for name in ("a.png", "notes.txt", "sub/b.dcm", "sub/deeper/c.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_a_folder_lists_every_file_below_it_images_or_not(tree):
    """Nothing in a folder is skipped: the reader, not the listing, refuses non-images with a reason."""
    assert sorted(expand_inputs([str(tree)])) == sorted(
        tree / name for name in ("a.png", "notes.txt", "sub/b.dcm", "sub/deeper/c.jpeg")
    )


def test_glob_patterns_match_at_any_depth_with_double_star(tree):
    """``**`` crosses folders; a pattern matching a folder lists the files inside it."""
    assert expand_inputs([str(tree / "**" / "*.jpeg")]) == [tree / "sub" / "deeper" / "c.jpeg"]
    assert sorted(expand_inputs([str(tree / "su*")])) == [tree / "sub" / "b.dcm", tree / "sub" / "deeper" / "c.jpeg"]


def test_order_is_kept_and_duplicates_are_listed_once(tree):
    """Items keep their command-line order; a file named twice appears once, where first named."""
    paths = expand_inputs([str(tree / "notes.txt"), str(tree / "sub"), str(tree / "sub" / "b.dcm")])
    assert paths == [tree / "notes.txt", tree / "sub" / "b.dcm", tree / "sub" / "deeper" / "c.jpeg"]


def test_a_missing_plain_path_is_passed_on_for_the_reader_to_report(tree):
    """A file that does not exist is not dropped: the reader turns it into a refused row."""
    assert expand_inputs([str(tree / "missing.png")]) == [tree / "missing.png"]


@pytest.mark.parametrize("item", ["empty", "*.gif"])
def test_an_empty_folder_or_a_pattern_matching_nothing_is_an_error(tree, item):
    """The user is told which folder or pattern found nothing, instead of getting an empty output."""
    with pytest.raises(NoInputsFound, match=item.replace("*", r"\*")):
        expand_inputs([str(tree / item)])
