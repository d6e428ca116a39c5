"""Host and Origin checks (DNS rebinding, CSRF) and the token rule behind a proxy, with real requests."""

from __future__ import annotations

import re

import pytest

from wan22bot.errors import ConfigError
from wan22bot.sources.http import HttpSource
from wan22bot.sources.http.guard import split_host

from .helpers import TOKEN_ENV, make_config, photo_form, png_bytes

SECRET = "guard-test-token-0123456789abcdef"


async def post_photo(srv, headers: dict[str, str]) -> tuple[int, dict]:
    async with srv.session.post(srv.url("/api/jobs"), data=photo_form(png_bytes()), headers=headers) as r:
        return r.status, await r.json()


async def test_cross_origin_post_is_refused_on_the_default_server(make_server, queue):
    srv = await make_server()  # loopback, no token: the default
    status, body = await post_photo(srv, {"Origin": "http://evil.example"})
    assert status == 403, body
    assert "cross-origin POST refused" in body["error"] and "'http://evil.example'" in body["error"]
    status, body = await post_photo(srv, {"Sec-Fetch-Site": "cross-site"})  # a browser that sent no Origin
    assert status == 403 and "cross-site POST refused" in body["error"]
    status, body = await post_photo(srv, {"Origin": "null"})  # sandboxed frames, file:// pages
    assert status == 403
    status, body = await post_photo(srv, {"Origin": f"http://127.0.0.1:{srv.source.port + 1}"})  # another port
    assert status == 403
    assert await queue.list() == []

    job = None
    for origin in (f"http://127.0.0.1:{srv.source.port}", None):  # the status page's own fetch(); curl
        headers = {"Origin": origin, "Sec-Fetch-Site": "same-origin"} if origin else {}
        status, job = await post_photo(srv, headers)
        assert status == 202, job
    async with srv.session.delete(srv.url(f"/api/jobs/{job['id']}"), headers={"Origin": "http://evil.example"}) as r:
        assert r.status == 403 and "cross-origin DELETE refused" in (await r.json())["error"]
    assert (await queue.get(job["id"])).state.value == "queued"
    async with srv.session.delete(srv.url(f"/api/jobs/{job['id']}"),
                                  headers={"Origin": f"http://localhost:{srv.source.port}",
                                           "Host": f"localhost:{srv.source.port}"}) as r:
        assert r.status == 200


async def test_foreign_host_header_is_refused_on_every_route(make_server):
    srv = await make_server()
    port = srv.source.port
    for path in ("/api/jobs", "/api/status", "/healthz", "/", "/web/app.js", "/metrics"):
        async with srv.session.get(srv.url(path), headers={"Host": f"evil.example:{port}"}) as r:
            assert r.status == 421, path
            body = await r.json()
        assert "'evil.example:" in body["error"] and f"http://127.0.0.1:{port}" in body["error"]
        assert "http.allowed_hosts" in body["error"]
    for bad in (f"127.0.0.1:{port + 1}", "", "evil.example", "[::1", "a:b:c"):
        async with srv.session.get(srv.url("/api/jobs"), headers={"Host": bad}) as r:
            assert r.status == 421, bad
    for good in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}", "127.0.0.1"):
        async with srv.session.get(srv.url("/api/jobs"), headers={"Host": good}) as r:
            assert r.status == 200, good


async def test_allowed_hosts_and_public_url_host(tmp_path, queue, make_server, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, SECRET)
    cfg = make_config(tmp_path, http={"allowed_hosts": ["gpu-box.lan"], "public_url": "https://videos.example.test/wan"})
    srv = await make_server(config=cfg)
    auth = {"Authorization": f"Bearer {SECRET}"}
    port = srv.source.port
    for host, want in ((f"gpu-box.lan:{port}", 200), ("videos.example.test", 200), ("videos.example.test:443", 200),
                       (f"videos.example.test:{port}", 421), (f"other.lan:{port}", 421)):
        async with srv.session.get(srv.url("/api/jobs"), headers={"Host": host, **auth}) as r:
            assert r.status == want, host
    # the page as served through the proxy posts with the public origin, the proxy passing Host on or not
    for host in ("videos.example.test", f"127.0.0.1:{port}"):
        status, body = await post_photo(srv, {"Origin": "https://videos.example.test", "Host": host, **auth})
        assert status == 202, (host, body)
    status, body = await post_photo(srv, {"Origin": "http://videos.example.test", **auth})  # wrong scheme
    assert status == 403


def test_host_header_parsing():
    assert split_host("Example.COM:8622") == ("example.com", 8622)
    assert split_host("[::1]:80") == ("::1", 80)
    assert split_host("[::1]") == ("::1", None)
    assert split_host("localhost.") == ("localhost", None)
    for bad in ("", ":80", "host:", "host:0", "host:99999", "host:8x", "::1", "[::1]x", "[::1"):
        assert split_host(bad) is None, bad


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Real-IP", "X-Forwarded-Host"])
async def test_requests_through_a_proxy_need_the_token(make_server, queue, header, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    srv = await make_server()  # loopback, no token
    value = "for=203.0.113.9" if header == "Forwarded" else "203.0.113.9"
    async with srv.session.get(srv.url("/api/jobs"), headers={header: value}) as r:
        assert r.status == 403
        msg = (await r.json())["error"]
    assert f"a {header} header" in msg and "bearer token" in msg and "http.token_env" in msg
    status, _ = await post_photo(srv, {header: value})
    assert status == 403 and await queue.list() == []
    async with srv.session.get(srv.url("/healthz"), headers={header: value}) as r:
        assert r.status == 200  # holds no job data
    async with srv.session.get(srv.url("/api/jobs")) as r:  # straight from this machine: as before
        assert r.status == 200


async def test_with_a_token_proxied_requests_follow_the_token_rules(make_server, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, SECRET)
    srv = await make_server()
    async with srv.session.get(srv.url("/api/jobs"), headers={"X-Forwarded-For": "203.0.113.9"}) as r:
        assert r.status == 401
    async with srv.session.get(srv.url("/api/jobs"), headers={"X-Forwarded-For": "203.0.113.9",
                                                             "Authorization": f"Bearer {SECRET}"}) as r:
        assert r.status == 200


async def test_public_url_without_a_token_refuses_to_start(tmp_path, queue, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    src = HttpSource(make_config(tmp_path, http={"public_url": "https://videos.example.test"}), queue)
    with pytest.raises(ConfigError) as err:
        await src.start()
    msg = str(err.value)
    assert "http.public_url" in msg and TOKEN_ENV in msg and re.search(r"proxy", msg)
    assert src._runner is None


async def test_status_page_script_talks_only_to_its_own_origin():
    """The page's fetch() calls use relative paths, so the browser sends its own origin (allowed above)."""
    from wan22bot.sources.http.routes import WEB_DIR

    js = (WEB_DIR / "app.js").read_text(encoding="utf-8")
    assert not re.search(r"""fetch\(\s*["'`]https?:""", js) and "new EventSource(withToken(\"/api/" in js


def test_check_command_names_public_url_without_a_token(tmp_path, monkeypatch):
    from wan22bot.commands.check import run_checks

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    cfg = make_config(tmp_path, http={"public_url": "https://videos.example.test"})
    errors = run_checks(cfg).errors
    assert any("http.public_url" in e and TOKEN_ENV in e for e in errors), errors
    monkeypatch.setenv(TOKEN_ENV, SECRET)
    assert not any("http.public_url" in e for e in run_checks(cfg).errors)
