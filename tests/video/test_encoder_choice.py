"""generation.encoder: auto falls back to libx264 with a log line; a forced NVENC that cannot open
is a clear error before any work; the config key is validated."""

from __future__ import annotations

import logging

import pytest

from wan22bot.config import GenerationConfig
from wan22bot.errors import ConfigError
from wan22bot.video import EncodeSettings, Mp4Writer, choose_codec, nvenc_problem, open_problem

needs_no_nvenc = pytest.mark.skipif(nvenc_problem() is None, reason="NVENC opens on this machine")


@needs_no_nvenc
def test_auto_falls_back_to_libx264_and_says_why(caplog, tmp_path):
    from wan22bot import video

    video._log_fallback_once.cache_clear()
    with caplog.at_level(logging.INFO, logger="wan22bot.video"):
        assert choose_codec("auto") == "libx264"
        w = Mp4Writer(tmp_path / "a.mp4", 64, 64, 16, EncodeSettings(encoder="auto"))
        w.abort()
    assert w.codec == "libx264"
    lines = [r.getMessage() for r in caplog.records if "NVENC not used" in r.getMessage()]
    assert len(lines) == 1 and "libx264" in lines[0]  # said once, not per job
    assert nvenc_problem() in lines[0]


@needs_no_nvenc
def test_forced_nvenc_that_cannot_open_is_a_config_error_naming_the_fix(tmp_path):
    with pytest.raises(ConfigError) as exc:
        Mp4Writer(tmp_path / "n.mp4", 64, 64, 16, EncodeSettings(encoder="nvenc"))
    msg = str(exc.value)
    assert msg.startswith('generation.encoder is "nvenc" but ')
    assert "h264_nvenc" in msg and 'set generation.encoder = "libx264"' in msg
    assert not list(tmp_path.iterdir())  # refused before any file was made


def test_libx264_is_taken_as_asked():
    assert choose_codec("libx264") == "libx264"


def test_the_open_probe_accepts_an_encoder_that_opens():
    """The same probe that judges NVENC, on an encoder that does open here: no false 'no'."""
    assert open_problem("libx264") is None
    assert open_problem("no_such_encoder") == "this PyAV build has no no_such_encoder encoder"


def test_unknown_encoder_names_the_choices():
    with pytest.raises(ConfigError, match="use one of auto, libx264, nvenc"):
        choose_codec("x265")


def test_config_keys_default_and_validate():
    g = GenerationConfig()
    assert (g.encoder, g.encoder_threads) == ("auto", 0)
    assert GenerationConfig(encoder="nvenc", encoder_threads=8).encoder_threads == 8
    with pytest.raises(ValueError, match="encoder"):
        GenerationConfig(encoder="h265")
    with pytest.raises(ValueError, match="encoder_threads"):
        GenerationConfig(encoder_threads=-1)


@needs_no_nvenc
def test_auto_still_makes_the_video_when_nvenc_passes_the_probe_but_refuses_the_stream(monkeypatch, caplog, tmp_path):
    """The probe is only a probe: if the real stream's NVENC open fails, auto reopens with x264."""
    from wan22bot import video

    monkeypatch.setattr(video, "nvenc_problem", lambda: None)  # as on a box whose probe opened
    assert choose_codec("auto") == "h264_nvenc"
    out = tmp_path / "fb.mp4"
    with caplog.at_level(logging.WARNING, logger="wan22bot.video"):
        w = Mp4Writer(out, 64, 64, 16, EncodeSettings(encoder="auto"))  # the real NVENC open fails here
    assert w.codec == "libx264"
    assert any("h264_nvenc failed to open for 64x64" in r.getMessage() for r in caplog.records)
    import numpy as np

    w.write_rgb(np.full((2, 64, 64, 3), 120, np.uint8))
    assert w.close() == out.stat().st_size
    assert not list(tmp_path.glob(".*.part"))
    # "nvenc" itself never falls back
    with pytest.raises(ConfigError, match='"nvenc" but h264_nvenc failed to open for 64x64 .*set generation.encoder'):
        Mp4Writer(tmp_path / "n.mp4", 64, 64, 16, EncodeSettings(encoder="nvenc"))
    assert not (tmp_path / "n.mp4").exists() and not list(tmp_path.glob(".*.part"))


@needs_no_nvenc
def test_check_names_the_encoder_and_refuses_a_forced_nvenc(tmp_path):
    from wan22bot.commands.check import run_checks
    from wan22bot.config import Config, ModelConfig, PathsConfig

    paths = PathsConfig(input=tmp_path / "in", output=tmp_path / "out", state=tmp_path / "state")
    auto = run_checks(Config(paths=paths, model=ModelConfig(device="cpu")))
    assert any(m.startswith("video encoder libx264 (NVENC not used: ") for m in auto.ok)
    forced = run_checks(Config(paths=paths, model=ModelConfig(device="cpu"), generation=GenerationConfig(encoder="nvenc")))
    assert any(e.startswith('generation.encoder is "nvenc" but ') for e in forced.errors)
