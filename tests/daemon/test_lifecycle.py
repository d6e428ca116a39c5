"""One lifecycle, cleaned up on every path: the daemon as a real subprocess, real signals, a real
sd_notify socket, a real flock."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from ..systemd.notifysock import NotifySocket

pytestmark = pytest.mark.slow


@pytest.fixture
def notify():
    d = tempfile.mkdtemp(prefix="lc")
    path = os.path.join(d, "notify.sock")
    sock = NotifySocket(path).start()
    yield sock, path
    sock.close()
    os.unlink(path)
    os.rmdir(d)


def _lock_is_free(state) -> bool:
    fd = os.open(state / "wan22bot.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_second_daemon_on_the_same_state_folder_exits_at_once_naming_the_holder(daemon_factory, tmp_path):
    first = daemon_factory().start()
    # the same config (state folder) from another directory, as a second unit or a stray shell would
    second = subprocess.run([sys.executable, "-m", "wan22bot", "run", "-c", str(first.config)],
                            cwd=tmp_path.parent, capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert second.returncode == 11, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr  # one line, no traceback, and nothing loaded
    assert f"PID {first.proc.pid}" in lines[0] and str(first.state) in lines[0], lines
    assert "loading models" not in second.stderr
    assert first.proc.poll() is None and first.get("/healthz")[0] == 200  # the first is untouched
    assert first.stop() == 0
    assert _lock_is_free(first.state)
    assert (first.state / "wan22bot.lock").read_text() == ""  # no stale PID left behind

    # start-up was not silent: what it loads, at once, then where it listens
    log = first.log.read_text()
    lines = [ln.split(": ", 1)[-1] for ln in log.splitlines()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("wan22bot starting: config "))
    loading = next(i for i, ln in enumerate(lines) if ln.startswith("loading models: tiny on cpu"))
    loaded = next(i for i, ln in enumerate(lines) if ln.startswith("models loaded in "))
    ready = lines.index(f"ready: watching {first.input}, http on http://127.0.0.1:{first.port}")
    assert start < loading < loaded < ready, log
    assert str(first.config) in lines[start] and str(first.state) in lines[start]


def test_port_taken_after_the_models_loaded_still_shuts_down_cleanly(daemon_factory, notify):
    sock, path = notify
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    try:
        d = daemon_factory()
        d.config.write_text(d.config.read_text().replace(f"port = {d.port}", f"port = {blocker.getsockname()[1]}"))
        d.start(env={"NOTIFY_SOCKET": path}, wait=False)
        code = d.proc.wait(90)
    finally:
        blocker.close()
    d._logf.close()
    log = d.log.read_text()
    assert code == 2, log
    assert "cannot listen on 127.0.0.1" in log and "Traceback" not in log, log
    assert "models loaded" in log  # it failed after the load, the case that skipped cleanup
    got = [x.fields for x in sock.snapshot()]
    assert {"STOPPING": "1"} in got, got
    assert not any(f.get("READY") == "1" for f in got), got
    assert _lock_is_free(d.state)
    # the journal was closed: SQLite removes its WAL file when the last connection closes cleanly
    assert (d.state / "jobs.sqlite").exists() and not (d.state / "jobs.sqlite-wal").exists()


def test_sigterm_during_the_model_load_is_acted_on_at_once(daemon_factory, notify):
    sock, path = notify
    d = daemon_factory()
    d.start(env={"NOTIFY_SOCKET": path}, wait=False)
    sock.wait_for(lambda x: x.fields.get("STATUS") == "loading models", 60, "the model load to begin")
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    code = d.proc.wait(30)
    took = time.monotonic() - t0
    d._logf.close()
    log = d.log.read_text()
    assert code == 0, log
    got = [x.fields for x in sock.snapshot()]
    assert not any(f.get("READY") == "1" for f in got), got  # it never claimed to be ready
    assert {"STOPPING": "1"} in got, got
    assert "models loaded" not in log and "stopped during the model load" in log, log
    assert took < 20, f"{took:.1f} s to stop"
    assert _lock_is_free(d.state)


def test_unusable_state_folder_is_one_line_and_a_documented_exit_code(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    cfg = tmp_path / "config.toml"
    cfg.write_text('[paths]\nstate = "afile/state"\n[http]\nenabled = false\n[watch]\nenabled = false\n')
    r = subprocess.run([sys.executable, "-m", "wan22bot", "run", "-c", str(cfg)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 10, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert str(tmp_path / "afile" / "state") in lines[0] and "cannot be created" in lines[0], lines


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; needs an unprivileged user")
def test_read_only_state_folder_is_one_line_and_a_documented_exit_code(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o500)
    cfg = tmp_path / "config.toml"
    cfg.write_text('[paths]\nstate = "state"\n[http]\nenabled = false\n[watch]\nenabled = false\n')
    try:
        r = subprocess.run([sys.executable, "-m", "wan22bot", "run", "-c", str(cfg)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    finally:
        state.chmod(0o700)
    assert r.returncode == 10, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(state) in lines[0] and "not writable" in lines[0], r.stderr
