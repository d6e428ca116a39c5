"""A small Hugging Face Hub on 127.0.0.1, close enough to the real one for huggingface_hub's clients.

It serves the endpoints fetch-models uses, the way the Hub answers them:
- POST /api/models/{repo}/paths-info/{revision} (form field `paths`, repeated): a JSON list of
  {"type": "file", "path", "size", "oid", "lfs": {"oid": sha256, "size", "pointerSize"}};
  paths that do not exist are left out; an unknown repository is a 404 with X-Error-Code RepoNotFound.
- GET/HEAD /{repo}/resolve/{revision}/{path}: a 302 to a content URL (as LFS files are), with
  X-Repo-Commit, X-Linked-Etag and X-Linked-Size; a missing file is a 404 with X-Error-Code EntryNotFound.
- GET /cdn/{sha256}: the bytes, honouring `Range: bytes=N-` with 206 and Content-Range.
No Xet headers are sent, so no client tries that protocol.

Every request is recorded (path, Range header, bytes of body sent) for the tests to inspect.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass, field

from aiohttp import web

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PIECE = 4096


@dataclass
class FakeFile:
    content: bytes
    listed_sha256: str | None = None  # None: the real sha256 of `content`
    listed_size: int | None = None  # None: len(content)
    stall_after: int | None = None  # send this many bytes, then wait for `FakeHub.release`
    drop_after: int | None = None  # once: send this many bytes, then close the connection
    ignore_range: bool = False  # answer Range requests with 200 and the whole file, as some proxies do

    @property
    def sha256(self) -> str:
        return self.listed_sha256 or hashlib.sha256(self.content).hexdigest()

    @property
    def size(self) -> int:
        return self.listed_size if self.listed_size is not None else len(self.content)


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    status: int = 0
    body_bytes: int = 0


@dataclass
class FakeHub:
    files: dict[tuple[str, str], FakeFile] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    status_for: dict[str, int] = field(default_factory=dict)  # path prefix -> forced status
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, repo_id: str, path: str, content: bytes, **kw) -> FakeFile:
        f = FakeFile(content, **kw)
        self.files[(repo_id, path)] = f
        return f

    def repos(self) -> set[str]:
        return {r for r, _ in self.files}

    def requests_to(self, prefix: str) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith(prefix)]

    # -- handlers --------------------------------------------------------------------------

    def _forced(self, request: web.Request) -> web.Response | None:
        for prefix, status in self.status_for.items():
            if request.path.startswith(prefix):
                return web.Response(status=status, text=f"forced {status}")
        return None

    async def paths_info(self, request: web.Request) -> web.Response:
        rec = Seen(request.method, request.path, request.headers.get("Range"))
        self.seen.append(rec)
        forced = self._forced(request)
        if forced is not None:
            rec.status = forced.status
            return forced
        repo_id = f"{request.match_info['owner']}/{request.match_info['name']}"
        if repo_id not in self.repos():
            rec.status = 404
            return web.Response(status=404, headers={"X-Error-Code": "RepoNotFound"}, text="Repository not found")
        form = await request.post()
        out = []
        for path in form.getall("paths", []):
            f = self.files.get((repo_id, path))
            if f is None:
                continue
            out.append({
                "type": "file",
                "path": path,
                "size": f.size,
                "oid": hashlib.sha1(f.content).hexdigest(),
                "lfs": {"oid": f.sha256, "size": f.size, "pointerSize": 134},
            })
        rec.status = 200
        return web.json_response(out)

    async def resolve(self, request: web.Request) -> web.Response:
        rec = Seen(request.method, request.path, request.headers.get("Range"))
        self.seen.append(rec)
        forced = self._forced(request)
        if forced is not None:
            rec.status = forced.status
            return forced
        repo_id = f"{request.match_info['owner']}/{request.match_info['name']}"
        f = self.files.get((repo_id, request.match_info["path"]))
        if f is None:
            rec.status = 404
            return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT},
                                text="Entry not found")
        rec.status = 302
        return web.Response(status=302, headers={
            "Location": f"/cdn/{hashlib.sha256(f.content).hexdigest()}",
            "X-Repo-Commit": COMMIT,
            "X-Linked-Etag": f'"{f.sha256}"',
            "X-Linked-Size": str(f.size),
            "ETag": f'"{hashlib.sha1(f.content).hexdigest()}"',
        })

    async def cdn(self, request: web.Request) -> web.StreamResponse:
        rec = Seen(request.method, request.path, request.headers.get("Range"))
        self.seen.append(rec)
        by_sha = {hashlib.sha256(f.content).hexdigest(): f for f in self.files.values()}
        f = by_sha.get(request.match_info["sha"])
        if f is None:
            rec.status = 404
            return web.Response(status=404)
        data = f.content
        start, status = 0, 200
        m = re.fullmatch(r"bytes=(\d+)-", rec.range or "")
        if m and not f.ignore_range:
            start = int(m.group(1))
            if start >= len(data):
                rec.status = 416
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            status = 206
        headers = {"Content-Length": str(len(data) - start), "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        resp = web.StreamResponse(status=status, headers=headers)
        rec.status = status
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        pos = start
        try:
            while pos < len(data):
                if f.stall_after is not None and pos >= f.stall_after and not self.release.is_set():
                    # hold the connection open mid-file, as a hung download does, until the test lets go
                    await asyncio.wait_for(self.release.wait(), timeout=60)
                    return resp
                if f.drop_after is not None and pos >= f.drop_after:
                    f.drop_after = None
                    request.transport.close()  # mid-body: the client sees a short read
                    return resp
                end = min(pos + PIECE, len(data))
                if f.drop_after is not None and pos < f.drop_after < end:
                    end = f.drop_after
                if f.stall_after is not None and pos < f.stall_after < end and not self.release.is_set():
                    end = f.stall_after
                await resp.write(data[pos:end])
                rec.body_bytes += end - pos
                pos = end
            await resp.write_eof()
        except ConnectionError:
            pass  # the client went away (killed mid-download)
        return resp

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/models/{owner}/{name}/paths-info/{revision}", self.paths_info)
        app.router.add_route("*", "/{owner}/{name}/resolve/{revision}/{path:.+}", self.resolve)
        app.router.add_route("*", "/cdn/{sha}", self.cdn)
        return app


async def start(hub: FakeHub) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(hub.app(), shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # port 0: the OS picked a free one
    return runner, f"http://127.0.0.1:{port}"
