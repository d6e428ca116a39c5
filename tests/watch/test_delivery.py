"""Results sort the photo away: processed/ or failed/, never overwriting; dedupe; restarts; full queue."""

from __future__ import annotations

import logging

from wan22bot.jobs import JobSpec, JobState
from wan22bot.queue import JobQueue

from .conftest import photo_bytes, quiet, scans, wait_for


async def test_done_moves_to_processed_and_names_get_a_suffix_on_collision(rig):
    rig.output.mkdir(parents=True)
    (rig.output / "cat.mp4").write_bytes(b"an older video")
    rig.processed.mkdir(parents=True)
    (rig.processed / "dog.jpg").write_bytes(b"an older photo")
    await rig.start()
    rig.drop("cat.jpg", seed=1)
    rig.drop("dog.jpg", seed=2)
    jobs = {j.spec.original_name: j for j in await rig.wait_jobs(2, JobState.done)}
    assert jobs["cat.jpg"].spec.name == "cat-2"
    assert jobs["dog.jpg"].spec.name == "dog"
    assert (rig.output / "cat.mp4").read_bytes() == b"an older video"
    assert {"cat-2.mp4", "cat-2.json", "dog.mp4", "dog.json"} <= rig.listing(rig.output)
    await rig.wait_file(rig.processed / "dog-2.jpg")
    await rig.wait_file(rig.processed / "cat.jpg")
    assert (rig.processed / "dog.jpg").read_bytes() == b"an older photo"
    assert (rig.processed / "dog-2.jpg").read_bytes() == photo_bytes(2)
    for j in jobs.values():
        await wait_for(_delivered(rig, j.id), 5, "delivered flag")


async def test_equal_copies_under_other_names_are_separate_jobs_and_a_redrop_is_new(rig):
    data = photo_bytes(3)
    await rig.start(worker=False)
    rig.drop("once.jpg", data)
    await rig.wait_jobs(1)
    rig.drop("once copy.jpg", data)  # the same bytes under another name, while the first is queued
    jobs = await rig.wait_jobs(2)
    assert [j.spec.original_name for j in jobs] == ["once.jpg", "once copy.jpg"]
    assert [j.spec.name for j in jobs] == ["once", "once copy"]
    await quiet(rig)
    assert len(await rig.jobs()) == 2, "a settled photo already queued was queued again"
    assert rig.listing(rig.input) == {"once.jpg", "once copy.jpg"}  # pending photos stay in place
    rig.worker.start()
    await rig.wait_jobs(2, JobState.done)
    await wait_for(lambda: rig.listing(rig.input) == set(), 5, "both photos to move")
    assert rig.listing(rig.processed) == {"once.jpg", "once copy.jpg"}
    assert {"once.mp4", "once copy.mp4"} <= rig.listing(rig.output)

    rig.drop("once.jpg", data)  # dropped again after the job finished: a new job
    jobs = await rig.wait_jobs(3, JobState.done)
    assert len(jobs) == 3 and jobs[2].spec.name == "once-2"
    await rig.wait_file(rig.processed / "once-2.jpg")


async def test_failed_and_cancelled_jobs_move_the_photo_to_failed_with_the_reason(rig):
    await rig.start(worker=False)
    rig.worker.fail["sad.jpg"] = "the model ran out of memory at 832x1216; lower the frame count"
    rig.drop("sad.jpg", seed=4)
    (rig.input / "sad.jpg.txt").write_text("a prompt")
    rig.drop("nevermind.jpg", seed=5)
    jobs = {j.spec.original_name: j for j in await rig.wait_jobs(2)}
    assert await rig.queue.cancel(jobs["nevermind.jpg"].id) == "cancelled"
    await rig.wait_file(rig.failed / "nevermind.jpg.error.txt")
    assert "cancelled" in (rig.failed / "nevermind.jpg.error.txt").read_text()
    rig.worker.start()
    await rig.wait_file(rig.failed / "sad.jpg.error.txt")
    text = (rig.failed / "sad.jpg.error.txt").read_text()
    assert "ran out of memory" in text and text.count("\n") == 1
    assert {"sad.jpg", "sad.jpg.txt", "nevermind.jpg"} <= rig.listing(rig.failed)
    assert rig.listing(rig.input) == set()
    assert rig.listing(rig.processed) == set()


