"""`python -m wan22bot ...` end to end, as a user runs it: exit codes, messages, files.

The slow runs are started together by the session fixture `cli` (see conftest.py).
"""

from __future__ import annotations

import json

from wan22bot.video import probe_mp4

from .helpers import EXAMPLE_PHOTO, run_cli


def ok(r):
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r


def test_generate_exits_0_and_prints_the_timing_table(cli):
    r = ok(cli.result("generate"))
    assert "Traceback" not in r.stderr
    for label in ("Pass 1 (high noise)", "Pass 2 (low noise)", "Text encode", "VAE decode", "MP4 encode", "Total"):
        assert label in r.stdout, label
    assert "Frames: 9" in r.stdout and "16 fps" in r.stdout
    assert str(cli.dir / "out.mp4") in r.stdout and "seed 5" in r.stdout


def test_generate_writes_a_9_frame_16_fps_mp4(cli):
    ok(cli.result("generate"))
    info = probe_mp4(cli.dir / "out.mp4")
    assert (info.frames, info.fps, info.width, info.height) == (9, 16.0, 64, 96)  # photo.jpg is portrait
    assert info.codec == "h264" and info.pix_fmt == "yuv420p"


def test_generate_writes_the_sidecar(cli):
    ok(cli.result("generate"))
    side = json.loads((cli.dir / "out.json").read_text(encoding="utf-8"))
    assert side["seed"] == 5 and side["settings"]["seed"] == 5
    assert side["timings"]["pass1"] > 0 and side["timings"]["pass2"] > 0
    assert side["frames"] == 9 and side["photo"] == "photo.jpg" and side["source"] == "cli"


def test_generate_bad_frame_count_exits_2_naming_the_nearest_valid_counts(tmp_path):
    r = run_cli("generate", str(EXAMPLE_PHOTO), "-o", str(tmp_path / "never.mp4"), "--frames", "50", timeout=60)
    assert r.returncode == 2
    assert "49" in r.stderr and "53" in r.stderr and "--frames" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "never.mp4").exists()


def _bad_photo(cli, run, name, message):
    r = cli.result(run)
    assert r.returncode == 3, (r.stdout + r.stderr)[-2000:]
    assert f"wan22bot: error: {message}" in r.stderr
    assert "Traceback" not in r.stderr
    stem = name.rsplit(".", 1)[0]
    assert not (cli.dir / f"{stem}.mp4").exists() and not (cli.dir / f"{stem}.json").exists()
    assert (cli.dir / name).exists()  # the input is left alone


def test_generate_text_file_named_jpg_exits_3_with_one_sentence(cli):
    _bad_photo(cli, "photo-text", "notes.jpg", "notes.jpg is not an image")


def test_generate_zero_byte_photo_exits_3_with_one_sentence(cli):
    _bad_photo(cli, "photo-empty", "empty.jpg", "empty.jpg is empty (0 bytes)")


def test_top_level_help():
    r = run_cli("--help", timeout=60)
    assert r.returncode == 0
    for word in ("generate", "check", "run", "bench", "--version"):
        assert word in r.stdout


def test_generate_help_mentions_the_options():
    r = run_cli("generate", "--help", timeout=60)
    assert r.returncode == 0
    for opt in ("image", "-o", "--output", "--frames", "--prompt", "--seed", "--preset", "--interpolate", "--quiet",
                "--config"):
        assert opt in r.stdout, opt


def test_check_on_builtin_defaults_exits_0(cli):
    r = ok(cli.result("check-defaults"))
    assert "built-in defaults" in r.stdout and "usable" in r.stdout and "NOT usable" not in r.stdout
    assert "model.kind = tiny" in r.stdout


def test_check_real_model_with_missing_folder_exits_1_naming_it(cli):
    r = cli.result("check-missing-model")
    assert r.returncode == 1, r.stdout + r.stderr
    missing = cli.dir / "models" / "Wan2.2-I2V-A14B-Diffusers"
    assert f"model.path = {missing} is not a folder" in r.stdout
    assert "ERROR" in r.stdout and "NOT usable" in r.stdout
    assert "Traceback" not in r.stderr


def test_check_names_the_config_file_it_read(cli):
    r = cli.result("check-missing-model")
    assert str(cli.dir / "real-model.toml") in r.stdout
