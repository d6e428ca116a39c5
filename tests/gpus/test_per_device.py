"""per-device mode on ["cpu", "cpu"]: two worker processes, each with its own resident model,
claiming from the one journal."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import av
import pytest

from wan22bot.jobs import JobState

from .conftest import wait_for

pytestmark = pytest.mark.slow


async def test_two_photos_render_at_once_one_on_each_process(harness):
    async with harness(["cpu", "cpu"]) as h:
        pids = {p.pid for p in h.pool.procs}
        assert len(pids) == 2 and os.getpid() not in pids  # two processes, neither is us
        a, b = await h.submit("first"), await h.submit("second")
        await wait_for(lambda: h.final(a.id) and h.final(b.id), 120, "both jobs to finish")
        jobs = [await h.queue.get(a.id), await h.queue.get(b.id)]
        assert [j.state for j in jobs] == [JobState.done, JobState.done], [j.error for j in jobs]
        # each process did one
        assert sorted(p.jobs_done for p in h.pool.procs) == [1, 1]
        workers = set()
        for j in jobs:
            mp4 = Path(j.result.output)
            with av.open(str(mp4)) as c:
                assert sum(1 for _ in c.decode(video=0)) == 5
            side = json.loads(Path(j.result.sidecar).read_text())
            workers.add(side["worker"])
            assert side["timings"]["pass1"] > 0 and side["timings"]["total"] > 0
        assert workers == {"gpu0", "gpu1"}
        # at once: each job started before the other one finished
        assert jobs[0].started < jobs[1].finished and jobs[1].started < jobs[0].finished
        # the status the daemon shows: device, busy, job, memory per process
        states = h.pool.states()
        assert [s["device"] for s in states] == ["cpu", "cpu"]
        assert all(s["state"] == "idle" and not s["busy"] and s["memory"].get("rss", 0) > 0 for s in states)


async def test_a_worker_killed_mid_job_is_restarted_and_the_job_finishes_once(harness):
    # one device, so the restarted process is the one that must finish the job
    async with harness(["cpu"], frames=9, steps=8, switch_step=4) as h:
        first_pid = h.pool.procs[0].pid
        job = await h.submit("victim")
        await wait_for(lambda: any(e.kind == "progress" and e.stage == "pass1" and e.job.id == job.id
                                   for e in h.events), 60, "pass 1 to start")
        os.kill(first_pid, signal.SIGKILL)
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
