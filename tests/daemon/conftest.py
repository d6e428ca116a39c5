"""The daemon as a real subprocess (`python -m wan22bot run`) on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from tests.ports import free_port
from tests.procs import ProcHandle

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "examples" / "photo.jpg"


class DaemonProc(ProcHandle):
    def __init__(self, root: Path, extra: str = "", frames: int = 5):
        self.root = root
        self.port = free_port()
        self.input = root / "in"
        self.output = root / "out"
        self.state = root / "state"
        self.config = root / "config.toml"
        self.log = root / "daemon.log"
        self.config.write_text(
            f"""
[paths]
input = "in"
output = "out"
state = "state"
[generation]
frames = {frames}
width = 64
height = 96
[watch]
settle_seconds = 0.3
poll_seconds = 0.1
[http]
port = {self.port}
[queue]
max_length = 40
max_attempts = 3
{extra}
"""
        )
        self.proc: subprocess.Popen | None = None

    def start(self, env: dict | None = None, wait: bool = True) -> "DaemonProc":
        e = dict(os.environ, PYTHONUNBUFFERED="1")
        e.update(env or {})
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "wan22bot", "run", "-c", str(self.config)],
                                     cwd=self.root, env=e, stdout=self._logf, stderr=subprocess.STDOUT)
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"daemon not healthy after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def get(self, path: str):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                body = r.read()
                return r.status, json.loads(body) if r.headers.get_content_type() == "application/json" else body
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def jobs(self) -> list[dict]:
        status, body = self.get("/api/jobs?limit=1000")
        assert status == 200
        return body if isinstance(body, list) else body["jobs"]

    def wait_for(self, pred, timeout: float = 120, what: str = "condition"):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            last = pred()
            if last:
                return last
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; log:\n{self.log.read_text()[-3000:]}")



@pytest.fixture
def daemon_factory(tmp_path):
    procs: list[DaemonProc] = []

    def make(extra: str = "", frames: int = 5, root: Path | None = None) -> DaemonProc:
        d = DaemonProc(root or tmp_path, extra, frames)
        procs.append(d)
        return d

    yield make
    for d in procs:
        if d.proc and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)
