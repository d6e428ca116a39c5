"""Bad input over HTTP is refused at once with a 400 and a sentence, and nothing is queued:
a truncated photo (the same full check every source runs) and control characters in file names."""

from __future__ import annotations

import pytest

from tests.core.helpers import EXAMPLE_PHOTO

from .helpers import png_bytes
from .raw import CONTENT_TYPE, multipart_photo


async def test_truncated_jpeg_is_refused_before_it_is_queued(make_server, queue):
    srv = await make_server()
    data = EXAMPLE_PHOTO.read_bytes()
    status, body, _ = await srv.upload(data[: len(data) * 2 // 3], "holiday.jpg")
    assert status == 400, body
    assert body["field"] == "photo"
    assert body["error"].startswith("holiday.jpg is damaged or truncated and cannot be decoded")
    assert await queue.list() == [] and list(queue.spool.iterdir()) == []
    status, body, _ = await srv.upload(data, "holiday.jpg")  # the whole file is fine
    assert status == 202, body


RAW_NAMES = [
    pytest.param(b'filename="a\x00b.png"', id="raw-NUL"),
    pytest.param(b'filename="a\x1b[31mb.png"', id="raw-ESC"),
    pytest.param(b'filename="a\x7fb.png"', id="raw-DEL"),
    pytest.param(b'filename="a\x01b.png"', id="raw-SOH"),
]
ENCODED_NAMES = [
    pytest.param(b"filename*=UTF-8''a%00b.png", "U+0000", id="rfc5987-NUL"),
    pytest.param(b"filename*=UTF-8''a%1Bb.png", "U+001B", id="rfc5987-ESC"),
    pytest.param(b'filename="evil%0Aname.png"', "U+000A", id="browser-encoded-LF"),
    pytest.param("filename=\"a\u0085b.png\"".encode(), "U+0085", id="C1-NEL"),
    pytest.param(b'filename="%00%1F.png"', "U+0000", id="encoded-NUL-US"),
]


async def _post(srv, disposition: bytes) -> tuple[int, dict]:
    async with srv.session.post(srv.url("/api/jobs"), data=multipart_photo(disposition, png_bytes()),
                                headers={"Content-Type": CONTENT_TYPE}) as r:
        return r.status, await r.json()


@pytest.mark.parametrize("disposition", RAW_NAMES)
async def test_raw_control_character_in_file_name_is_a_400(make_server, queue, disposition):
    srv = await make_server()
    status, body = await _post(srv, disposition)
    assert status == 400, body
    assert "control character" in body["error"] and "rename the file" in body["error"]
    assert await queue.list() == []


@pytest.mark.parametrize(("disposition", "code"), ENCODED_NAMES)
async def test_encoded_control_character_in_file_name_is_a_400(make_server, queue, disposition, code):
    srv = await make_server()
    status, body = await _post(srv, disposition)
    assert status == 400, body
    assert body["error"] == (f"the file name of the photo contains a control character ({code}); rename the file "
                             "without control characters and send it again")
    assert await queue.list() == []
    status, body = await _post(srv, b'filename="plain name.png"')
    assert status == 202 and body["photo"] == "plain name.png"


async def test_frames_above_the_models_limit_are_a_400_naming_the_limit(make_server, queue):
    srv = await make_server()  # the tiny model: at most 125 frames
    status, body, _ = await srv.upload(png_bytes(), "a.png", frames=129)
    assert status == 400 and body["field"] == "frames"
    assert body["error"] == "frames is 129, but the tiny model makes at most 125 frames; ask for 125 or fewer"
    status, body, _ = await srv.upload(png_bytes(), "a.png", frames=1001)
    assert status == 400 and body["field"] == "frames" and "at most 161" in body["error"]
    assert await queue.list() == []
    status, body, _ = await srv.upload(png_bytes(), "a.png", frames=125)
    assert status == 202 and body["options"]["frames"] == 125
