"""PUT /api/jobs/{id}/result on the real aiohttp app: token, parts streamed to disk, caps, answers."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from wan22bot.jobs import JobState

from .conftest import TOKEN, make_mp4, outcome, outcome_part

BOUNDARY = "resultBoundary9f8e7d"
BOUND = 15.0  # seconds any wait below may take at most on a busy machine


def body_of(parts: list[tuple[str, bytes, str]]) -> bytes:
    out = b""
    for name, data, ctype in parts:
        out += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n"
                f"Content-Type: {ctype}\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


class RawPut:
    """A PUT over a plain socket, sent as slowly (or without a length) as a test wants."""

    def __init__(self, port: int, job_id: str, body: bytes, *, length: bool = True, token: str = TOKEN):
        self.port, self.job_id, self.body, self.length, self.token = port, job_id, body, length, token

    async def open(self, first_bytes: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = (f"PUT /api/jobs/{self.job_id}/result HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Authorization: Bearer {self.token}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                + (f"Content-Length: {len(self.body)}\r\n" if self.length else "") + "\r\n").encode()
        self.writer.write(head + self.body[:first_bytes])
        await self.writer.drain()

    async def send(self, start: int, end: int) -> None:
        self.writer.write(self.body[start:end])
        await self.writer.drain()

    async def status(self, timeout: float = BOUND) -> tuple[int, dict]:
        async def read():
            line = await self.reader.readline()
            status = int(line.split()[1])
            headers = {}
            while (h := await self.reader.readline()) not in (b"\r\n", b""):
                k, _, v = h.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
            return status, json.loads(body)

        return await asyncio.wait_for(read(), timeout)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def done_parts(job, tmp_path, **kw) -> tuple[list[tuple[str, bytes, str]], bytes, bytes]:
    mp4 = make_mp4(tmp_path / "worker" / f"{job.id}.mp4", **kw)
    side = json.dumps({"name": "remote", "seed": 7}).encode()
    return [outcome_part(outcome(job)), ("sidecar", side, "application/json"), ("video", mp4, "video/mp4")], mp4, side


def leftovers(front) -> list[str]:
    return sorted(p.name for p in front.queue.output_dir.iterdir() if p.name.startswith("."))


async def wait_until(condition, timeout: float = BOUND) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_a_done_result_is_stored_and_served_byte_for_byte(open_http_front, tmp_path):
    front = await open_http_front()
    job = await front.jobs.running_job("beach.jpg")
    parts, mp4, side = done_parts(job, tmp_path)

    status, body = await front.put_result(job.id, parts)

    assert (status, body) == (200, {"stored": True, "state": "done"})
    out = front.queue.output_dir
    assert (out / "beach.mp4").read_bytes() == mp4 and (out / "beach.json").read_bytes() == side
    assert leftovers(front) == []
    async with front.session.get(front.url(f"/api/jobs/{job.id}/video"),
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 200 and await r.read() == mp4
    async with front.session.get(front.url(f"/api/jobs/{job.id}"), headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        api = await r.json()
    assert api["state"] == "done" and api["output"] == str(out / "beach.mp4")


async def test_the_same_result_twice_is_stored_once(open_http_front, tmp_path):
    front = await open_http_front()
    job = await front.jobs.running_job()
    parts, mp4, _ = done_parts(job, tmp_path)
    assert await front.put_result(job.id, parts) == (200, {"stored": True, "state": "done"})
    other, _, _ = done_parts(job, tmp_path, noise=True)
    assert await front.put_result(job.id, other) == (200, {"stored": False, "state": "done"})
    assert (front.queue.output_dir / "beach.mp4").read_bytes() == mp4
    assert leftovers(front) == []


@pytest.mark.parametrize("state, answer", [("failed", "failed"), ("cancelled", "cancelled"), ("requeue", "queued")])
async def test_other_outcomes_need_no_files(open_http_front, state, answer):
    front = await open_http_front()
    job = await front.jobs.running_job()
    status, body = await front.put_result(job.id, [outcome_part(outcome(job, state, error="out of memory"))])
    assert (status, body) == (200, {"stored": True, "state": answer})
    assert (await front.queue.get(job.id)).state.value == answer


async def test_without_a_front_token_results_are_refused_even_from_loopback(open_http_front, tmp_path):
    front = await open_http_front(token=None)
    job = await front.jobs.running_job()
    parts, _, _ = done_parts(job, tmp_path)
    status, body = await front.put_result(job.id, parts, token=None)
    assert status == 403
    assert "token_env" in body["error"] and "WAN22BOT_TEST_HTTP_TOKEN" in body["error"]
    assert (await front.queue.get(job.id)).state == JobState.running
    assert leftovers(front) == [] and list(front.queue.output_dir.iterdir()) == []


async def test_a_wrong_token_is_refused_by_the_auth_middleware(open_http_front, tmp_path):
    front = await open_http_front()
    job = await front.jobs.running_job()
    parts, _, _ = done_parts(job, tmp_path)
    for token in (None, "not-the-front-token-at-all"):
        status, body = await front.put_result(job.id, parts, token=token)
        assert status == 401, body
    assert (await front.queue.get(job.id)).state == JobState.running


async def test_a_cross_origin_put_is_refused_by_the_guard(open_http_front):
    front = await open_http_front()
    job = await front.jobs.running_job()
    status, body = await front.put_result(job.id, [outcome_part(outcome(job, "failed"))],
                                          headers={"Origin": "http://evil.example"})
    assert status == 403 and "cross-origin PUT refused" in body["error"]
    assert (await front.queue.get(job.id)).state == JobState.running


@pytest.mark.parametrize("job_id", ["abc", "0123456789AB", "0123456789abc", "0123456789ag", "0123456789a%2F"])
async def test_an_id_that_is_not_12_hex_is_404_without_asking_the_queue(open_http_front, job_id):
    front = await open_http_front()
    asked = []
    real_get = front.queue.get

    async def spy(jid):
        asked.append(jid)
        return await real_get(jid)

    front.queue.get = spy
    status, body = await front.put_result(job_id, [outcome_part(outcome(job_id, "failed"))])
    assert status == 404 and "12 hex characters" in body["error"]
    assert asked == []


async def test_an_unknown_job_is_404(open_http_front, tmp_path):
    front = await open_http_front()
    job = await front.jobs.running_job()
    parts, _, _ = done_parts(job, tmp_path)
    parts[0] = outcome_part(outcome("0123456789ab"))
    status, body = await front.put_result("0123456789ab", parts)
    assert status == 404 and "no job 0123456789ab" in body["error"]
    assert leftovers(front) == []


@pytest.mark.parametrize("raw, message", [
    (b'{"job": "JOB", "state": "finished", "worker": "w"}', "outcome.state must be one of done, failed, cancelled"),
    (b'{"job": "JOB", "state": "failed"}', "outcome.worker"),
    (b'{"job": "JOB", "state": "failed", "worker": "w", "colour": 1}', "unknown field 'outcome.colour'"),
    (b'{"job": "JOB", "state": "failed", "worker": "w", "attempt": -1}', "outcome.attempt must be at least 0"),
    (b"{not json", "the outcome part is not valid JSON"),
    (b'{"job": "0123456789ab", "state": "failed", "worker": "w"}', "is for job '0123456789ab' but was sent to job"),
])
async def test_a_bad_outcome_is_400_with_the_reason(open_http_front, raw, message):
    front = await open_http_front()
    job = await front.jobs.running_job()
    status, body = await front.put_result(job.id, [outcome_part(raw.replace(b"JOB", job.id.encode()))])
    assert status == 400 and message in body["error"], body
    assert (await front.queue.get(job.id)).state == JobState.running


@pytest.mark.parametrize("parts, message", [
    ([("video", b"\x00\x00\x00\x18ftypisom", "video/mp4")], "no 'outcome' part"),
    ([("OUTCOME", b"{}", "application/json"), ("photo", b"x", "image/png")], "unknown part"),
])
async def test_missing_or_unknown_parts_are_400(open_http_front, parts, message):
    front = await open_http_front()
    job = await front.jobs.running_job()
    status, body = await front.put_result(job.id, parts)
    assert status == 400 and message in body["error"], body
    assert leftovers(front) == []


async def test_a_part_sent_twice_is_400(open_http_front):
    front = await open_http_front()
    job = await front.jobs.running_job()
    part = outcome_part(outcome(job, "failed"))
    status, body = await front.put_result(job.id, [part, part])
    assert status == 400 and "'outcome' came twice" in body["error"]
    assert (await front.queue.get(job.id)).state == JobState.running


async def test_a_video_that_is_not_an_mp4_is_400_and_leaves_no_temp_file(open_http_front):
    front = await open_http_front()
    job = await front.jobs.running_job()
    status, body = await front.put_result(job.id, [outcome_part(outcome(job)),
                                                   ("video", b"GIF89a" + bytes(5000), "video/mp4")])
    assert status == 400 and "not an MP4" in body["error"]
    assert list(front.queue.output_dir.iterdir()) == []
    assert (await front.queue.get(job.id)).state == JobState.running


async def test_done_without_a_video_is_400(open_http_front):
    front = await open_http_front()
    job = await front.jobs.running_job()
    status, body = await front.put_result(job.id, [outcome_part(outcome(job))])
    assert status == 400 and "needs its video" in body["error"]


async def test_a_result_over_the_cap_is_413_by_its_length(open_http_front, tmp_path):
    front = await open_http_front(queue={"max_result_mb": 0.01})
    job = await front.jobs.running_job()
    parts, _, _ = done_parts(job, tmp_path, noise=True, n=6)
    assert len(parts[2][1]) > 0.02 * 2**20
    status, body = await front.put_result(job.id, parts)
    assert status == 413 and "[queue] max_result_mb" in body["error"] and "0.01 MiB" in body["error"]
    assert list(front.queue.output_dir.iterdir()) == []
    assert (await front.queue.get(job.id)).state == JobState.running


async def test_a_result_over_the_cap_without_a_length_is_413_while_streaming(open_http_front, tmp_path):
    front = await open_http_front(queue={"max_result_mb": 0.01})
    job = await front.jobs.running_job()
    parts, _, _ = done_parts(job, tmp_path, noise=True, n=6)
    # no Content-Length: the body is sent chunked, so only counting while streaming can stop it
    chunked = RawPut(front.source.port, job.id, b"", length=False)
    chunked.reader, chunked.writer = await asyncio.open_connection("127.0.0.1", front.source.port)
    body = body_of(parts)
    head = (f"PUT /api/jobs/{job.id}/result HTTP/1.1\r\nHost: 127.0.0.1:{front.source.port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    chunked.writer.write(head)
    for i in range(0, len(body), 4096):
        piece = body[i:i + 4096]
        try:
            chunked.writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await chunked.writer.drain()
        except ConnectionError:
            break
    else:
        chunked.writer.write(b"0\r\n\r\n")
    status, answer = await chunked.status()
    await chunked.close()
    assert status == 413 and "[queue] max_result_mb" in answer["error"]
    await wait_until(lambda: list(front.queue.output_dir.iterdir()) == [])
    assert (await front.queue.get(job.id)).state == JobState.running


async def test_the_video_is_written_to_disk_while_it_arrives(open_http_front, tmp_path):
    """Streamed, not buffered: half the body in, a temp file in the output folder already holds it."""
    front = await open_http_front()
    job = await front.jobs.running_job("stream.jpg")
    parts, mp4, _ = done_parts(job, tmp_path, noise=True, n=48)
    body = body_of(parts)
    put = RawPut(front.source.port, job.id, body)
    await put.open(first_bytes=0)
    half = len(body) - len(mp4) // 2
    for i in range(0, half, 16384):  # as a network delivers it: a piece at a time
        await put.send(i, min(i + 16384, half))
        await asyncio.sleep(0.005)

    def temp_holds_some() -> bool:
        temps = [p for p in front.queue.output_dir.glob(".result-*.mp4.part")]
        return len(temps) == 1 and temps[0].stat().st_size >= len(mp4) // 4

    await wait_until(temp_holds_some)
    await put.send(half, len(body))
    status, answer = await put.status()
    await put.close()
    assert (status, answer) == (200, {"stored": True, "state": "done"})
    assert (front.queue.output_dir / "stream.mp4").read_bytes() == mp4
    assert leftovers(front) == []


async def test_a_trickling_result_is_dropped_with_408_and_its_temp_file_removed(open_http_front, tmp_path):
    front = await open_http_front(http={"body_timeout_seconds": 1.0})
    job = await front.jobs.running_job()
    parts, _, _ = done_parts(job, tmp_path, noise=True, n=24)
    body = body_of(parts)
    put = RawPut(front.source.port, job.id, body)
    t0 = time.monotonic()  # before the request starts: the server's 1 s body deadline runs from then on
    await put.open(first_bytes=len(body) - 200)  # the video part is open: a temp file exists
    await wait_until(lambda: leftovers(front) != [])

    async def trickle():
        for i in range(len(body) - 200, len(body)):
            await asyncio.sleep(0.25)
            try:
                await put.send(i, i + 1)
            except ConnectionError:
                return

    task = asyncio.create_task(trickle())
    try:
        status, answer = await put.status()
    finally:
        task.cancel()
    assert status == 408 and "http.body_timeout_seconds" in answer["error"]
    assert 0.9 <= time.monotonic() - t0 < BOUND
    await put.close()
    await wait_until(lambda: leftovers(front) == [])
    assert (await front.queue.get(job.id)).state == JobState.running


async def test_a_full_output_disk_is_507_and_the_job_stays_running(open_http_front, tiny_disk, tmp_path):
    front = await open_http_front(paths={"output": str(tiny_disk / "out")})
    job = await front.jobs.running_job()
    parts, _, _ = done_parts(job, tmp_path, noise=True, n=24)
    assert len(parts[2][1]) > 128 * 1024
    status, body = await front.put_result(job.id, parts)
    assert status == 507, body
    assert "no space left in the output folder" in body["error"] and "free some space" in body["error"]
    assert list((tiny_disk / "out").iterdir()) == []
    assert (await front.queue.get(job.id)).state == JobState.running


async def test_temp_files_left_by_a_stop_are_removed_at_start(open_http_front, tmp_path):
    out = tmp_path / "front" / "out"
    out.mkdir(parents=True)
    stale = out / ".result-0123456789ab-1a2b3c4d.mp4.part"
    stale.write_bytes(b"half a video")
    keep = [out / "beach.mp4", out / ".beach.json.part", out / "notes.result-x.part"]
    for p in keep:
        p.write_bytes(b"not ours")
    await open_http_front()
    assert not stale.exists()
    assert all(p.read_bytes() == b"not ours" for p in keep)
