"""systemd/wan22bot.service: systemd accepts it, and it says what the daemon relies on."""

from __future__ import annotations

import shlex
import sys

import pytest

from .unitfile import SYSTEMD_ANALYZE, UNIT, environment, parse_unit, security_exposure, timespan_seconds, verify

needs_systemd = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (apt-get install systemd): the unit's verify and exposure checks skip")


def runnable_copy(tmp_path, text: str | None = None):
    """The unit with only ExecStart's binary swapped for this interpreter (`python -m wan22bot`)."""
    original = UNIT.read_text() if text is None else text
    out = []
    for line in original.splitlines():
        if line.startswith("ExecStart="):
            argv = shlex.split(line.split("=", 1)[1])
            assert argv[0].endswith("/wan22bot"), argv
            line = "ExecStart=" + shlex.join([sys.executable, "-m", "wan22bot", *argv[1:]])
        out.append(line)
    path = tmp_path / "wan22bot.service"  # verify wants the real unit name
    path.write_text("\n".join(out) + "\n")
    return path


@pytest.fixture(scope="module")
def unit():
    return parse_unit(UNIT.read_text())


@pytest.fixture(scope="module")
def service(unit):
    return unit["Service"]


def one(service, key):
    values = service.get(key, [])
    assert len(values) == 1, f"{key}= should be set exactly once, got {values}"
    return values[0]


@needs_systemd
def test_systemd_analyze_verify_passes(tmp_path):
    path = runnable_copy(tmp_path)
    changed = [(a, b) for a, b in zip(UNIT.read_text().splitlines(), path.read_text().splitlines()) if a != b]
    assert len(changed) == 1 and changed[0][1].startswith(f"ExecStart={sys.executable} -m wan22bot run -c ")
    rc, diagnostics = verify(path)
    assert (rc, diagnostics) == (0, [])


@needs_systemd
def test_verify_checks_the_binary_of_the_shipped_unit(tmp_path):
    """Unmodified, ExecStart points at /opt/wan22bot, which is not installed here: verify must say so."""
    path = tmp_path / "wan22bot.service"
    path.write_text(UNIT.read_text())
    rc, diagnostics = verify(path)
    assert rc != 0
    assert any("/opt/wan22bot/.venv/bin/wan22bot" in d for d in diagnostics), diagnostics


@needs_systemd
@pytest.mark.parametrize(
    "old, new, expect",
    [
        ("Type=notify", "Type=notifyy", "Failed to parse service type"),
        ("Restart=on-failure", "Restart=on-failure\nRestartOnFailure=yes", "Unknown key"),
        ("WatchdogSec=120s", "WatchdogSec=two minutes", "Failed to parse sec value"),
        ("ProtectSystem=strict", "ProtectSystem=very", "Failed to parse protect system value"),
    ],
)
def test_verify_catches_a_broken_unit(tmp_path, old, new, expect):
    text = UNIT.read_text()
    assert old in text
    path = runnable_copy(tmp_path, text.replace(old, new, 1))
    rc, diagnostics = verify(path)
    assert (rc, diagnostics) != (0, [])
    assert any(expect in d for d in diagnostics), diagnostics


@needs_systemd
def test_verify_fails_without_execstart(tmp_path):
    text = "\n".join(ln for ln in UNIT.read_text().splitlines() if not ln.startswith("ExecStart="))
    path = tmp_path / "wan22bot.service"
    path.write_text(text + "\n")
    rc, diagnostics = verify(path)
    assert rc != 0
    assert any("ExecStart" in d for d in diagnostics), diagnostics


def test_service_type_and_restart(service):
    assert one(service, "Type") == "notify"
    # the daemon sends from its own (main) process; systemd must accept that and nothing else
    assert one(service, "NotifyAccess") == "main"
    assert one(service, "Restart") == "on-failure"
    argv = shlex.split(one(service, "ExecStart"))
    assert argv[1:3] == ["run", "-c"] and argv[3].endswith(".toml")
    assert one(service, "ExecReload") == "/bin/kill -HUP $MAINPID"  # SIGHUP reloads the config
    assert one(service, "KillMode") == "mixed"  # SIGTERM to the daemon only: it checkpoints the job itself


