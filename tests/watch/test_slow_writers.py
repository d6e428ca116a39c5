"""Slow writers: a copy that stalls longer than settle_seconds while holding the file open is not
judged until it closes; a photo refused as truncated that is then completed goes back to the queue."""

from __future__ import annotations

import hashlib
import threading

from wan22bot.jobs import JobState

from .conftest import SETTLE, photo_bytes, stalling_writer, wait_for


async def test_a_copy_that_stalls_longer_than_settle_is_taken_only_after_it_closes(rig):
    await rig.start(rescan_seconds=60)
    data = photo_bytes(1, size=(256, 192), noise=True)
    path = rig.input / "network copy.jpg"
    closed = threading.Event()
    seen_early: set[str] = set()

    async def writer_finished():
        # Checked on every poll while the writer stalls: nothing may be queued or judged yet.
        if not closed.is_set():
            if await rig.jobs():
                seen_early.add("queued")
            if rig.listing(rig.failed):
                seen_early.add(f"judged: {sorted(rig.listing(rig.failed))}")
        return closed.is_set()

    writer = stalling_writer(path, data, chunks=3, pause=SETTLE * 2.5, done=closed)
    await wait_for(writer_finished, 20, "the stalling writer to close the file")
    writer.join(timeout=5)
    assert seen_early == set(), f"a file still open for writing was taken: {seen_early}"
    jobs = await rig.wait_jobs(1, JobState.done)
    assert len(jobs) == 1 and jobs[0].content_hash == hashlib.sha256(data).hexdigest()
    await rig.wait_file(rig.processed / "network copy.jpg")
    assert rig.listing(rig.failed) == set()
    assert {"network copy.mp4"} <= rig.listing(rig.output)


async def test_a_photo_refused_as_truncated_and_then_completed_goes_back_to_the_queue(rig):
    await rig.start()
    data = photo_bytes(2, size=(256, 192), noise=True)
    cut = len(data) // 2
    rig.drop("late.jpg", data[:cut])  # written and closed: only half of it had arrived
    await rig.wait_file(rig.failed / "late.jpg.error.txt")
    assert "truncated" in (rig.failed / "late.jpg.error.txt").read_text()
    assert await rig.jobs() == []
    with open(rig.failed / "late.jpg", "ab") as f:  # the writer finishes the file where it now is
        f.write(data[cut:])
    jobs = await rig.wait_jobs(1, JobState.done)
    assert jobs[0].spec.original_name == "late.jpg"
    assert jobs[0].content_hash == hashlib.sha256(data).hexdigest()
    await rig.wait_file(rig.processed / "late.jpg")
    assert (rig.processed / "late.jpg").read_bytes() == data
    await wait_for(lambda: rig.listing(rig.failed) == set(), 5, "the failed folder to empty")
    assert "late.mp4" in rig.listing(rig.output)


async def test_a_refused_photo_that_does_not_change_stays_refused(rig):
    await rig.start()
    rig.drop("broken.jpg", b"not a photo at all")
    await rig.wait_file(rig.failed / "broken.jpg.error.txt")
    (rig.failed / "other.txt").write_text("unrelated")  # activity in the folder is not a change to it
    rig.drop("control.jpg", seed=3)
    await rig.wait_jobs(1, JobState.done)
    await rig.wait_file(rig.processed / "control.jpg")
    assert [j.spec.original_name for j in await rig.jobs()] == ["control.jpg"]
    assert {"broken.jpg", "broken.jpg.error.txt"} <= rig.listing(rig.failed)
