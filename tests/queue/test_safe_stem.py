"""safe_stem: any photo name becomes an output name that stays inside the output folder."""

from __future__ import annotations

import pytest

from wan22bot.queue.jobqueue import safe_stem

from .conftest import photo_bytes, spec


@pytest.mark.parametrize(
    "name, expected",
    [
        ("../../x.jpg", "x"),
        ("..\\..\\x.jpg", "x"),
        ("a/b\\c.png", "c"),
        ("/etc/passwd", "passwd"),
        ("C:\\Users\\me\\Pictures\\holiday.jpeg", "holiday"),
        ("a\x00b.jpg", "a_b"),
        ("line\nbreak\ttab\x1b[31m.jpg", "line_break_tab_[31m"),
        ("del\x7f.jpg", "del_"),
        ("café ☕.jpg", "café ☕"),
        ("写真 2024.png", "写真 2024"),
        ("-rf.jpg", "-rf"),
        ("--help.png", "--help"),
        ("two words.jpg", "two words"),
        (".hidden.jpg", "hidden"),
        ("archive.tar.gz", "archive.tar"),
        ("noext", "noext"),
        ("..", "photo"),
        (".", "photo"),
        ("", "photo"),
        ("../", "photo"),
        ("\x00\x01.jpg", "_"),  # a run of unsafe characters is one underscore
    ],
)
def test_odd_names(name, expected):
    assert safe_stem(name) == expected


@pytest.mark.parametrize("char", ["a", "é", "☕", "😀"])
def test_long_names_are_capped_at_200_utf8_bytes_without_splitting_a_character(char):
    name = char * 300 + ".jpg"
    stem = safe_stem(name)
    raw = stem.encode("utf-8")
    assert len(raw) <= 200
    assert len(raw) > 200 - len(char.encode("utf-8"))  # cut as late as a whole character allows
    assert set(stem) == {char}  # no broken or replacement characters
    assert len((stem + "-99.json").encode("utf-8")) < 255  # fits a file name with any suffix we add


@pytest.mark.parametrize(
    "name",
    ["../../x.jpg", "a/b\\c.png", "..", "\x00", "x" * 300, "é" * 300 + ".png", "-", " ", "/", "\\..\\.."],
)
def test_result_is_one_plain_path_component(name, tmp_path):
    stem = safe_stem(name)
    assert stem and "/" not in stem and "\\" not in stem
    assert not any(ord(c) < 32 or ord(c) == 127 for c in stem)
    assert not stem.startswith(".")
    target = (tmp_path / f"{stem}.mp4").resolve()
    assert target.parent == tmp_path.resolve()
    target.write_bytes(b"")  # the file system accepts it
    assert target.exists()


async def test_submit_uses_the_safe_name(q):
    job, _ = await q.submit(spec("discord", "A", "../../../etc/cron.d/evil.jpg"), photo_bytes(1))
    assert job.spec.name == "evil"
    job2, _ = await q.submit(spec("discord", "A", "-v\x00.png"), photo_bytes(2))
    assert job2.spec.name == "-v_"
    assert (q.output_dir / f"{job2.spec.name}.mp4").resolve().parent == q.output_dir.resolve()