async def test_undelivered_jobs_from_a_previous_run_are_delivered_at_start(rig):
    # A previous run: jobs finished while nobody moved the photos (the daemon stopped first).
    q = JobQueue(rig.cfg.paths.state, rig.output)
    await q.start()

    async def submit(name, seed):
        data = rig.drop(name, seed=seed)
        spec = JobSpec(source="watch", input_path="", original_name=name, name=name.rsplit(".", 1)[0],
                       reply={"path": str(rig.input / name)})
        job, _ = await q.submit(spec, data, dedupe=True)
        return job

    done, bad, pending = await submit("was done.jpg", 1), await submit("was bad.jpg", 2), await submit("pending.jpg", 3)
    gone = await submit("gone.jpg", 4)
    (rig.input / "gone.jpg").unlink()  # the user took it away meanwhile
    for job, state in ((done, JobState.done), (bad, JobState.failed), (gone, JobState.done)):
        await q.finish(job, state, error="it broke in the previous run" if state == JobState.failed else None)
    await q.close()

    await rig.start(worker=False)
    # Delivered before start() returns, before any scan.
    assert "was done.jpg" in rig.listing(rig.processed)
    assert "was bad.jpg" in rig.listing(rig.failed)
    assert "it broke in the previous run" in (rig.failed / "was bad.jpg.error.txt").read_text()
    for j in (done, bad, gone):
        assert (await rig.queue.get(j.id)).delivered
    # The still-pending photo is recognised as its queued job, not queued again.
    await quiet(rig)
    assert len(await rig.jobs()) == 4
    assert rig.listing(rig.input) == {"pending.jpg"}
    rig.worker.start()
    await rig.wait_file(rig.processed / "pending.jpg")
    assert (await rig.queue.get(pending.id)).state == JobState.done
    await wait_for(_delivered(rig, pending.id), 5, "delivered flag")
    assert len(await rig.jobs()) == 4


def _delivered(rig, job_id):
    async def check():
        return (await rig.queue.get(job_id)).delivered
    return check


async def test_a_full_queue_leaves_the_photo_in_place_and_retries(rig, caplog):
    caplog.set_level(logging.INFO, logger="wan22bot.sources.watch")
    await rig.start(worker=False, max_length=1, rescan_seconds=0.2)
    rig.drop("first.jpg", seed=1)
    await rig.wait_jobs(1)
    rig.drop("second.jpg", seed=2)
    rig.drop("third.jpg", seed=3)
    await scans(rig, 4)  # several retries (rescan_seconds=0.2)
    assert len(await rig.jobs()) == 1
    assert rig.listing(rig.input) == {"first.jpg", "second.jpg", "third.jpg"}
    assert rig.listing(rig.failed) == set()
    full = [r for r in caplog.records if "queue is full" in r.getMessage()]
    assert len(full) == 1, [r.getMessage() for r in full]
    rig.worker.start()
    await rig.wait_jobs(3, JobState.done)
    await wait_for(lambda: rig.listing(rig.processed) == {"first.jpg", "second.jpg", "third.jpg"}, 10, "all moved")
    assert rig.listing(rig.input) == set()


async def test_a_journal_path_outside_the_watched_folder_is_never_touched(rig, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "keep.jpg"
    victim.write_bytes(photo_bytes(9))
    q = JobQueue(rig.cfg.paths.state, rig.output)
    await q.start()
    spec = JobSpec(source="watch", input_path="", original_name="keep.jpg", name="keep",
                   reply={"path": str(rig.input / ".." / "elsewhere" / "keep.jpg")})
    job, _ = await q.submit(spec, victim.read_bytes())
    await q.finish(job, JobState.failed, error="whatever")
    await q.close()
    await rig.start(worker=False)
    assert victim.read_bytes() == photo_bytes(9)
    assert rig.listing(rig.failed) == set() and rig.listing(rig.processed) == set()
    assert (await rig.queue.get(job.id)).delivered


async def test_a_photo_replaced_while_pending_is_not_swept_away(rig):
    await rig.start(worker=False)
    rig.drop("same name.jpg", seed=11)
    first = (await rig.wait_jobs(1))[0]
    rig.drop("same name.jpg", seed=12)  # another photo under the same name while the first is queued
    await quiet(rig)
    assert len(await rig.jobs()) == 1
    rig.worker.start()
    jobs = await rig.wait_jobs(2, JobState.done)
    assert jobs[0].id == first.id and jobs[1].spec.original_name == "same name.jpg"
    await rig.wait_file(rig.processed / "same name.jpg")
    assert (rig.processed / "same name.jpg").read_bytes() == photo_bytes(12)
    assert rig.listing(rig.input) == set()


async def test_after_a_restart_the_same_file_is_its_job_and_an_equal_copy_is_a_new_one(rig, tmp_path):
    from .conftest import Rig

    data = photo_bytes(21)
    await rig.start(worker=False)
    rig.drop("a.jpg", data)
    (first,) = await rig.wait_jobs(1)
    await rig.close()  # the daemon stops with the job still queued

    rig.drop("b.jpg", data)  # an equal copy under another name, dropped while it was down
    again = Rig(tmp_path)
    try:
        await again.start(worker=False)
        jobs = await again.wait_jobs(2)
        await quiet(again)
        jobs = await again.jobs()
        assert [j.spec.original_name for j in jobs] == ["a.jpg", "b.jpg"], "a.jpg was queued twice"
        assert jobs[0].id == first.id
        again.worker.start()
        await again.wait_jobs(2, JobState.done)
        await wait_for(lambda: again.listing(again.processed) == {"a.jpg", "b.jpg"}, 5, "both photos to move")
        assert {"a.mp4", "b.mp4"} <= again.listing(again.output)
    finally:
        await again.close()
