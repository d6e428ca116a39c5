"""The TOML config: every bad value is a ConfigError naming the key and the value; paths resolve sanely."""

from __future__ import annotations

from pathlib import Path

import pytest

from wan22bot.config import Config, load_config, resolve_paths
from wan22bot.errors import ConfigError

from .helpers import REPO


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize("text, must_contain", [
    ("[watch]\nsetle_seconds = 2\n", ["watch.setle_seconds", "unknown key"]),
    ("[generation]\nframs = 49\n", ["generation.frams", "unknown key"]),
    ("colour = 'red'\n", ["colour", "unknown key"]),
    ("[generation]\nfps = \"fast\"\n", ["generation.fps", "'fast'", "integer"]),
    ("[generation]\nfps = 16.5\n", ["generation.fps", "16.5"]),
    ("[paths]\ninput = 5\n", ["paths.input", "5"]),
    ("[generation]\nframes = 50\n", ["generation.frames", "50", "49", "53"]),
    ("[generation]\nwidth = 830\n", ["generation.width", "830", "816", "832"]),
    ("[generation]\nheight = 8\n", ["generation.height", "8", "16"]),
    ("[generation]\nfps = 0\n", ["generation.fps", "0"]),
    ("[generation]\nshift = -1.0\n", ["generation.shift", "-1.0"]),
    ("[model]\ndevice = \"gpu\"\n", ["model.device", "'gpu'", "cuda:N"]),
    ("[model]\ndevice = \"cuda:first\"\n", ["model.device", "'cuda:first'"]),
    ("[model]\nkind = \"sd15\"\n", ["model.kind", "'sd15'", "tiny"]),
    ("[model]\nattention_high = \"xformers\"\n", ["model.attention_high", "'xformers'"]),
    ("[model]\nlora_high_strength = 9.0\n", ["model.lora_high_strength", "9.0"]),
    ("[discord]\napi_base = \"discord.com/api\"\n", ["discord.api_base", "'discord.com/api'", "URL"]),
    ("[http]\nport = 70000\n", ["http.port", "70000"]),
    ("[model]\nkind = \"wan2.2-i2v-a14b\"\n", ["model", "path", "high_noise"]),
])
def test_bad_values_name_the_key_and_the_value(tmp_path, text, must_contain):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert str(p) in msg
    for part in must_contain:
        assert part in msg, f"{part!r} not in {msg!r}"


def test_every_problem_is_listed_at_once(tmp_path):
    p = write(tmp_path, "[generation]\nframes = 50\nwidth = 830\n[watch]\nsetle_seconds = 1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert "generation.frames" in msg and "generation.width" in msg and "watch.setle_seconds" in msg


def test_boolean_for_a_number_is_a_type_error(tmp_path):
    """`fps = true` is a type mistake; it must not silently become 1 fps."""
    p = write(tmp_path, "[generation]\nfps = true\n")
    with pytest.raises(ConfigError, match=r"generation\.fps"):
        load_config(p)


def test_bad_toml_syntax_names_the_file_and_line(tmp_path):
    p = write(tmp_path, "[generation\nfps = 16\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert str(p) in msg and "not valid TOML" in msg and "line 1" in msg


def test_non_utf8_file_is_a_config_error(tmp_path):
    p = tmp_path / "latin1.toml"
    p.write_bytes('[generation]\nprompt = "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(p)


def test_missing_file_given_explicitly_is_an_error_but_default_is_builtin(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", required=True)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None)
    # the built-in defaults, with their relative folders pinned to where wan22bot started
    assert cfg == resolve_paths(Config(), tmp_path) and cfg.model.kind == "tiny"
    assert cfg.paths.state == tmp_path / "state"


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    conf_dir = tmp_path / "etc" / "wan22bot"
    conf_dir.mkdir(parents=True)
    p = write(conf_dir, """
[paths]
input = "./in"
output = "out"
state = "/var/lib/w22/state"
failed = "../failed"
[model]
lora_high = "loras/high.safetensors"
lora_low = "~/low.safetensors"
[interpolation]
weights = "weights/flownet.pkl"
[discord]
token_file = "secrets/token"
""", name="daemon.toml")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(p)
    assert cfg.paths.input == conf_dir / "in"
    assert cfg.paths.output == conf_dir / "out"
    assert cfg.paths.state == Path("/var/lib/w22/state")
    assert cfg.paths.failed_dir == conf_dir / ".." / "failed"
    assert cfg.paths.processed_dir == conf_dir / "in" / "processed"
    assert cfg.model.lora_high == conf_dir / "loras" / "high.safetensors"
    assert cfg.model.lora_low == Path("~/low.safetensors").expanduser()
    assert cfg.interpolation.weights == conf_dir / "weights" / "flownet.pkl"
    assert cfg.discord.token_file == conf_dir / "secrets" / "token"


def test_repo_config_toml_loads_and_is_valid():
    cfg = load_config(REPO / "config.toml", required=True)
    assert cfg.model.kind == "tiny"
    assert cfg.generation.fps == 16 and cfg.generation.shift == 5.0 and cfg.generation.preset == "fast"
    assert cfg.paths.input == REPO / "input"
    assert cfg.http.host == "127.0.0.1" and cfg.http.port == 8622


def test_cli_exits_2_with_the_message_and_no_traceback(cli):
    r = cli.result("config-bad")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert r.stderr.startswith("wan22bot: error:")
    for part in ("bad.toml", "[generation.frames] = 50", "49", "53", "watch.setle_seconds", "unknown key"):
        assert part in r.stderr

