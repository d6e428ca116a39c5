"""Headless Chromium driven over its DevTools protocol (a WebSocket on 127.0.0.1), for the page tests.

`chromium --screenshot` shoots at the load event, before the page's fetches have filled it in, and
`--virtual-time-budget` never ends while the page holds its event stream open. So the tests start
the same headless Chromium with `--remote-debugging-port=0`, open the page, wait until a condition
holds in the page, then take the screenshot and the rendered DOM.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
SKIP_ENV = "WAN22BOT_SKIP_BROWSER"


def chromium_path() -> str:
    """The browser, or a failed test saying how to get it (a skip only when SKIP_ENV=1)."""
    for path in CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"no Chromium and {SKIP_ENV}=1")
    pytest.fail("the status page tests need headless Chromium: install it (`apt-get install -y chromium`) "
                f"or set {SKIP_ENV}=1 to skip them", pytrace=False)


class Browser:
    def __init__(self, profile: Path, width: int = 1200, height: int = 900):
        self.profile = Path(profile)
        self.width, self.height = width, height
        self.proc: asyncio.subprocess.Process | None = None
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None
        self.console: list[str] = []

    async def __aenter__(self) -> "Browser":
        self.profile.mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", f"--user-data-dir={self.profile}",
            f"--window-size={self.width},{self.height}", "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self.proc.returncode is not None or time.monotonic() > deadline:
                await self.__aexit__(None, None, None)
                raise AssertionError("Chromium did not open its DevTools port")
            await asyncio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.call("Browser.close"), 5)
            except Exception:
                pass
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
        if self.http is not None:
            await self.http.close()
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = msg.json()
            fut = self._pending.pop(data.get("id"), None) if "id" in data else None
            if fut is not None and not fut.done():
                if "error" in data:
                    fut.set_exception(AssertionError(f"DevTools error: {data['error']}"))
                else:
                    fut.set_result(data.get("result", {}))
            elif data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            elif data.get("method") == "Runtime.exceptionThrown":
                self.console.append("exception: " + str(data["params"]["exceptionDetails"].get("text")))

    async def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict:
        assert self.ws is not None
        msg_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        await self.ws.send_json(msg)
        return await asyncio.wait_for(fut, 30)

    async def open(self, url: str) -> "Page":
        target = await self.call("Target.createTarget", {"url": "about:blank"})
        attached = await self.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.call("Emulation.setDeviceMetricsOverride",
                        {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        await page.call("Runtime.enable")
        await page.call("Page.navigate", {"url": url})
        return page


class Page:
    def __init__(self, browser: Browser, session: str):
        self.browser = browser
        self.session = session

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict:
        return await self.browser.call(method, params, self.session)

    async def evaluate(self, expression: str) -> Any:
        out = await self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                   "awaitPromise": True})
        if "exceptionDetails" in out:
            raise AssertionError(f"page script failed: {out['exceptionDetails']}")
        return out["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        guarded = (f"(() => {{ try {{ return location.protocol.startsWith('http') && !!({expression}); }} "
                   "catch (e) { return false; } })()")
        while not await self.evaluate(guarded):
            if time.monotonic() > deadline:
                raise AssertionError(f"the page never got to: {expression}\nconsole: {self.browser.console}")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> Path:
        shot = await self.call("Page.captureScreenshot", {"format": "png"})
        Path(path).write_bytes(base64.b64decode(shot["data"]))
        return Path(path)

    async def dom(self) -> str:
        return await self.evaluate("document.documentElement.outerHTML")
