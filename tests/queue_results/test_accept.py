"""accept_result on a real JobQueue: each outcome settles the job once, files land under the job's
name, and the files handed in are gone afterwards whatever happened."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from wan22bot.errors import DiskFull
from wan22bot.jobs import JobState
from wan22bot.queue.outcome import Accepted, UnknownJob, accept_result

from .conftest import make_mp4, make_sidecar, outcome


def temps(folder: Path) -> tuple[Path, Path]:
    """Where the route leaves an upload: hidden temp names in the output folder."""
    return folder / ".result-a.mp4.part", folder / ".result-a.json.part"


async def test_done_moves_the_files_under_the_jobs_name_and_stores_front_paths(front, tmp_path):
    job = await front.running_job("beach.jpg")
    out = front.queue.output_dir
    video, sidecar = temps(out)
    mp4_bytes, side_bytes = make_mp4(video), make_sidecar(sidecar)

    got = await accept_result(front.queue, outcome(job), video, sidecar)

    assert got == Accepted(True, "done")
    stored = await front.queue.get(job.id)
    assert stored.state == JobState.done
    assert stored.result.output == str(out / "beach.mp4") and stored.result.sidecar == str(out / "beach.json")
    assert stored.result.bytes == len(mp4_bytes)  # the front's file, not the worker's number
    assert stored.result.frames == 5 and stored.result.timings["total"] == 3.5 and stored.result.seed == 7
    assert (out / "beach.mp4").read_bytes() == mp4_bytes
    assert (out / "beach.json").read_bytes() == side_bytes
    assert sorted(p.name for p in out.iterdir()) == ["beach.json", "beach.mp4"]  # no temp left
    assert ("done", job.id) in front.events


async def test_a_video_from_another_file_system_is_copied_in_whole(open_front, tiny_disk, tmp_path):
    front = await open_front(output=tiny_disk / "out")
    job = await front.running_job("dune.jpg")
    video, sidecar = tmp_path / "w" / "dune.mp4", tmp_path / "w" / "dune.json"
    mp4_bytes, _ = make_mp4(video), make_sidecar(sidecar)
    assert os.stat(video).st_dev != os.stat(tiny_disk).st_dev

    assert await accept_result(front.queue, outcome(job), video, sidecar) == Accepted(True, "done")

    assert (tiny_disk / "out" / "dune.mp4").read_bytes() == mp4_bytes
    assert sorted(p.name for p in (tiny_disk / "out").iterdir()) == ["dune.json", "dune.mp4"]
    assert not video.exists() and not sidecar.exists()


async def test_done_without_a_sidecar_gets_one_written_by_the_front(front):
    job = await front.running_job("lake.jpg")
    video = front.queue.output_dir / ".v.part"
    make_mp4(video)
    assert await accept_result(front.queue, outcome(job, worker="box-7"), video, None) == Accepted(True, "done")
    side = json.loads((front.queue.output_dir / "lake.json").read_text())
    assert side["job_id"] == job.id and side["worker"] == "box-7" and side["frames"] == 5 and side["seed"] == 7


@pytest.mark.parametrize("state, error, expect_error", [
    ("failed", "the photo is not an image", "the photo is not an image"),
    ("failed", None, "failed on gpu-box-1"),
    ("cancelled", None, "cancelled"),
])
async def test_failed_and_cancelled_are_stored_with_their_error(front, state, error, expect_error):
    job = await front.running_job()
    got = await accept_result(front.queue, outcome(job, state, error=error), None, None)
    assert got == Accepted(True, state)
    stored = await front.queue.get(job.id)
    assert stored.state.value == state and stored.error == expect_error and stored.result is None
    assert (state, job.id) in front.events


async def test_a_failed_outcome_removes_files_sent_with_it(front):
    job = await front.running_job()
    video, sidecar = temps(front.queue.output_dir)
    make_mp4(video), make_sidecar(sidecar)
    assert await accept_result(front.queue, outcome(job, "failed", error="oom"), video, sidecar) == \
        Accepted(True, "failed")
    assert list(front.queue.output_dir.iterdir()) == []


async def test_requeue_puts_the_job_back_without_spending_an_attempt(front):
    job = await front.running_job()
    assert job.attempts == 1
    got = await accept_result(front.queue, outcome(job, "requeue"), None, None)
    assert got == Accepted(True, "queued")
    stored = await front.queue.get(job.id)
    assert stored.state == JobState.queued and stored.attempts == 0
    assert ("requeued", job.id) in front.events
    # a second hand-back of the same job changes nothing (attempts do not go below what they were)
    assert await accept_result(front.queue, outcome(job, "requeue"), None, None) == Accepted(True, "queued")
    assert (await front.queue.get(job.id)).attempts == 0
    assert await asyncio.wait_for(front.queue.next_job(), 5)  # claimable again


@pytest.mark.parametrize("second", ["done", "failed", "cancelled", "requeue"])
async def test_a_result_for_a_final_job_stores_nothing_and_touches_no_file(front, second):
    job = await front.running_job("tree.jpg")
    out = front.queue.output_dir
    video, sidecar = temps(out)
    first_bytes = make_mp4(video)
    make_sidecar(sidecar)
    await accept_result(front.queue, outcome(job), video, sidecar)
    before = await front.queue.get(job.id)
    stamp = (out / "tree.mp4").stat().st_mtime_ns
    events = len(front.events)

    video2, sidecar2 = out / ".again.mp4.part", out / ".again.json.part"
    make_mp4(video2, noise=True)
    make_sidecar(sidecar2, other=True)
    got = await accept_result(front.queue, outcome(job, second, error="late"), video2, sidecar2)

    assert got == Accepted(False, "done")
    after = await front.queue.get(job.id)
    assert (after.state, after.result, after.error, after.finished) == (before.state, before.result, before.error,
                                                                        before.finished)
    assert (out / "tree.mp4").read_bytes() == first_bytes and (out / "tree.mp4").stat().st_mtime_ns == stamp
    assert json.loads((out / "tree.json").read_text()).get("other") is None
    assert sorted(p.name for p in out.iterdir()) == ["tree.json", "tree.mp4"]  # the duplicate's files removed
    assert len(front.events) == events  # no second "done" for the sources to deliver


async def test_two_identical_results_at_once_store_one(front):
    job = await front.running_job("twin.jpg")
    out = front.queue.output_dir
    files = []
    for tag in ("a", "b"):
        v, s = out / f".{tag}.mp4.part", out / f".{tag}.json.part"
        make_mp4(v), make_sidecar(s)
        files.append((v, s))
    got = await asyncio.gather(*(accept_result(front.queue, outcome(job), v, s) for v, s in files))
    assert sorted(a.stored for a in got) == [False, True]
    assert [k for k, j in front.events if j == job.id].count("done") == 1
    assert sorted(p.name for p in out.iterdir()) == ["twin.json", "twin.mp4"]


async def test_a_queued_job_is_still_settled(front):
    """A duplicate claim after the front put the job back: its result still counts."""
    job = await front.queued_job("late.jpg")
    video = front.queue.output_dir / ".late.part"
    make_mp4(video)
    assert await accept_result(front.queue, outcome(job), video, None) == Accepted(True, "done")
    assert (await front.queue.get(job.id)).state == JobState.done


async def test_an_unknown_job_raises_and_removes_the_files(front):
    out = front.queue.output_dir
    video, sidecar = temps(out)
    make_mp4(video), make_sidecar(sidecar)
    with pytest.raises(UnknownJob, match="no job 0123456789ab"):
        await accept_result(front.queue, outcome("0123456789ab"), video, sidecar)
    assert list(out.iterdir()) == []


async def test_done_without_a_video_is_refused_and_the_job_stays_running(front):
    job = await front.running_job()
    sidecar = front.queue.output_dir / ".s.part"
    make_sidecar(sidecar)
    with pytest.raises(ValueError, match="needs its video.*'video'"):
        await accept_result(front.queue, outcome(job), None, sidecar)
    assert (await front.queue.get(job.id)).state == JobState.running
    assert not sidecar.exists()


async def test_done_without_a_result_is_refused(front):
    job = await front.running_job()
    video = front.queue.output_dir / ".v.part"
    make_mp4(video)
    bare = outcome(job).model_copy(update={"result": None})
    with pytest.raises(ValueError, match="needs 'result'"):
        await accept_result(front.queue, bare, video, None)
    assert (await front.queue.get(job.id)).state == JobState.running
    assert list(front.queue.output_dir.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"\x1aE\xdf\xa3 a webm header", b"<html>not a video</html>",
                                     b"\x00\x00\x00\x04ftyp"])
async def test_a_video_that_is_not_an_mp4_is_refused(front, content):
    job = await front.running_job("pic.jpg")
    out = front.queue.output_dir
    video, sidecar = temps(out)
    out.mkdir(parents=True, exist_ok=True)
    video.write_bytes(content)
    make_sidecar(sidecar)
    with pytest.raises(ValueError, match="not an MP4.*'ftyp'"):
        await accept_result(front.queue, outcome(job), video, sidecar)
    assert (await front.queue.get(job.id)).state == JobState.running
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("content, problem", [(b"[1, 2]", "JSON object, got a JSON list"),
                                              (b"{not json", "not valid JSON"),
                                              (b"\xff\xfe\x00", "not valid JSON")])
async def test_a_sidecar_that_is_not_a_json_object_is_refused(front, content, problem):
    job = await front.running_job("pic.jpg")
    out = front.queue.output_dir
    video, sidecar = temps(out)
    make_mp4(video)
    sidecar.write_bytes(content)
    with pytest.raises(ValueError, match=problem):
        await accept_result(front.queue, outcome(job), video, sidecar)
    assert (await front.queue.get(job.id)).state == JobState.running
    assert list(out.iterdir()) == []


async def test_a_full_output_disk_is_a_clear_error_and_the_job_is_not_done(open_front, tiny_disk, tmp_path):
    front = await open_front(output=tiny_disk / "out")
    job = await front.running_job("big.jpg")
    video, sidecar = tmp_path / "w" / "big.mp4", tmp_path / "w" / "big.json"
    data = make_mp4(video, noise=True, n=24)  # lossless noise: far more than the 64 KiB disk holds
    assert len(data) > 128 * 1024
    make_sidecar(sidecar)

    with pytest.raises(DiskFull) as err:
        await accept_result(front.queue, outcome(job), video, sidecar)

    assert "no space left in the output folder" in str(err.value) and str(tiny_disk / "out") in str(err.value)
    assert job.id in str(err.value) and "free some space" in str(err.value)
    stored = await front.queue.get(job.id)
    assert stored.state == JobState.running and stored.result is None
    assert list((tiny_disk / "out").iterdir()) == []  # no partial video, no orphan sidecar
    assert not video.exists() and not sidecar.exists()
    # with room again, the worker's retry is stored
    video2 = tmp_path / "w" / "small.mp4"
    make_mp4(video2)
    assert await accept_result(front.queue, outcome(job), video2, None) == Accepted(True, "done")