@needs_systemd
def test_timeouts_parse_and_fit_the_daemon(service):
    watchdog = timespan_seconds(one(service, "WatchdogSec"))
    stop = timespan_seconds(one(service, "TimeoutStopSec"))
    start = timespan_seconds(one(service, "TimeoutStartSec"))
    restart = timespan_seconds(one(service, "RestartSec"))
    assert 10 <= watchdog <= 600  # the daemon pings every WatchdogSec/2
    assert stop >= 60  # a denoising step must finish before SIGKILL
    assert start >= 300  # loading two 14B experts from a cold disk
    assert restart > 0


def test_state_and_credentials(service):
    assert one(service, "StateDirectory") == "wan22bot"
    from wan22bot.sources.discord.token import CREDENTIAL_NAME

    from wan22bot.credentials import HTTP_TOKEN_CREDENTIAL
    from wan22bot.queue import redis_conn

    loaded = [v.split(":", 1) for v in service.get("LoadCredential", [])]
    imported = service.get("ImportCredential", [])
    # the names the daemon reads: the bot token, and on a Redis front the HTTP token and Redis's own
    assert [c[0] for c in loaded] + imported == [CREDENTIAL_NAME, HTTP_TOKEN_CREDENTIAL,
                                                redis_conn.PASSWORD_CREDENTIAL, redis_conn.CA_CREDENTIAL]


def test_a_box_without_the_discord_token_still_starts(service):
    """systemd refuses to start a unit whose LoadCredential= names an absolute path that is missing;
    a bare credential name (looked up in the credential stores) or ImportCredential= is skipped
    when absent, so a box without Discord starts."""
    for value in service.get("LoadCredential", []):
        _name, _, source = value.partition(":")
        assert not source.startswith("/"), f"LoadCredential={value}: a missing file would stop the unit starting"


def test_environment(service):
    env = environment(service)
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert not any("TOKEN" in k for k in env)  # the token is a credential, never the environment


def test_hardening(service):
    assert one(service, "NoNewPrivileges") == "yes"
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "ProtectHome") == "yes"
    assert one(service, "PrivateTmp") == "yes"
    rw = " ".join(service["ReadWritePaths"]).split()
    assert rw and all(p.lstrip("-").startswith("/") for p in rw)
    assert not any(p.rstrip("/") in ("", "/etc", "/usr", "/home") for p in rw)


def test_gpu_devices_allowed(service):
    assert one(service, "DevicePolicy") == "closed"
    allowed = {}
    for v in service["DeviceAllow"]:
        dev, *perm = v.split()
        allowed[dev] = perm[0] if perm else "rwm"
    # By driver class: nodes that do not exist when the unit starts (a second GPU, nvidia-uvm made
    # on the first CUDA call) are still allowed, and nothing outside the NVIDIA driver is.
    assert set(allowed) == {"char-nvidia-frontend", "char-nvidia-uvm", "char-nvidia-caps"}, allowed
    assert all(p == "rw" for p in allowed.values()), allowed


def test_no_capabilities_and_a_system_call_filter(service):
    assert service.get("CapabilityBoundingSet") == []  # set, and empty: no capabilities at all
    assert service["SystemCallFilter"][0] == "@system-service"
    assert one(service, "SystemCallArchitectures") == "native"
    assert one(service, "ProtectProc") == "invisible"
    assert one(service, "UMask") in ("0077", "0027")


@needs_systemd
def test_exposure_is_at_most_4(tmp_path):
    path = tmp_path / "wan22bot.service"
    path.write_text(UNIT.read_text())
    score, report = security_exposure(path)
    assert score <= 4.0, report


def test_install_section(unit):
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
