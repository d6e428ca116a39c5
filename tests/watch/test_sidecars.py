"""The blocking helpers on their own: names, companions, no-overwrite moves."""

from __future__ import annotations

import pytest

from wan22bot.errors import InputError
from wan22bot.sources import sidecars

EXTS = {".jpg", ".png"}


@pytest.mark.parametrize("name,reason", [
    ("cat.jpg", None), ("CAT.JPG", None), ("-rf.jpg", None), ("café ☕.png", None),
    (".cat.jpg", "a hidden file"), ("cat.jpg.part", "a partial download"),
    ("cat.jpg.crdownload", "a partial download"), ("cat.tmp", "a partial download"),
    ("cat.jpg.txt", "a companion file"), ("cat.toml", "a companion file"),
    ("cat.jpg.error.txt", "a companion file"), ("cat.gif", "not a photo extension"),
])
def test_ignored_reason(name, reason):
    assert sidecars.ignored_reason(name, EXTS) == reason


def test_normalise_extensions():
    assert sidecars.normalise_extensions([".JPG", "png", " "]) == {".jpg", ".png"}


def test_move_group_renames_the_whole_group_on_collision(tmp_path):
    src, dst = tmp_path / "in", tmp_path / "done"
    src.mkdir()
    dst.mkdir()
    (src / "a.jpg").write_bytes(b"new")
    (src / "a.jpg.txt").write_text("prompt")
    (src / "a.toml").write_text("seed = 1")
    (dst / "a.jpg").write_bytes(b"old")
    (dst / "a-2.toml").write_text("taken")  # the companion's name at -2 is taken: the group goes to -3
    moved = sidecars.move_group(src / "a.jpg", dst, EXTS, error="it broke")
    assert moved == dst / "a-3.jpg"
    assert (dst / "a.jpg").read_bytes() == b"old" and (dst / "a-2.toml").read_text() == "taken"
    assert (dst / "a-3.jpg").read_bytes() == b"new"
    assert (dst / "a-3.jpg.txt").read_text() == "prompt"
    assert (dst / "a-3.toml").read_text() == "seed = 1"
    assert (dst / "a-3.jpg.error.txt").read_text() == "it broke.\n"
    assert list(src.iterdir()) == []


def test_read_options_prefers_the_photo_name_companion(tmp_path):
    (tmp_path / "p.jpg").write_bytes(b"x")
    (tmp_path / "p.txt").write_text("stem prompt")
    (tmp_path / "p.jpg.txt").write_text("name prompt")
    (tmp_path / "p.toml").write_text("frames = 9")
    opts = sidecars.read_options(tmp_path / "p.jpg")
    assert (opts.prompt, opts.frames) == ("name prompt", 9)


def test_read_options_rejects_tables_and_long_prompts(tmp_path):
    (tmp_path / "p.jpg").write_bytes(b"x")
    (tmp_path / "p.jpg.toml").write_text("[frames]\nx = 1\n")
    with pytest.raises(InputError, match="'frames'"):
        sidecars.read_options(tmp_path / "p.jpg")
    (tmp_path / "p.jpg.toml").unlink()
    (tmp_path / "p.jpg.txt").write_text("y" * 2001)
    with pytest.raises(InputError, match="2001 characters"):
        sidecars.read_options(tmp_path / "p.jpg")


def test_sentence_is_one_line_with_a_full_stop():
    assert sidecars.sentence("café.jpg is empty\n(0 bytes)") == "café.jpg is empty (0 bytes)."
    assert sidecars.sentence("done.") == "done."
