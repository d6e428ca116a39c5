"""The JSON API against a real aiohttp server, a real SQLite-backed JobQueue and a stand-in worker
that writes real MP4 files."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from wan22bot.jobs import TIMING_KEYS, JobSpec
from wan22bot.video import probe_mp4

from .helpers import make_config, png_bytes


async def test_healthz(make_server):
    srv = await make_server()
    status, body = await srv.get_json("/healthz")
    assert status == 200
    assert body == {"status": "ok", "model_loaded": False, "queue_depth": 0, "running": 0}
    await srv.upload()
    status, body = await srv.get_json("/healthz")
    assert body["queue_depth"] == 1


async def test_upload_poll_download(make_server, stand_in, queue, tmp_path: Path):
    srv = await make_server(stand_in)
    status, job, headers = await srv.upload(png_bytes(), "Holiday Photo.png", prompt="waves roll in", frames=25,
                                            seed=42, preset="fast")
    assert status == 202, job
    assert headers["Location"] == f"/api/jobs/{job['id']}"
    assert job["state"] == "queued" and job["position"] == 1
    assert job["source"] == "http" and job["user"] == "127.0.0.1"
    assert job["photo"] == "Holiday Photo.png" and job["name"] == "Holiday Photo"
    assert job["options"] == {"prompt": "waves roll in", "frames": 25, "seed": 42, "preset": "fast"}
    for key in ("id", "state", "source", "created", "timings", "output", "error"):
        assert key in job

    spooled = await queue.get(job["id"])
    assert spooled.spec.input_path.endswith(".png") and Path(spooled.spec.input_path).read_bytes() == png_bytes()

    stand_in.start()
    done = await srv.wait_state(job["id"])
    assert done["position"] is None and done["error"] is None
    assert set(TIMING_KEYS) <= set(done["timings"])
    assert done["output"].endswith("Holiday Photo.mp4")
    assert done["links"]["video"] == f"/api/jobs/{job['id']}/video"

    async with srv.session.get(srv.url(done["links"]["video"])) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "video/mp4"
        assert "inline" in r.headers["Content-Disposition"]
        data = await r.read()
    assert data[4:8] == b"ftyp"
    got = tmp_path / "got.mp4"
    got.write_bytes(data)
    info = probe_mp4(got)
    assert (info.frames, info.width, info.height, info.codec) == (5, 64, 96, "h264")

    async with srv.session.get(srv.url(done["links"]["video"]), headers={"Range": "bytes=0-99"}) as r:
        assert r.status == 206 and len(await r.read()) == 100  # the page's <video> can seek

    status, side = await srv.get_json(done["links"]["sidecar"])
    assert status == 200 and side["job_id"] == job["id"] and side["timings"]["pass1"] == 1.8

    # polling is the delivery for http jobs
    assert (await queue.get(job["id"])).delivered
    assert await queue.undelivered("http") == []


async def test_list_get_cancel(make_server, stand_in, queue):
    srv = await make_server(stand_in)
    ids = []
    for i in range(3):
        status, job, _ = await srv.upload(filename=f"p{i}.png")
        assert status == 202
        ids.append(job["id"])
        assert job["position"] == i + 1

    status, jobs = await srv.get_json("/api/jobs")
    assert status == 200 and [j["id"] for j in jobs] == ids[::-1]
    assert [j["position"] for j in jobs] == [3, 2, 1]
    status, jobs = await srv.get_json("/api/jobs?state=queued&source=http&limit=2")
    assert status == 200 and len(jobs) == 2
    status, jobs = await srv.get_json("/api/jobs?source=watch")
    assert status == 200 and jobs == []

    status, one = await srv.get_json(f"/api/jobs/{ids[1]}")
    assert status == 200 and one["id"] == ids[1] and one["position"] == 2

    # a queued job is cancelled at once
    async with srv.session.delete(srv.url(f"/api/jobs/{ids[1]}")) as r:
        assert r.status == 200
        body = await r.json()
    assert body["outcome"] == "cancelled" and body["job"]["state"] == "cancelled"
    status, jobs = await srv.get_json("/api/jobs?state=queued")
    assert [j["position"] for j in sorted(jobs, key=lambda j: j["position"])] == [1, 2]

    # again: already final
    async with srv.session.delete(srv.url(f"/api/jobs/{ids[1]}")) as r:
        assert r.status == 409
        body = await r.json()
    assert "already cancelled" in body["error"]

    # unknown
    async with srv.session.delete(srv.url("/api/jobs/nosuchjob")) as r:
        assert r.status == 404 and "nosuchjob" in (await r.json())["error"]
    status, body = await srv.get_json("/api/jobs/nosuchjob")
    assert status == 404 and "no job" in body["error"]

    # a done job cannot be cancelled; a cancelled one has no video
    stand_in.start()
    await srv.wait_state(ids[0])
    await srv.wait_state(ids[2])
    async with srv.session.delete(srv.url(f"/api/jobs/{ids[0]}")) as r:
        assert r.status == 409 and "already done" in (await r.json())["error"]
    status, body = await srv.get_json(f"/api/jobs/{ids[1]}/video")
    assert status == 409 and "cancelled" in body["error"]

    status, body = await srv.get_json("/api/jobs?state=bogus")
    assert status == 400 and "state must be one of" in body["error"]
    status, body = await srv.get_json("/api/jobs?limit=0")
    assert status == 400 and "limit" in body["error"]
    status, body = await srv.get_json("/api/nothing-here")
    assert status == 404 and "error" in body


async def test_cancel_running_job(make_server, queue, cfg):
    from .helpers import StandInWorker

    hold = asyncio.Event()
    worker = StandInWorker(queue, cfg.paths.output, hold=hold)
    srv = await make_server(worker)
    worker.start()
    try:
        _, job, _ = await srv.upload()
        await srv.wait_state(job["id"], ("running",))
        status, st = await srv.get_json("/api/status")
        assert st["running"]["id"] == job["id"]
        assert st["running"]["progress"] == {"stage": "pass1", "step": 1, "steps": 2}
        async with srv.session.delete(srv.url(f"/api/jobs/{job['id']}")) as r:
            assert r.status == 200 and (await r.json())["outcome"] == "cancelling"
        hold.set()
        await srv.wait_state(job["id"], ("cancelled",))
    finally:
        await worker.stop()


BAD_UPLOADS = [
    # (what, photo bytes, filename, extra fields, status, words the error must contain)
    ("not an image", b"just some text, not pixels", "notes.txt", {}, 400, ["notes.txt", "not an image"]),
    ("zero bytes", b"", "empty.jpg", {}, 400, ["empty.jpg", "empty", "0 bytes"]),
    ("too many megapixels", "big", "big.png", {}, 400, ["big.png", "1200x1000", "megapixels"]),
    ("too large", "noise", "huge.png", {}, 413, ["upload limit", "http.max_upload_mb"]),
    ("frames not 4k+1", "ok", "a.png", {"frames": 50}, 400, ["frames", "49", "53"]),
    ("seed not a number", "ok", "a.png", {"seed": "abc"}, 400, ["seed", "whole number"]),
    ("unknown preset", "ok", "a.png", {"preset": "turbo"}, 400, ["preset", "fast", "quality"]),
    ("bad interpolate", "ok", "a.png", {"interpolate": "maybe"}, 400, ["interpolate", "true or false"]),
    ("interpolate without RIFE", "ok", "a.png", {"interpolate": "true"}, 400, ["interpolate", "not available"]),
    ("unknown field", "ok", "a.png", {"colour": "red"}, 400, ["colour", "allowed fields"]),
    ("prompt too long", "ok", "a.png", {"prompt": "x" * 2001}, 400, ["prompt", "2000"]),
]


async def test_bad_uploads_are_refused_and_nothing_is_queued(tmp_path, queue, make_server):
    cfg = make_config(tmp_path, http={"max_upload_mb": 0.05}, generation={"max_megapixels": 1.0})
    srv = await make_server(config=cfg)
    photos = {"big": png_bytes(1200, 1000, mode="L"), "noise": png_bytes(200, 200, noise=True), "ok": png_bytes()}
    assert len(photos["big"]) < 0.05 * 2**20 < len(photos["noise"])
    for what, data, filename, fields, want_status, words in BAD_UPLOADS:
        data = photos.get(data, data) if isinstance(data, str) else data
        status, body, _ = await srv.upload(data, filename, **fields)
        assert status == want_status, (what, status, body)
        assert isinstance(body["error"], str) and body["error"][0].islower(), (what, body)
        for w in words:
            assert w in body["error"], (what, w, body["error"])

    # no photo field at all
    form = aiohttp.FormData()
    form.add_field("prompt", "a cat")
    form.add_field("file", b"x", filename="x.png")  # the wrong name for the photo
    async with srv.session.post(srv.url("/api/jobs"), data=form) as r:
        body = await r.json()
    assert r.status == 400 and "'file'" in body["error"]
    form = aiohttp.FormData()
    form.add_field("prompt", "a cat")
    form.add_field("frames", "25")
    async with srv.session.post(srv.url("/api/jobs"), data=form) as r:  # fields only: urlencoded
        body = await r.json()
    assert r.status == 415 and "multipart/form-data" in body["error"]
    form = aiohttp.FormData()
    form.add_field("prompt", "a cat")
    form.add_field("seed", b"1", filename="seed.txt")  # forces multipart, still no photo
    async with srv.session.post(srv.url("/api/jobs"), data=form) as r:
        body = await r.json()
    assert r.status == 400 and "no 'photo' field" in body["error"]

    # not multipart at all
    async with srv.session.post(srv.url("/api/jobs"), json={"photo": "x"}) as r:
        assert r.status == 415 and "multipart/form-data" in (await r.json())["error"]

    # declared far beyond the cap: refused before the body is read
    big = b"\0" * (2 * 2**20)
    form = aiohttp.FormData()
    form.add_field("photo", big, filename="big.bin")
    async with srv.session.post(srv.url("/api/jobs"), data=form) as r:
        assert r.status == 413 and "upload limit" in (await r.json())["error"]

    assert await queue.list() == []
    assert [p for p in queue.spool.iterdir()] == []

    # and the server still takes a good photo afterwards
    status, body, _ = await srv.upload(photos["ok"])
    assert status == 202


async def test_concurrent_uploads_never_lose_a_job(tmp_path, make_server):
    from wan22bot.queue import JobQueue

    cfg = make_config(tmp_path, queue={"max_length": 17}, http={"max_concurrent_uploads": 50})  # the queue limits here
    q = JobQueue(cfg.paths.state, cfg.paths.output, max_length=cfg.queue.max_length)
    await q.start()
    try:
        from wan22bot.sources.http import HttpSource

        src = HttpSource(cfg, q, None)
        await src.start()
        try:
            photo = png_bytes()
            async with aiohttp.ClientSession() as session:

                async def one(i: int):
                    form = aiohttp.FormData()
                    form.add_field("photo", photo, filename=f"photo{i}.png")
                    async with session.post(f"http://127.0.0.1:{src.port}/api/jobs", data=form) as r:
                        return r.status, await r.json(), r.headers

                results = await asyncio.gather(*(one(i) for i in range(50)))
        finally:
            await src.stop()
        statuses = [s for s, _, _ in results]
        assert set(statuses) <= {202, 503}, statuses
        accepted = {b["id"] for s, b, _ in results if s == 202}
        assert len(accepted) == statuses.count(202) == 17
        for s, b, h in results:
            if s == 503:
                assert "queue is full" in b["error"] and int(h["Retry-After"]) > 0
        journal = await q.list(limit=1000)
        assert {j.id for j in journal} == accepted
        assert len({j.spec.name for j in journal}) == 17  # each kept its own output name
        assert all(Path(j.spec.input_path).is_file() for j in journal)
        assert len(list(q.spool.iterdir())) == 17
    finally:
        await q.close()


async def test_metrics(make_server, stand_in, queue):
    srv = await make_server(stand_in)
    for _ in range(2):
        await srv.upload()
    async with srv.session.get(srv.url("/metrics")) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    assert "wan22bot_queue_depth 2.0" in text
    assert 'wan22bot_jobs_by_state{state="queued"} 2.0' in text
    assert 'wan22bot_stage_seconds_count{stage="pass1"} 0.0' in text
    assert "wan22bot_gpu_memory" not in text  # no CUDA here: absent, not zero

    stand_in.start()
    for j in await queue.list():
        await srv.wait_state(j.id)
    async with srv.session.get(srv.url("/metrics")) as r:
        text = await r.text()
    assert "wan22bot_queue_depth 0.0" in text
    assert 'wan22bot_jobs_by_state{state="done"} 2.0' in text
    for stage in TIMING_KEYS:
        assert f'wan22bot_stage_seconds_count{{stage="{stage}"}} 2.0' in text
    assert 'wan22bot_stage_seconds_bucket{le="2.5",stage="pass1"} 2.0' in text
    assert 'wan22bot_stage_seconds_bucket{le="1.0",stage="pass1"} 0.0' in text
    assert 'wan22bot_stage_seconds_sum{stage="pass2"} 3.2' in text
    assert 'wan22bot_jobs_finished_total{outcome="done"} 2.0' in text
    assert 'wan22bot_jobs_submitted_total{source="http"} 2.0' in text
    assert 'wan22bot_http_requests_total{route="/api/jobs",status="202"} 2.0' in text


async def test_status_and_events(make_server, stand_in, queue):
    srv = await make_server(stand_in)
    status, st = await srv.get_json("/api/status")
    assert status == 200
    assert st["model"]["loaded"] is False and st["running"] is None and st["gpu"] is None
    assert st["queue"]["counts"]["queued"] == 0 and st["auth"] is False

    seen: list[dict] = []
    subscribed = asyncio.Event()

    async def listen():
        async with srv.session.get(srv.url("/api/events")) as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            async for line in r.content:
                if line.startswith(b"retry:"):  # written once the stream is subscribed
                    subscribed.set()
                if line.startswith(b"data: "):
                    seen.append(json.loads(line[6:]))
                    if seen[-1]["kind"] == "done":
                        return

    task = asyncio.create_task(listen())
    await asyncio.wait_for(subscribed.wait(), 10)
    _, job, _ = await srv.upload()
    stand_in.start()
    await asyncio.wait_for(task, 20)
    kinds = [e["kind"] for e in seen]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "done"
    steps = [(e["stage"], e["step"], e["steps"]) for e in seen if e["kind"] == "progress"]
    assert ("pass1", 1, 2) in steps and ("pass2", 2, 2) in steps
    assert seen[-1]["job"]["id"] == job["id"] and seen[-1]["job"]["links"]["video"]

    status, st = await srv.get_json("/api/status")
    assert st["last_timings"]["total"] > 0 and st["queue"]["counts"]["done"] == 1


async def test_video_outside_output_folder_is_not_served(make_server, queue, cfg, tmp_path):
    from wan22bot.jobs import JobResult, JobState

    srv = await make_server()
    outside = tmp_path / "elsewhere.mp4"
    outside.write_bytes(b"secret")
    job, _ = await queue.submit(JobSpec(source="cli", input_path="", original_name="x.png", name="x"), png_bytes())
    claimed = await queue.next_job()
    assert claimed.id == job.id
    await queue.finish(claimed, JobState.done, result=JobResult(
        output=str(cfg.paths.output / ".." / "elsewhere.mp4"), sidecar=str(outside), timings={}, frames=1, fps=1,
        width=16, height=16, seed=0, bytes=6))
    for what in ("video", "sidecar"):
        async with srv.session.get(srv.url(f"/api/jobs/{job.id}/{what}")) as r:
            assert r.status == 403 and b"secret" not in await r.read()


async def test_page_and_assets(make_server):
    srv = await make_server()
    async with srv.session.get(srv.url("/")) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        html = await r.text()
    assert '<script src="/web/app.js"' in html and 'id="upload"' in html
    for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css")):
        async with srv.session.get(srv.url(f"/web/{name}")) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith(ctype)
    async with srv.session.get(srv.url("/web/..%2Fsources%2Fhttp.py")) as r:
        assert r.status == 404


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b\\c.png", "..%2F..%2Fx.png", ""])
async def test_odd_filenames(make_server, queue, name):
    srv = await make_server()
    form = aiohttp.FormData()
    form.add_field("photo", png_bytes(), filename=name or None)
    async with srv.session.post(srv.url("/api/jobs"), data=form) as r:
        assert r.status == 202, await r.text()
        body = await r.json()
    job = await queue.get(body["id"])
    assert "/" not in job.spec.original_name and "\x00" not in job.spec.original_name
    assert "/" not in job.spec.name and not job.spec.name.startswith(".")
    assert Path(job.spec.input_path).parent == queue.spool
