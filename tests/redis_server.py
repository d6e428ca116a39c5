"""A real redis-server for the tests: a free loopback port, its own folder, the append-only file on.

`appendfsync always` makes every write durable before the reply, so `kill()` (SIGKILL) followed by
`restart()` brings back exactly what was acknowledged, as a production Redis with AOF would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from tests.ports import free_port

REQUIRE_ENV = "WAN22BOT_REQUIRE_REDIS"


def redis_server_binary() -> str:
    """The redis-server path, or a skip saying why (a failure where WAN22BOT_REQUIRE_REDIS=1: CI)."""
    path = shutil.which("redis-server")
    if path is None:
        reason = "redis-server is not installed (Debian: apt-get install redis-server)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 says the Redis tests must run")
        pytest.skip(reason)
    return path


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process ends, however it ends (a timeout's
    SIGKILL included), so no server outlives its run. Linux only; elsewhere teardown must do."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class RedisServer:
    def __init__(self, tmp_path: Path, appendonly: bool = True, *, password: str | None = None):
        self.binary = redis_server_binary()
        self.dir = Path(tmp_path) / f"redis-{os.urandom(3).hex()}"
        self.dir.mkdir(parents=True)
        self.appendonly = appendonly
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        a = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always", "--save", "",
             "--protected-mode", "yes", "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
        if self.password is not None:
            a += ["--requirepass", self.password]
        return a

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(self.args(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log()[-2000:]}")
            if self.ping():
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not answer PING within {timeout} s: {self.log()[-2000:]}")

    def ping(self) -> bool:
        """PING over a raw socket (no client library): +PONG once it serves, with the password if any."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                if self.password is not None:
                    s.sendall(f"AUTH {self.password}\r\n".encode())
                    if not s.recv(64).startswith(b"+OK"):
                        return False
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def log(self) -> str:
        try:
            return (self.dir / "redis.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: Redis flushes the AOF and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: what was acknowledged is in the AOF (appendfsync always), nothing else."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        """Stop (if running) and start again on the same port and folder: the AOF brings the data back."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
