"""Bearer-token rules: required off loopback, enforced whenever set, /healthz always open."""

from __future__ import annotations

import logging

import pytest

from wan22bot.errors import ConfigError
from wan22bot.sources.http import HttpSource, is_loopback, read_token

from .helpers import TOKEN_ENV, make_config, png_bytes

SECRET = "s3cret-token-0123456789abcdef"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "gpu-box.lan"])
async def test_non_loopback_host_without_token_refuses_to_start(tmp_path, queue, monkeypatch, host):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    cfg = make_config(tmp_path, http={"host": host})
    src = HttpSource(cfg, queue, None)
    with pytest.raises(ConfigError) as err:
        await src.start()
    msg = str(err.value)
    assert TOKEN_ENV in msg and host in msg and "127.0.0.1" in msg
    assert src._runner is None  # nothing is listening


def test_loopback_detection_and_token_reading(tmp_path, monkeypatch):
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.lan", ""):
        assert not is_loopback(host), host
    monkeypatch.setenv(TOKEN_ENV, f"  {SECRET}\n")
    assert read_token(make_config(tmp_path, http={"host": "0.0.0.0"})) == SECRET
    monkeypatch.setenv(TOKEN_ENV, "")
    assert read_token(make_config(tmp_path)) is None
    with pytest.raises(ConfigError):
        read_token(make_config(tmp_path, http={"host": "0.0.0.0"}))


async def test_token_is_enforced(make_server, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(TOKEN_ENV, SECRET)
    srv = await make_server()
    assert srv.source.auth_required
    s = srv.session
    good = {"Authorization": f"Bearer {SECRET}"}

    async with s.get(srv.url("/healthz")) as r:
        assert r.status == 200
    for method, path in (("GET", "/api/jobs"), ("GET", "/api/status"), ("GET", "/metrics"),
                         ("GET", "/api/jobs/abc"), ("DELETE", "/api/jobs/abc"), ("GET", "/api/jobs/abc/video"),
                         ("GET", "/api/events"), ("POST", "/api/jobs")):
        async with s.request(method, srv.url(path)) as r:
            assert r.status == 401, (method, path)
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert "bearer token" in (await r.json())["error"]
        async with s.request(method, srv.url(path), headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401 and "not valid" in (await r.json())["error"]

    async with s.get(srv.url("/api/jobs"), headers=good) as r:
        assert r.status == 200 and await r.json() == []
    async with s.get(srv.url("/metrics"), headers=good) as r:
        assert r.status == 200
    async with s.get(srv.url(f"/api/status?token={SECRET}")) as r:  # the <video src>/EventSource form
        assert r.status == 200 and (await r.json())["auth"] is True

    form_data = png_bytes()
    from .helpers import photo_form

    async with s.post(srv.url("/api/jobs"), data=photo_form(form_data), headers=good) as r:
        assert r.status == 202
        job = await r.json()
    assert job["user"] == "token"
    async with s.get(srv.url(f"/api/jobs/{job['id']}?token={SECRET}")) as r:
        assert r.status == 200

    # the page shell and its assets hold no data and load without the token
    async with s.get(srv.url("/")) as r:
        assert r.status == 200
    async with s.get(srv.url("/web/app.js")) as r:
        assert r.status == 200

    assert SECRET not in caplog.text
    assert "/api/status" in caplog.text  # the access log did log the request, minus the query


async def test_reload_keeps_listening_and_rereads_the_token(make_server, cfg, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, SECRET)
    srv = await make_server()
    monkeypatch.setenv(TOKEN_ENV, "another-token-abcdef0123")
    srv.source.reload(cfg)
    async with srv.session.get(srv.url("/api/jobs"), headers={"Authorization": f"Bearer {SECRET}"}) as r:
        assert r.status == 401
    async with srv.session.get(srv.url("/api/jobs"), headers={"Authorization": "Bearer another-token-abcdef0123"}) as r:
        assert r.status == 200
