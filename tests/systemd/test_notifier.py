"""The Notifier class against real AF_UNIX datagram sockets (path and abstract namespace)."""

from __future__ import annotations

import os
import tempfile
import uuid

import pytest

from wan22bot.notify import Notifier

from .notifysock import NotifySocket


@pytest.fixture
def clean_env(monkeypatch):
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def _exchange(sock: NotifySocket, n: Notifier) -> list[dict[str, str]]:
    assert n.enabled
    assert n.ready("idle; 0 queued") is True
    assert n.status("running a.jpg; 1 queued") is True
    assert n.watchdog() is True
    assert n.reloading() is True
    assert n.ready() is True
    assert n.stopping() is True
    got = [sock.recv_one(2.0) for _ in range(6)]
    assert all(d.pid == os.getpid() for d in got)
    return [d.fields for d in got]


EXPECTED = [
    {"READY": "1", "STATUS": "idle; 0 queued"},
    {"STATUS": "running a.jpg; 1 queued"},
    {"WATCHDOG": "1"},
    {"RELOADING": "1"},
    {"READY": "1"},
    {"STOPPING": "1"},
]


def test_path_socket(clean_env):
    d = tempfile.mkdtemp(prefix="sdn")
    path = os.path.join(d, "notify.sock")
    sock = NotifySocket(path)
    try:
        clean_env.setenv("NOTIFY_SOCKET", path)
        assert _exchange(sock, Notifier()) == EXPECTED
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(d)


def test_abstract_namespace_socket(clean_env):
    name = f"wan22bot-test-{uuid.uuid4().hex}"
    sock = NotifySocket("\0" + name)
    try:
        clean_env.setenv("NOTIFY_SOCKET", "@" + name)
        n = Notifier()
        assert n.addr == "\0" + name
        assert _exchange(sock, n) == EXPECTED
        assert not os.path.exists("@" + name) and not os.path.exists(name)  # nothing on the file system
    finally:
        sock.close()


def test_without_systemd_nothing_is_sent(clean_env):
    n = Notifier()
    assert not n.enabled and n.watchdog_seconds is None
    assert n.ready("x") is False and n.watchdog() is False and n.stopping() is False


def test_a_vanished_socket_is_not_an_error(clean_env, tmp_path):
    clean_env.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    n = Notifier()
    assert n.enabled
    assert n.status("still running") is False  # reported, never raised: the daemon keeps going


@pytest.mark.parametrize(
    "usec, pid, expected",
    [
        ("2000000", None, 2.0),
        ("2000000", "self", 2.0),
        ("2000000", "1", None),  # meant for another process (e.g. a wrapper): not ours to answer
        ("abc", None, None),
        ("", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(clean_env, usec, pid, expected):
    if usec is not None:
        clean_env.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        clean_env.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert Notifier().watchdog_seconds == expected
