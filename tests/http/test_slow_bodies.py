"""A body trickling in is dropped after http.body_timeout_seconds, and uploads received at once are capped."""

from __future__ import annotations

import asyncio
import json
import time

from .helpers import make_config, png_bytes
from .raw import RawUpload, multipart_photo

BOUND = 15.0  # seconds any wait below may take at most on a busy machine


async def wait_until(condition, timeout: float = BOUND) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_a_one_byte_a_second_body_is_dropped_with_408(tmp_path, queue, make_server):
    cfg = make_config(tmp_path, http={"body_timeout_seconds": 1.0})
    srv = await make_server(config=cfg)
    up = RawUpload(srv.source.port, multipart_photo(b'filename="slow.png"', png_bytes()))
    await up.open(first_bytes=40)
    trickle = asyncio.create_task(up.trickle(40, every=0.25))
    t0 = time.monotonic()
    try:
        status, headers, body = await up.status(timeout=BOUND)
        waited = time.monotonic() - t0
    finally:
        trickle.cancel()
    assert status == 408, body
    assert 0.9 <= waited < BOUND
    msg = json.loads(body)["error"]
    assert "within 1 seconds" in msg and "http.body_timeout_seconds" in msg
    assert headers.get("connection", "").lower() == "close"
    assert await up.closed_by_server(timeout=BOUND)  # the slot and the buffer are given back
    await up.close()
    assert srv.source.uploads.active == 0 and await queue.list() == []
    status, body, _ = await srv.upload(png_bytes())  # a normal upload still goes through
    assert status == 202, body


async def test_uploads_over_the_cap_get_503_with_retry_after(tmp_path, queue, make_server):
    cfg = make_config(tmp_path, http={"max_concurrent_uploads": 2, "body_timeout_seconds": 60.0})
    srv = await make_server(config=cfg)
    stalled = [RawUpload(srv.source.port, multipart_photo(f'filename="s{i}.png"'.encode(), png_bytes()))
               for i in range(2)]
    for up in stalled:
        await up.open(first_bytes=60)
    await wait_until(lambda: srv.source.uploads.active == 2)

    status, body, headers = await srv.upload(png_bytes(), "third.png")
    assert status == 503, body
    assert "http.max_concurrent_uploads = 2" in body["error"] and int(headers["Retry-After"]) > 0
    async with srv.session.get(srv.url("/api/jobs")) as r:  # reading is not capped
        assert r.status == 200

    for up in stalled:  # the slow clients give up: their slots come back
        await up.close()
    await wait_until(lambda: srv.source.uploads.active == 0)
    status, body, _ = await srv.upload(png_bytes(), "third.png")
    assert status == 202, body
    assert [j.spec.original_name for j in await queue.list()] == ["third.png"]
