"""systemd/wan22bot-worker@.service: one worker per GPU (the instance name is the card), as
hardened as the daemon's unit, starting the command and state folder the worker expects."""

from __future__ import annotations

import shlex
import sys

import pytest

from wan22bot.cli import build_parser
from wan22bot.credentials import HTTP_TOKEN_CREDENTIAL

from .test_unit import needs_systemd, one
from .unitfile import UNIT, WORKER_UNIT, environment, parse_unit, security_exposure, timespan_seconds, verify


def runnable_copy(tmp_path, text: str | None = None, name: str = "wan22bot-worker@.service"):
    """The unit with only ExecStart's binary swapped for this interpreter (`python -m wan22bot`)."""
    out = []
    for line in (WORKER_UNIT.read_text() if text is None else text).splitlines():
        if line.startswith("ExecStart="):
            argv = shlex.split(line.split("=", 1)[1])
            assert argv[0].endswith("/wan22bot"), argv
            line = "ExecStart=" + shlex.join([sys.executable, "-m", "wan22bot", *argv[1:]])
        out.append(line)
    path = tmp_path / name
    path.write_text("\n".join(out) + "\n")
    return path


@pytest.fixture(scope="module")
def unit():
    return parse_unit(WORKER_UNIT.read_text())


@pytest.fixture(scope="module")
def service(unit):
    return unit["Service"]


@pytest.fixture(scope="module")
def daemon_service():
    return parse_unit(UNIT.read_text())["Service"]


def instance(value: str, n: str = "1") -> str:
    return value.replace("%i", n)


@needs_systemd
@pytest.mark.parametrize("name", ["wan22bot-worker@.service", "wan22bot-worker@1.service"])
def test_systemd_analyze_verify_passes(tmp_path, name):
    rc, diagnostics = verify(runnable_copy(tmp_path, name=name))
    assert (rc, diagnostics) == (0, [])


@needs_systemd
@pytest.mark.parametrize(
    "old, new, expect",
    [
        ("Type=notify", "Type=notifyy", "Failed to parse service type"),
        ("WatchdogSec=120s", "WatchdogSec=two minutes", "Failed to parse sec value"),
        ("LoadCredential=http-token", "LoadCredentials=http-token", "Unknown key"),
    ],
)
def test_verify_catches_a_broken_unit(tmp_path, old, new, expect):
    text = WORKER_UNIT.read_text()
    assert old in text
    rc, diagnostics = verify(runnable_copy(tmp_path, text.replace(old, new, 1)))
    assert (rc, diagnostics) != (0, [])
    assert any(expect in d for d in diagnostics), diagnostics


@needs_systemd
def test_verify_checks_the_binary_of_the_shipped_unit(tmp_path):
    path = tmp_path / "wan22bot-worker@.service"
    path.write_text(WORKER_UNIT.read_text())
    rc, diagnostics = verify(path)
    assert rc != 0
    assert any("/opt/wan22bot/.venv/bin/wan22bot" in d for d in diagnostics), diagnostics


def test_execstart_is_the_worker_command_with_the_instance_state(service):
    argv = shlex.split(instance(one(service, "ExecStart"), "3"))
    args = build_parser().parse_args(argv[1:])  # the command line the CLI really accepts
    assert args.command == "worker"
    assert str(args.config).endswith(".toml")
    # each instance its own state folder (lock, spool, results, consumer name): the one systemd makes
    assert str(args.state) == f"/var/lib/{instance(one(service, 'StateDirectory'), '3')}"
    assert "%i" in one(service, "StateDirectory")
    assert one(service, "WorkingDirectory") == "/var/lib/" + one(service, "StateDirectory")


def test_each_instance_sees_only_its_card(service):
    assert environment(service)["CUDA_VISIBLE_DEVICES"] == "%i"
    assert instance(environment(service)["CUDA_VISIBLE_DEVICES"], "2") == "2"


def test_lifecycle_matches_the_worker(service):
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert one(service, "Restart") == "on-failure"
    assert one(service, "KillMode") == "mixed"  # SIGTERM to the worker only: it checkpoints the job itself
    assert "ExecReload" not in service  # a worker has no sources to reload


@needs_systemd
def test_timeouts_parse_and_fit_the_worker(service):
    assert 10 <= timespan_seconds(one(service, "WatchdogSec")) <= 600
    assert timespan_seconds(one(service, "TimeoutStopSec")) >= 60  # a step ends before SIGKILL
    assert timespan_seconds(one(service, "TimeoutStartSec")) >= 300  # the model load
    assert timespan_seconds(one(service, "RestartSec")) > 0


def test_credentials_are_the_names_the_code_reads(service):
    from wan22bot.queue import redis_conn

    names = [v.split(":", 1)[0] for v in service.get("LoadCredential", [])] + service.get("ImportCredential", [])
    wanted = {HTTP_TOKEN_CREDENTIAL, redis_conn.PASSWORD_CREDENTIAL, redis_conn.CA_CREDENTIAL}
    assert set(names) == wanted and len(names) == len(wanted)
    # bare names: a box whose Redis has no password (or no TLS) still starts
    assert not any(v.partition(":")[2].startswith("/") for v in service.get("LoadCredential", []))
    assert not any("TOKEN" in k or "PASSWORD" in k for k in environment(service))


def test_the_daemon_unit_carries_the_front_credentials(daemon_service):
    """A front on Redis reads the same Redis credentials and needs the HTTP token the workers send."""
    from wan22bot.queue import redis_conn

    names = {v.split(":", 1)[0] for v in daemon_service.get("LoadCredential", [])}
    assert {HTTP_TOKEN_CREDENTIAL, redis_conn.PASSWORD_CREDENTIAL, redis_conn.CA_CREDENTIAL} <= names


def test_hardening_is_the_daemons(service, daemon_service):
    """Every hardening setting of the daemon's unit, with the same value; the worker needs no
    ReadWritePaths (it writes only its StateDirectory)."""
    keys = ("NoNewPrivileges", "CapabilityBoundingSet", "AmbientCapabilities", "ProtectSystem", "ProtectHome",
            "PrivateTmp", "PrivateMounts", "ProtectProc", "ProtectKernelTunables", "ProtectKernelModules",
            "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname", "RestrictSUIDSGID",
            "RestrictRealtime", "RestrictNamespaces", "LockPersonality", "RemoveIPC", "UMask",
            "RestrictAddressFamilies", "SystemCallArchitectures", "SystemCallFilter", "SystemCallErrorNumber",
            "DevicePolicy", "DeviceAllow", "User", "Group", "SupplementaryGroups")
    differ = {k: (service.get(k), daemon_service.get(k)) for k in keys if service.get(k) != daemon_service.get(k)}
    assert differ == {}
    assert "ReadWritePaths" not in service


@needs_systemd
def test_exposure_is_at_most_4(tmp_path):
    path = tmp_path / "wan22bot-worker@1.service"
    path.write_text(WORKER_UNIT.read_text())
    score, report = security_exposure(path)
    assert score <= 4.0, report


def test_install_section(unit):
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
