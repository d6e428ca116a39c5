"""The worker survives a failed model (re)load, and a stuck worker shows in /healthz and stops the
systemd watchdog pings. Real tiny model, real queue, real HTTP server, real notify socket."""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from wan22bot.config import Config, GenerationConfig, HttpConfig, ModelConfig, PathsConfig, QueueConfig
from wan22bot.daemon import Daemon
from wan22bot.engine.components import load_components
from wan22bot.engine.generator import TwoPassGenerator
from wan22bot.errors import ModelError
from wan22bot.jobs import JobSpec, JobState
from wan22bot.queue import JobQueue
from wan22bot.render import Renderer
from wan22bot.worker import Worker

from ..systemd.notifysock import NotifySocket

PHOTO = Path(__file__).resolve().parents[2] / "examples" / "photo.jpg"
FINAL = ("done", "failed", "cancelled")


class Loads:
    """A components factory: the real tiny components, except load number `fail_on` raises and
    load number `hang_on` waits for `release` (a disk that stopped answering)."""

    def __init__(self, fail_on: int | None = None, hang_on: int | None = None):
        self.n = 0
        self.fail_on, self.hang_on = fail_on, hang_on
        self.release = threading.Event()

    def __call__(self, cfg, device, dtype):
        self.n += 1
        if self.n == self.fail_on:
            raise ModelError("the model files are not usable: high-noise expert: unexpected end of file")
        if self.n == self.hang_on:
            assert self.release.wait(60)
        return load_components(cfg, device, dtype)


def _cfg(tmp_path: Path, stall_minutes: float | None = None) -> Config:
    return Config(paths=PathsConfig(input=tmp_path / "in", output=tmp_path / "out", state=tmp_path / "state"),
                  model=ModelConfig(kind="tiny", device="cpu"),
                  generation=GenerationConfig(width=64, height=96, frames=5),
                  http=HttpConfig(port=0),
                  **({"queue": QueueConfig(stall_minutes=stall_minutes)} if stall_minutes else {}))


async def _until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Rig:
    def __init__(self, cfg: Config, loads: Loads):
        self.cfg, self.loads = cfg, loads
        self.finals: dict[str, asyncio.Event] = {}

    async def open(self) -> "Rig":
        self.q = JobQueue(self.cfg.paths.state, self.cfg.paths.output)
        await self.q.start()
        self.renderer = Renderer(self.cfg, TwoPassGenerator(self.cfg.model, components_factory=self.loads))
        self.worker = Worker(self.cfg, self.q, self.renderer)
        self.q.add_listener(lambda ev: self.finals.setdefault(ev.job.id, asyncio.Event()).set()
                            if ev.kind in FINAL else None)
        return self

    async def submit(self, tag: str):
        job, _ = await self.q.submit(JobSpec(source="cli", original_name=f"{tag}.jpg", input_path="", name=""), PHOTO)
        return job

    async def final(self, job, timeout: float = 120):
        ev = self.finals.setdefault(job.id, asyncio.Event())
        await asyncio.wait_for(ev.wait(), timeout)
        return await self.q.get(job.id)

    async def close(self) -> None:
        self.loads.release.set()
        await self.worker.stop()
        await self.q.close()


async def test_a_failed_reload_after_idle_unload_fails_that_job_and_the_worker_goes_on(tmp_path):
    rig = await Rig(_cfg(tmp_path), Loads(fail_on=2)).open()
    try:
        await rig.worker.load()  # load 1: at start
        assert await rig.worker.unload_if_idle(0)  # idle unload: the next job reloads
        rig.worker.start()
        first = await rig.final(await rig.submit("first"))  # load 2 fails
        assert first.state == JobState.failed
        assert "the models could not be loaded" in first.error and "unexpected end of file" in first.error
        h = rig.worker.health()
        assert h.ok and h.state == "idle", h
        second = await rig.final(await rig.submit("second"))  # load 3 works: the worker went on
        assert second.state == JobState.done, second.error
        assert Path(second.result.output).is_file()
        assert (await rig.q.counts())["running"] == 0
    finally:
        await rig.close()


async def test_a_stuck_load_shows_in_healthz_and_stops_the_watchdog_pings(tmp_path, monkeypatch):
    from wan22bot.sources.http import HttpSource

    sockdir = tempfile.mkdtemp(prefix="wd")
    sock = NotifySocket(os.path.join(sockdir, "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(sockdir, "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    cfg = _cfg(tmp_path, stall_minutes=0.5 / 60)  # half a second without a beat = stuck
    rig = await Rig(cfg, Loads(hang_on=1)).open()
    http = HttpSource(cfg, rig.q, rig.worker)
    await http.start()
    daemon = Daemon(cfg)
    daemon.worker = rig.worker
    try:
        async def healthz():
            async with aiohttp.ClientSession() as s, s.get(f"{http.url}/healthz") as r:
                return r.status, await r.json()

        assert daemon.watchdog_tick() is True
        assert sock.recv_one(5).fields == {"WATCHDOG": "1"}
        rig.worker.start()
        job = await rig.submit("stuck")  # lazy load: hangs in the GPU thread
        await _until(lambda: rig.worker.health().state == "stuck", 30, "the worker to count as stuck")
        status, body = await healthz()
        assert status == 503 and body["status"] == "unhealthy", body
        assert body["worker"]["state"] == "stuck" and "loading the models" in body["worker"]["detail"]
        assert daemon.watchdog_tick() is False
        got = sock.recv_one(5).fields  # a STATUS saying why, and no WATCHDOG=1
        assert "WATCHDOG" not in got and got["STATUS"].startswith("worker stuck"), got
        assert daemon.watchdog_tick() is False
        with pytest.raises(AssertionError):
            sock.recv_one(0.5)  # still no ping
        rig.loads.release.set()  # the disk answers again: the job runs, health comes back
        final = await rig.final(job)
        assert final.state == JobState.done, final.error
        await _until(lambda: rig.worker.health().ok, 30, "the worker to be healthy again")
        assert (await healthz())[0] == 200
        assert daemon.watchdog_tick() is True
        assert sock.recv_one(5).fields == {"WATCHDOG": "1"}
    finally:
        await http.stop()
        await rig.close()
        sock.close()
        os.unlink(os.path.join(sockdir, "notify.sock"))
        os.rmdir(sockdir)


async def test_a_stop_does_not_wait_for_a_stuck_gpu_thread(tmp_path):
    cfg = _cfg(tmp_path, stall_minutes=0.5 / 60)
    rig = await Rig(cfg, Loads(hang_on=1)).open()
    daemon = Daemon(cfg)
    daemon.worker = rig.worker
    try:
        rig.worker.start()
        job = await rig.submit("stuck")
        await _until(lambda: rig.worker.health().state == "stuck", 30, "the worker to count as stuck")
        await asyncio.wait_for(daemon._stop_worker(), 10)  # before: waited for the load forever
        assert daemon.abandon_gpu  # run_daemon then leaves without joining the thread
        assert (await rig.q.get(job.id)).state == JobState.running  # recovered at the next start
    finally:
        rig.loads.release.set()
        await rig.q.close()


async def test_a_worker_loop_that_dies_is_reported_dead(tmp_path):
    rig = await Rig(_cfg(tmp_path), Loads()).open()
    try:
        async def broken_next_job():
            raise RuntimeError("journal thread gone")

        rig.q.next_job = broken_next_job  # the loop's own await fails, outside any job
        rig.worker.start()
        await _until(lambda: rig.worker.health().state == "dead", 10, "the worker to be reported dead")
        h = rig.worker.health()
        assert not h.ok and "journal thread gone" in h.detail
    finally:
        await rig.close()
