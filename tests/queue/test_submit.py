"""submit(): the photo is spooled durably and journaled before the caller hears "queued"."""

from __future__ import annotations

import sqlite3

import pytest

from wan22bot.jobs import JobResult, JobState
from wan22bot.queue import QueueFull

from .conftest import claim, photo_bytes, spec


def _row(db_path, job_id):
    """Read the journal through a separate connection: only committed rows are visible."""
    con = sqlite3.connect(str(db_path))
    try:
        return con.execute("SELECT state, source, lane FROM jobs WHERE id=?", (job_id,)).fetchone()
    finally:
        con.close()


async def test_submit_spools_and_journals_before_returning(queues):
    data = photo_bytes("a")
    seen = {}

    def on_event(ev):
        # published inside submit(), before it returns to the source
        if ev.kind == "queued":
            p = ev.job.spec.input_path
            seen["spooled"] = open(p, "rb").read()
            seen["row"] = _row(queues.state / "jobs.sqlite", ev.job.id)
            seen["parts"] = sorted(x.name for x in (queues.state / "spool").iterdir() if x.name.endswith(".part"))

    q = await queues.open(listener=on_event)
    job, created = await q.submit(spec("discord", "A", "Holiday.JPG"), data)
    assert created is True
    assert seen["spooled"] == data
    assert seen["row"] == ("queued", "discord", "discord:A")
    assert seen["parts"] == []
    spooled = queues.state / "spool" / f"{job.id}.jpg"  # extension kept, lower-cased
    assert job.spec.input_path == str(spooled)
    assert spooled.read_bytes() == data
    assert job.spec.name == "Holiday"
    assert job.state == JobState.queued and job.attempts == 0
    assert (await q.get(job.id)).spec == job.spec


async def test_submit_from_a_path_copies_the_file(q, tmp_path):
    src = tmp_path / "incoming.png"
    src.write_bytes(photo_bytes("p"))
    job, _ = await q.submit(spec("watch", name="incoming.png"), src)
    assert job.spec.input_path != str(src)
    assert open(job.spec.input_path, "rb").read() == src.read_bytes()
    src.unlink()  # the source may move or delete its file: the spooled copy is the queue's own
    assert open(job.spec.input_path, "rb").read()[:4] == b"\xff\xd8\xff\xe0"


async def test_odd_extension_is_spooled_as_img(q):
    job, _ = await q.submit(spec("http", name="x.j p;g"), photo_bytes(1))
    assert job.spec.input_path.endswith(f"{job.id}.img")


async def test_fifo_within_a_lane(q):
    ids = [(await q.submit(spec("discord", "A", f"a{i}.jpg"), photo_bytes(i)))[0].id for i in range(4)]
    got = [(await claim(q)).id for _ in ids]
    assert got == ids


async def test_one_user_cannot_starve_the_watched_folder(q):
    a = [(await q.submit(spec("discord", "A", f"a{i}.jpg"), photo_bytes(f"a{i}")))[0].id for i in range(5)]
    w = (await q.submit(spec("watch", None, "w.jpg"), photo_bytes("w")))[0].id
    expected = [a[0], w, *a[1:]]
    pos = await q.positions()
    predicted = sorted(pos, key=pos.get)
    assert predicted == expected
    assert sorted(pos.values()) == list(range(1, 7))
    assert await q.position(w) == 2
    taken = [(await claim(q)).id for _ in range(6)]
    assert taken == expected  # the watch job is claimed 2nd, not 6th


