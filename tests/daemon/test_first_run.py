"""First run: `wan22bot fetch-rife` (as .ci/run calls it) and interpolation look in one place."""

from __future__ import annotations

import re
from pathlib import Path

from wan22bot.config import Config, load_config
from wan22bot.interpolate.weights import default_weights_cache

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_config_looks_where_fetch_rife_puts_the_weights(monkeypatch, tmp_path):
    for env in ({"WAN22BOT_CACHE": str(tmp_path / "c")},
                {"XDG_CACHE_HOME": str(tmp_path / "xdg")},
                {"HOME": str(tmp_path / "home")}):
        for k in ("WAN22BOT_CACHE", "XDG_CACHE_HOME"):
            monkeypatch.delenv(k, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        cfg = load_config(REPO / "config.toml", required=True)
        assert cfg.interpolation.weights == default_weights_cache(), env
        assert Config().interpolation.weights == default_weights_cache(), env
        assert str(tmp_path) in str(default_weights_cache()), env
    assert default_weights_cache() == tmp_path / "home" / ".cache" / "wan22bot" / "rife" / "flownet.pkl"


def test_ci_fetches_to_the_config_default():
    script = (REPO / ".ci" / "run").read_text()
    calls = [ln.strip() for ln in script.splitlines() if re.match(r"\s*wan22bot fetch-rife\b", ln)]
    assert calls, "the CI script no longer fetches the RIFE weights"
    # no --dest: fetch-rife then writes to [interpolation] weights of ./config.toml, which is the
    # same default location interpolation reads from
    assert all("--dest" not in c for c in calls), calls
