"""Several boxes on one queue, as real processes: a redis-server, a front (`python -m wan22bot run`
with [queue] backend = "redis" and [worker] enabled = false: watched folder and HTTP on free
ports) and `wan22bot worker` processes on the tiny model, each with its own state folder.

Each sampler step of a worker is held to STEP_SECONDS (paced.py), so a job lasts a few seconds
and a test can act while it renders; heartbeats and the claim timeout are short so a takeover
happens within seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.daemon.conftest import PHOTO, DaemonProc, daemon_factory  # noqa: F401 (a SQLite daemon, for test_roles)
from tests.procs import ProcHandle
from tests.redis_server import RedisServer
from tests.systemd.notifysock import NotifySocket
from wan22bot.credentials import HTTP_TOKEN_CREDENTIAL

PACED = Path(__file__).with_name("paced.py")
TOKEN = "scaling-test-token-8c1f0e2d4b6a"
TOKEN_ENV = "WAN22BOT_TEST_SCALING_TOKEN"
STEPS = 16
STEP_SECONDS = 0.1  # a job: 16 paced steps, about 2 s, plus the decode and the encode
HEARTBEAT = 0.4
CLAIM_TIMEOUT = 1.5


def queue_section(redis_url: str, prefix: str = "wan22bot") -> str:
    return f"""
backend = "redis"
url = "{redis_url}"
redis_prefix = "{prefix}"
heartbeat_seconds = {HEARTBEAT}
claim_timeout_seconds = {CLAIM_TIMEOUT}
"""


def config_text(port: int, state: str, queue: str, *, worker: str) -> str:
    return f"""
[paths]
input = "in"
output = "out"
state = "{state}"
[generation]
frames = 5
width = 64
height = 96
steps = {STEPS}
switch_step = {STEPS // 2}
[watch]
settle_seconds = 0.2
poll_seconds = 0.1
[http]
port = {port}
token_env = "{TOKEN_ENV}"
[queue]
max_length = 40
max_attempts = 3
{queue}
[worker]
{worker}
"""


def make_photo(path: Path, seed: int) -> None:
    """A distinct photo (the watched folder dedupes by content), written whole then renamed in."""
    from PIL import Image

    img = Image.open(PHOTO).convert("RGB")
    img.paste(((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256), (0, 0, 40, 40))
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="JPEG", quality=90)
    os.replace(tmp, path)


class Front(DaemonProc):
    """The front box: DaemonProc's process handling, with a Redis queue and the bearer token."""

    def __init__(self, root: Path, redis_url: str, *, prefix: str = "wan22bot", worker: str = "enabled = false"):
        super().__init__(root)
        self.config.write_text(config_text(self.port, "state", queue_section(redis_url, prefix), worker=worker))

    def start(self, env: dict | None = None, wait: bool = True) -> "Front":
        return super().start({TOKEN_ENV: TOKEN, **(env or {})}, wait)

    def request(self, method: str, path: str):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                body = r.read()
                return r.status, json.loads(body) if r.headers.get_content_type() == "application/json" else body
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def get(self, path: str):
        return self.request("GET", path)

    def by_photo(self) -> dict[str, dict]:
        return {j["photo"]: j for j in self.jobs()}

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


class WorkerProc(ProcHandle):
    def __init__(self, root: Path, name: str, front: Front, redis_url: str, *, prefix: str = "wan22bot"):
        self.root = root
        self.name = name
        self.state = root / f"{name}-state"
        self.config = root / f"{name}.toml"
        self.log = root / f"{name}.log"
        self.config.write_text(config_text(front.port, f"{name}-state", queue_section(redis_url, prefix),
                                           worker=f'name = "{name}"'))
        self.proc: subprocess.Popen | None = None
        self._logf = None
        self.env: dict[str, str] = {}
        self._mark = 0

    def start(self, env: dict | None = None, *, token: bool = True) -> "WorkerProc":
        e = dict(os.environ, PYTHONUNBUFFERED="1", WAN22BOT_TEST_STEP_SECONDS=str(STEP_SECONDS))
        for k in (TOKEN_ENV, "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY"):
            e.pop(k, None)
        if token:
            e[TOKEN_ENV] = TOKEN
        e.update(env or {})
        self.env = e
        return self._spawn()

    def restart(self) -> "WorkerProc":
        """Start again with the environment of the last start (same state folder, same name)."""
        assert not self.alive
        return self._spawn()

    def _spawn(self) -> "WorkerProc":
        self._logf = open(self.log, "ab")
        self._mark = self._logf.tell()  # where this run's lines begin (a restart appends)
        self.proc = subprocess.Popen([sys.executable, str(PACED), "worker", "-c", str(self.config)], cwd=self.root,
                                     env=self.env, stdout=self._logf, stderr=subprocess.STDOUT)
        return self

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 90) -> "WorkerProc":
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            if b"ready: worker " in self.log.read_bytes()[self._mark:]:
                return self
            time.sleep(0.1)
        raise AssertionError(f"worker {self.name} not ready after {timeout}s:\n{self.text()[-3000:]}")

    def started(self) -> list[str]:
        """Ids of the jobs this worker started (its log's "job ID: started" lines), in order."""
        return re.findall(r"job ([0-9a-f]+): started", self.text())