async def test_positions_predict_claims_with_three_lanes_and_history(q):
    """Positions must match the claim order also after some lanes have been served already."""
    jobs = {}
    for i in range(3):
        jobs[f"A{i}"] = (await q.submit(spec("discord", "A", f"a{i}.jpg"), photo_bytes(f"A{i}")))[0].id
    first = await claim(q)  # lane discord:A has now been served
    assert first.id == jobs["A0"]
    await q.finish(first, JobState.done)
    for i in range(2):
        jobs[f"B{i}"] = (await q.submit(spec("discord", "B", f"b{i}.jpg"), photo_bytes(f"B{i}")))[0].id
    for i in range(2):
        jobs[f"W{i}"] = (await q.submit(spec("watch", None, f"w{i}.jpg"), photo_bytes(f"W{i}")))[0].id
    jobs["H0"] = (await q.submit(spec("http", None, "h.jpg"), photo_bytes("H0")))[0].id
    pos = await q.positions()
    predicted = sorted(pos, key=pos.get)
    names = {v: k for k, v in jobs.items()}
    # never-served lanes in arrival order, then round robin; A (served) waits its turn
    assert [names[i] for i in predicted] == ["B0", "W0", "H0", "A1", "B1", "W1", "A2"]
    taken = []
    for _ in range(len(predicted)):
        # before every claim the prediction of what is left must still hold
        pos = await q.positions()
        assert sorted(pos, key=pos.get) == predicted[len(taken):]
        taken.append((await claim(q)).id)
    assert taken == predicted


async def test_queue_full_is_a_clear_error_and_leaves_no_spool_file(queues):
    q = await queues.open(max_length=2)
    for i in range(2):
        await q.submit(spec("discord", "A", f"{i}.jpg"), photo_bytes(i))
    spool_before = sorted(p.name for p in q.spool.iterdir())
    with pytest.raises(QueueFull) as exc:
        await q.submit(spec("discord", "A", "third.jpg"), photo_bytes(3))
    msg = str(exc.value)
    assert "queue is full" in msg and "2 jobs waiting" in msg and "try again later" in msg
    assert sorted(p.name for p in q.spool.iterdir()) == spool_before
    assert (await q.counts())["queued"] == 2
    # only waiting jobs count: once one is running there is room again
    await claim(q)
    job, created = await q.submit(spec("discord", "A", "third.jpg"), photo_bytes(3))
    assert created and job.state == JobState.queued


async def test_dedupe_returns_the_active_job_then_a_new_one_after_it_is_done(q):
    data = photo_bytes("same")
    first, created = await q.submit(spec("watch", name="same.jpg"), data, dedupe=True)
    assert created
    again, created = await q.submit(spec("watch", name="same copy.jpg"), data, dedupe=True)
    assert (again.id, created) == (first.id, False)
    assert len(list(q.spool.iterdir())) == 1  # nothing spooled for the duplicate
    # another source with the same photo is its own job
    other, created = await q.submit(spec("http", name="same.jpg"), data, dedupe=True)
    assert created and other.id != first.id
    # still a duplicate while running
    running = await claim(q)
    assert running.id == first.id
    again, created = await q.submit(spec("watch", name="same.jpg"), data, dedupe=True)
    assert (again.id, created) == (first.id, False)
    await q.finish(running, JobState.done)
    fresh, created = await q.submit(spec("watch", name="same.jpg"), data, dedupe=True)
    assert created and fresh.id not in (first.id, other.id)
    # without dedupe the same content is always a new job
    plain, created = await q.submit(spec("watch", name="same.jpg"), data)
    assert created and plain.id != fresh.id


async def test_output_names_are_unique(q):
    (q.output_dir / "cat.mp4").write_bytes(b"old video")
    a, _ = await q.submit(spec("watch", name="cat.jpg"), photo_bytes(1))
    assert a.spec.name == "cat-2"  # an existing video is never overwritten
    b, _ = await q.submit(spec("watch", name="cat.png"), photo_bytes(2))
    assert b.spec.name == "cat-3"  # an active job already holds cat-2
    c, _ = await q.submit(spec("watch", name="dog.jpg"), photo_bytes(3))
    d, _ = await q.submit(spec("http", name="dog.jpg"), photo_bytes(4))
    assert (c.spec.name, d.spec.name) == ("dog", "dog-2")
    # a finished job whose video is gone no longer holds its name
    job = await claim(q)
    assert job.id == a.id
    await q.finish(job, JobState.failed, error="x")
    e, _ = await q.submit(spec("watch", name="cat.jpg"), photo_bytes(5))
    assert e.spec.name == "cat-2"


