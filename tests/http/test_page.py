"""The status page in a real headless Chromium: screenshot and rendered DOM after a job is done.

Chromium is required (CI installs the `chromium` apt package); set WAN22BOT_SKIP_BROWSER=1 to skip
these tests on a machine without it. The screenshot is kept in the test's tmp folder
(`status-page.png`) for a look.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from PIL import Image, ImageStat

from .browser import Browser, chromium_path
from .helpers import TOKEN_ENV, StandInWorker, png_bytes

READY = ("document.querySelector('tr.job-row') && document.querySelector('#running .stage-now') && "
         "[...document.querySelectorAll('.video-card.done video')].some(v => v.readyState >= 2)")


async def busy_server(make_server, queue, cfg):
    """One done job, one running (held at pass 1 step 1/2), one queued."""
    hold = asyncio.Event()
    worker = StandInWorker(queue, cfg.paths.output, hold=hold)
    srv = await make_server(worker)
    worker.start()
    _, first, _ = await srv.upload(filename="sunset over the bay.png", prompt="waves roll in", frames=49)
    await srv.wait_state(first["id"], ("running",))
    hold.set()
    await srv.wait_state(first["id"])
    hold.clear()
    _, second, _ = await srv.upload(filename="grandma.jpg", preset="quality")
    await srv.wait_state(second["id"], ("running",))
    _, third, _ = await srv.upload(filename="dog.png", seed=5)
    return srv, worker, hold, first, second, third


async def test_status_page_in_chromium(make_server, queue, cfg, tmp_path):
    chromium_path()
    srv, worker, hold, done, running, queued = await busy_server(make_server, queue, cfg)
    png = tmp_path / "status-page.png"
    try:
        async with Browser(tmp_path / "profile") as browser:
            page = await browser.open(srv.url("/"))
            await page.wait_for(READY)  # data fetched and the done job's video has a frame to show
            await asyncio.sleep(0.5)  # let the media controls settle
            await page.screenshot(png)
            dom = await page.dom()
            assert not [c for c in browser.console if c.startswith("exception")], browser.console
    finally:
        hold.set()
        await worker.stop()

    # the screenshot: right size, not blank, the dark header, and the stage colours of the timing bars
    img = Image.open(png).convert("RGB")
    assert img.size == (1200, 900)
    stat = ImageStat.Stat(img)
    assert max(stat.stddev) > 20, f"the screenshot looks blank (stddev {stat.stddev})"
    colours = img.quantize(64).getcolors(64)
    assert len(colours) >= 12, f"only {len(colours)} colours: the page did not render"
    header = img.crop((0, 0, 1200, 40)).convert("L")
    assert ImageStat.Stat(header).mean[0] < 90, "the dark header bar is missing"
    lower = set(img.crop((0, 420, 1200, 900)).getdata())

    def seen(rgb: tuple[int, int, int]) -> bool:
        return any(sum(abs(a - b) for a, b in zip(c, rgb)) < 30 for c in lower)

    assert seen((0xE0, 0x66, 0x3A)), "no pass 1 bar (orange) in the screenshot"
    assert seen((0x2A, 0x5B, 0xD7)), "no pass 2 bar (blue) in the screenshot"
    assert seen((0x3A, 0xA5, 0x7A)), "no VAE decode bar (green) in the screenshot"

    # the rendered DOM: queue row, running job with its step, the done job's video and timing bars
    assert re.search(rf'<tr class="job-row" data-job-id="{queued["id"]}"', dom), "queued job row missing"
    assert "dog.png" in dom and "seed 5" in dom
    assert f'data-job-id="{running["id"]}"' in dom and "grandma.jpg" in dom
    assert "Pass 1 (high noise) · step 1/2" in dom
    card = re.search(rf'<article class="video-card done" data-job-id="{done["id"]}".*?</article>', dom, re.S)
    assert card, "the done job's card is missing"
    card_html = card.group(0)
    assert "<video" in card_html and f'src="/api/jobs/{done["id"]}/video"' in card_html
    bars = re.findall(r'<div class="bar s-(\w+)"[^>]*style="width: ([\d.]+)%', card_html)
    assert {s for s, _ in bars} == {"text_encode", "image_encode", "pass1", "pass2", "vae_decode", "encode"}
    widths = {s: float(w) for s, w in bars}
    assert widths["pass1"] == 100.0 and widths["pass2"] == pytest.approx(100 * 1.6 / 1.8, abs=0.1)
    assert "Pass 2 (low noise)" in card_html and "1.60 s" in card_html
    assert "model not loaded" in dom and "1 queued" in dom


async def test_status_page_with_token_in_fragment(make_server, queue, cfg, tmp_path, monkeypatch):
    chromium_path()
    token = "page-token-0123456789abcdef"
    monkeypatch.setenv(TOKEN_ENV, token)
    srv, worker, hold, done, running, queued = await busy_server(_with_auth(make_server, token), queue, cfg)
    try:
        async with Browser(tmp_path / "profile") as browser:
            page = await browser.open(srv.url(f"/#token={token}"))
            await page.wait_for(READY)
            dom = await page.dom()
            assert await page.evaluate("location.hash") == ""  # the token left the address bar
            bare = await browser.open(srv.url("/"))  # a new tab: sessionStorage is per tab
            await bare.wait_for("!document.getElementById('auth').hidden")
            no_token = await bare.dom()
    finally:
        hold.set()
        await worker.stop()
    assert f'data-job-id="{queued["id"]}"' in dom
    assert f'src="/api/jobs/{done["id"]}/video?token={token}"' in dom  # <video> cannot send headers
    assert f'data-job-id="{queued["id"]}"' not in no_token


def _with_auth(make_server, token: str):
    """make_server whose client session sends the bearer token (for the test's own API calls)."""

    async def factory(*args, **kw):
        srv = await make_server(*args, **kw)
        srv.session.headers["Authorization"] = f"Bearer {token}"
        return srv

    return factory


async def test_upload_form_in_chromium(make_server, queue, tmp_path):
    chromium_path()
    srv = await make_server()
    good = tmp_path / "kitten.png"
    good.write_bytes(png_bytes())
    bad = tmp_path / "shopping list.txt"
    bad.write_text("eggs, milk")
    async with Browser(tmp_path / "profile") as browser:
        page = await browser.open(srv.url("/"))
        await page.wait_for("document.getElementById('queue-empty') && document.querySelector('.pill')")
        # the tiny model makes at most 125 frames: longer choices are greyed out
        await page.wait_for("[...document.querySelectorAll('#upload select[name=frames] option')]"
                            ".some(o => o.disabled)")
        disabled = await page.evaluate("[...document.querySelectorAll('#upload select[name=frames] option')]"
                                       ".filter(o => o.disabled).map(o => o.value).join(',')")
        assert disabled == "161"

        async def submit(path) -> str:
            doc = await page.call("DOM.getDocument")
            node = await page.call("DOM.querySelector", {"nodeId": doc["root"]["nodeId"], "selector": "#photo"})
            await page.call("DOM.setFileInputFiles", {"nodeId": node["nodeId"], "files": [str(path)]})
            await page.evaluate("document.getElementById('upload-msg').textContent = ''")
            await page.evaluate("document.querySelector('#upload textarea').value = 'a cat yawns'; "
                                "document.querySelector('#upload select[name=frames]').value = '49'; "
                                "document.getElementById('upload-button').click()")
            await page.wait_for("/^(Queued|[a-z])/.test(document.getElementById('upload-msg').textContent) && "
                                "!document.getElementById('upload-msg').textContent.startsWith('uploading')")
            return await page.evaluate("document.getElementById('upload-msg').className + ' | ' + "
                                       "document.getElementById('upload-msg').textContent")

        msg = await submit(bad)
        assert msg.startswith("msg bad | ") and "shopping list.txt is not an image" in msg
        assert await queue.list() == []
        msg = await submit(good)
        assert msg.startswith("msg ok | Queued kitten.png as job ") and "(position 1)" in msg
        await page.wait_for("document.querySelector('tr.job-row')")  # the queue table shows it
    jobs = await queue.list()
    assert len(jobs) == 1
    assert jobs[0].spec.original_name == "kitten.png"
    assert jobs[0].spec.options.prompt == "a cat yawns" and jobs[0].spec.options.frames == 49
