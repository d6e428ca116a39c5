"""per-device worker processes: a killed one is restarted and its job finishes once; a stop
checkpoints the running job. (Two photos at once on ["cpu", "cpu"]: test_daemon.py.)"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from wan22bot.jobs import JobState

from .conftest import wait_for

pytestmark = pytest.mark.slow


async def test_a_worker_killed_mid_job_is_restarted_and_the_job_finishes_once_then_cancel_and_stop(harness):
    # one device, so the restarted process is the one that must finish the job
    async with harness(["cpu"], frames=9, steps=20, switch_step=10) as h:
        first_pid = h.pool.procs[0].pid
        # a terminal's Ctrl-C reaches worker processes too; they leave stopping to the daemon
        os.kill(first_pid, signal.SIGINT)
        job = await h.submit("victim")
        # killed as the first step's progress arrives: 19 steps, the decode and the encode remain
        h.on_first("progress", "pass1", job.id, lambda: os.kill(first_pid, signal.SIGKILL))
        await wait_for(lambda: any(e.kind == "requeued" and e.job.id == job.id for e in h.events), 30,
                       "the job to be re-queued")
        await wait_for(lambda: h.final(job.id), 120, "the job to finish after the restart")
        done = await h.queue.get(job.id)
        assert done.state == JobState.done, done.error
        assert done.attempts == 2  # the killed attempt counts
        p = h.pool.procs[0]
        assert p.restarts == 1 and p.pid != first_pid and p.jobs_done == 1
        assert [e.kind for e in h.final(job.id)] == ["done"]
        out = Path(h.cfg.paths.output)
        assert sorted(f.name for f in out.iterdir() if not f.name.startswith(".")) == ["victim.json", "victim.mp4"]

        # a cancel reaches the process: the job stops at its next step, the process goes on
        gone = await h.submit("cancelled")
        asked: list = []
        h.on_first("progress", "pass1", gone.id, lambda: asked.append(asyncio.ensure_future(h.queue.cancel(gone.id))))
        await wait_for(lambda: h.final(gone.id), 60, "the cancel to land")
        assert asked[0].result() == "cancelling"
        assert (await h.queue.get(gone.id)).state == JobState.cancelled
        assert not (out / "cancelled.mp4").exists() and h.pool.procs[0].pid == p.pid

        # a daemon stop mid-job checkpoints it: back in the queue, no attempt spent, process gone
        nxt = await h.submit("next")
        pid = h.pool.procs[0].pid
        stopping: list = []
        h.on_first("progress", "pass1", nxt.id, lambda: stopping.append(asyncio.ensure_future(h.pool.stop())))
        await wait_for(lambda: stopping, 60, "the next job's pass 1")
        await stopping[0]
        back = await h.queue.get(nxt.id)
        assert back.state == JobState.queued and back.attempts == 0
        assert h.pool.procs[0].state == "stopped" and not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_worker_that_cannot_load_fails_the_start_naming_the_device(tmp_path):
    # this machine has no CUDA: a worker process for cuda:1 cannot load its models
    from wan22bot.errors import ModelError
    from wan22bot.gpus.supervisor import WorkerPool
    from wan22bot.queue import JobQueue

    from .conftest import make_config

    cfg = make_config(tmp_path, ["cuda:0", "cuda:1"])
    queue = JobQueue(cfg.paths.state, cfg.paths.output)
    await queue.start()
    pool = WorkerPool(cfg, queue)
    try:
        with pytest.raises(ModelError) as e:
            await asyncio.wait_for(pool.load(), 120)
        assert "worker gpu" in str(e.value) and "sees no such CUDA device" in str(e.value)
        assert "cuda:1 is not usable" in str(e.value) or "cuda:0 is not usable" in str(e.value)
    finally:
        await pool.stop()
        await queue.close()
    assert all(p.state == "stopped" and p.pid is None for p in pool.procs)