async def test_requeue_without_counting_an_attempt(q):
    job, _ = await q.submit(spec(), photo_bytes(1))
    running = await claim(q)
    assert running.attempts == 1
    await q.requeue(running)  # default: a shutdown checkpoint, not the job's fault
    assert (await q.get(job.id)).state == JobState.queued
    assert (await q.get(job.id)).attempts == 0
    again = await claim(q)
    assert (again.id, again.attempts) == (job.id, 1)
    await q.requeue(again, count_attempt=True)
    assert (await q.get(job.id)).attempts == 1
    assert (await claim(q)).attempts == 2


async def test_a_job_that_settled_is_not_requeued(q):
    """A requeue decided on an older read of the job (a front reconciling a Redis that lost its
    data, while the job's result comes in) must not undo its final state."""
    job, _ = await q.submit(spec(), photo_bytes(1))
    running = await claim(q)
    await q.finish(running, JobState.done)
    assert await q.requeue(running) is False
    assert (await q.get(job.id)).state == JobState.done
    other, _ = await q.submit(spec("watch", name="b.jpg"), photo_bytes(2))
    assert await q.requeue(await claim(q)) is True  # a running one still goes back
    assert (await q.get(other.id)).state == JobState.queued


async def test_cancel_queued_job_is_never_claimed(q):
    a, _ = await q.submit(spec("watch", name="a.jpg"), photo_bytes(1))
    b, _ = await q.submit(spec("watch", name="b.jpg"), photo_bytes(2))
    assert await q.cancel(a.id) == "cancelled"
    got = await q.get(a.id)
    assert got.state == JobState.cancelled and got.finished is not None
    assert (await claim(q)).id == b.id
    assert await q.run_db(q.journal.claim_next) is None
    assert a.id not in await q.positions()
    assert await q.cancel(a.id) == "final"
    assert await q.cancel("nosuchjob") == "unknown"


async def test_cancel_running_job_sets_its_flag(q):
    job, _ = await q.submit(spec(), photo_bytes(1))
    running = await claim(q)
    flag = q.cancel_flag(running.id)
    assert not flag.is_set()
    assert await q.cancel(job.id) == "cancelling"
    assert flag.is_set()
    assert (await q.get(job.id)).state == JobState.running  # the worker decides when it stops
    await q.finish(running, JobState.cancelled, error="cancelled")
    assert await q.cancel(job.id) == "final"


async def test_undelivered_and_mark_delivered(q):
    a, _ = await q.submit(spec("discord", "A", "a.jpg"), photo_bytes(1))
    b, _ = await q.submit(spec("discord", "A", "b.jpg"), photo_bytes(2))
    c, _ = await q.submit(spec("discord", "A", "c.jpg"), photo_bytes(3))
    w, _ = await q.submit(spec("watch", None, "w.jpg"), photo_bytes(4))
    assert await q.undelivered("discord") == []  # queued jobs are not owed anything yet
    ja = await claim(q)
    assert ja.id == a.id
    result = JobResult(output="/o/a.mp4", sidecar="/o/a.json", timings={"total": 1.5}, frames=5, fps=16,
                       width=64, height=96, seed=7, bytes=1234)
    await q.finish(ja, JobState.done, result=result)
    assert await q.cancel(c.id) == "cancelled"
    owed = await q.undelivered("discord")
    assert [j.id for j in owed] == [a.id, c.id]
    assert owed[0].result == result
    assert await q.undelivered("watch") == []
    await q.mark_delivered(a.id)
    assert [j.id for j in await q.undelivered("discord")] == [c.id]
    assert (await q.get(a.id)).delivered is True
    assert (await q.get(b.id)).delivered is False
    assert w.id not in {j.id for j in await q.undelivered("discord")}