def wait_until(pred, timeout: float, what: str, *logs):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    tails = "\n".join(f"--- {getattr(p, 'name', 'front')}:\n{p.text()[-2500:]}" for p in logs)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tails}")


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.redis = RedisServer(root)
        self.front = Front(root, self.redis.url)
        self.workers = [WorkerProc(root, n, self.front, self.redis.url) for n in ("w1", "w2")]
        self.front.input.mkdir(exist_ok=True)
        self._seed = 0
        self.notify: NotifySocket | None = None
        self.notify_dir = ""

    @property
    def procs(self):
        return [self.front, *self.workers]

    def drop(self, *stems: str) -> list[str]:
        names = []
        for stem in stems:
            self._seed += 1
            make_photo(self.front.input / f"{stem}.jpg", self._seed)
            names.append(f"{stem}.jpg")
        return names

    def job_of(self, photo: str, timeout: float = 30) -> dict:
        return wait_until(lambda: self.front.by_photo().get(photo), timeout, f"the job of {photo}", *self.procs)

    def running_on(self, job_id: str, timeout: float = 30) -> WorkerProc:
        """The worker that rendered a step of the job (its progress reached the front)."""

        def rendering():
            job = self.front.get(f"/api/jobs/{job_id}")[1]
            p = job.get("progress") or {}
            if job.get("state") == "running" and p.get("stage") in ("pass1", "pass2") and p.get("step", 0) >= 1:
                return next((w for w in self.workers if w.alive and job_id in w.started()), None)
            return None

        return wait_until(rendering, timeout, f"job {job_id} to render on a worker", *self.procs)

    def wait_final(self, photos: list[str], timeout: float = 60) -> dict[str, dict]:
        def final():
            jobs = self.front.by_photo()
            if all(p in jobs and jobs[p]["state"] in ("done", "failed", "cancelled") for p in photos):
                return jobs
            return None

        return wait_until(final, timeout, f"{photos} to end", *self.procs)

    def outputs(self) -> list[str]:
        return sorted(f.name for f in self.front.output.iterdir() if not f.name.startswith("."))

    def done_on(self, job_id: str) -> list[str]:
        """Which workers the front says stored this job's result (accept_result's log line)."""
        return re.findall(rf"job {job_id}: done on (\S+?);", self.front.text())

    def close(self) -> None:
        for p in self.procs:
            if p.proc is not None and p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait(10)
        self.redis.kill()
        if self.notify is not None:
            self.notify.close()
            shutil.rmtree(self.notify_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("scaling"))
    try:
        # w2 as systemd starts a unit: sd_notify with a watchdog, the token as a credential file
        c.notify_dir = tempfile.mkdtemp(prefix="sdn")  # short: AF_UNIX paths are limited to 108 bytes
        sock = os.path.join(c.notify_dir, "notify")
        c.notify = NotifySocket(sock).start()
        creds = c.root / "credentials"
        creds.mkdir()
        (creds / HTTP_TOKEN_CREDENTIAL).write_text(TOKEN + "\n")
        c.front.start(wait=False)
        c.workers[0].start()
        c.workers[1].start({"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "1000000", "CREDENTIALS_DIRECTORY": str(creds)},
                           token=False)
        c.front.wait_healthy()
        for w in c.workers:
            w.wait_ready()
        yield c
    finally:
        c.close()
