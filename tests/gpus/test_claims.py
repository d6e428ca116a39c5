"""Claims from one journal file by several processes: a job is never given to two of them, and a
dead process's jobs are put back."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from wan22bot.jobs import JobSpec, JobState
from wan22bot.queue.journal import Journal

JOBS = 200


def _claim_all(path: str, owner: str, barrier, out) -> None:
    j = Journal(Path(path))  # each process opens the file itself, as the worker processes do
    got = []
    # lockstep rounds: in each one both processes race for the next job at the same moment
    for _ in range(JOBS // 2):
        barrier.wait(30)
        job = j.claim_next(owner=owner)
        got.append(job.id if job else None)
    j.close()
    out.put((owner, got))


def _spec(i: int) -> JobSpec:
    return JobSpec(source="http", input_path=f"/spool/{i}.jpg", original_name=f"{i}.jpg", name=f"p{i}")


def test_two_processes_claiming_at_once_never_share_a_job(tmp_path):
    path = tmp_path / "jobs.sqlite"
    j = Journal(path)
    ids = {j.insert(_spec(i)).id for i in range(JOBS)}
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(str(path), f"gpu{n}", barrier, out)) for n in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    a, b = results["gpu0"], results["gpu1"]
    assert None not in a and None not in b  # each round had a job for each of them
    assert not set(a) & set(b), f"claimed twice: {set(a) & set(b)}"
    assert len(a) + len(b) == JOBS and set(a) | set(b) == ids
    # the journal agrees: every job is running, owned by the process that returned it
    owners = dict(j._q("SELECT id, claimed_by FROM jobs"))
    assert all(owners[i] == "gpu0" for i in a) and all(owners[i] == "gpu1" for i in b)
    assert j.counts()["running"] == JOBS
    j.close()


def test_a_dead_workers_jobs_go_back_with_the_attempt_counted(tmp_path):
    j = Journal(tmp_path / "jobs.sqlite")
    first, second, third = (j.insert(_spec(i)) for i in range(3))
    assert j.claim_next(owner="gpu0").id == first.id
    assert j.claim_next(owner="gpu1").id == second.id
    requeued, failed = j.release_owned("gpu0", max_attempts=3)
    assert (requeued, failed) == ([first.id], [])
    back = j.get(first.id)
    assert back.state == JobState.queued and back.attempts == 1
    assert j.get(second.id).state == JobState.running  # another process's job is left alone
    # claimed and lost until the attempts are used up: then it fails with the reason
    for _ in range(2):
        assert j.claim_next(owner="gpu0").id == first.id
        j.release_owned("gpu0", max_attempts=3)
    got = j.get(first.id)
    assert got.state == JobState.failed and got.attempts == 3 and "gpu0 died" in got.error
    assert j.get(third.id).state == JobState.queued
    j.close()
