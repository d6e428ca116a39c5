"""Signed, expiring video links: they open the video without the token; changed or expired ones get 403."""

from __future__ import annotations

import os
import stat
import time
from urllib.parse import parse_qs, urlsplit

from wan22bot import links

from .helpers import TOKEN_ENV, make_config, png_bytes

SECRET = "links-test-token-0123456789abcdef"
PUBLIC = "https://videos.example.test/wan"


async def finished_job(srv, stand_in) -> dict:
    status, job, _ = await srv.upload(png_bytes(), "beach.png", headers={"Authorization": f"Bearer {SECRET}"})
    assert status == 202, job
    stand_in.start()
    return await srv.wait_state(job["id"], headers={"Authorization": f"Bearer {SECRET}"})


async def test_signed_link_opens_the_video_without_the_token_until_it_expires(tmp_path, queue, stand_in,
                                                                                 make_server, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, SECRET)
    cfg = make_config(tmp_path, http={"public_url": PUBLIC, "link_days": 2})
    srv = await make_server(stand_in, config=cfg)
    job = await finished_job(srv, stand_in)
    now = time.time()
    link = links.video_link(cfg, job["id"], now=now)
    u = urlsplit(link)
    assert link.startswith(f"{PUBLIC}/v/{job['id']}?") and "token" not in link and SECRET not in link
    q = {k: v[0] for k, v in parse_qs(u.query).items()}
    assert int(q["exp"]) == int(now + 2 * 86400)
    proxied = {"Host": "videos.example.test"}  # what the proxy in front passes on
    path = u.path.removeprefix("/wan")

    async with srv.session.get(srv.url(f"{path}?{u.query}"), headers=proxied) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "video/mp4"
        data = await r.read()
    assert data == open(job["output"], "rb").read()
    async with srv.session.get(srv.url(f"/api/jobs/{job['id']}/video"), headers=proxied) as r:
        assert r.status == 401  # the API itself still needs the token

    bad_sig = q["sig"][:-1] + ("0" if q["sig"][-1] != "0" else "1")
    for query, words in (
        (f"exp={q['exp']}&sig={bad_sig}", "not valid"),  # tampered signature
        (f"exp={int(q['exp']) + 86400}&sig={q['sig']}", "not valid"),  # stretched expiry
        (f"exp={q['exp']}", "incomplete"),
        ("", "incomplete"),
    ):
        async with srv.session.get(srv.url(f"{path}?{query}"), headers=proxied) as r:
            assert r.status == 403, query
            assert words in (await r.json())["error"], query
    # the signature is for this job only
    async with srv.session.get(srv.url(f"/v/0123456789ab?{u.query}"), headers=proxied) as r:
        assert r.status == 403 and "not valid" in (await r.json())["error"]

    expired = links.video_link(cfg, job["id"], now=now - 3 * 86400)  # made three days ago, valid for two
    e = urlsplit(expired)
    async with srv.session.get(srv.url(f"{e.path.removeprefix('/wan')}?{e.query}"), headers=proxied) as r:
        assert r.status == 403
        assert "expired on" in (await r.json())["error"]


def test_link_key_comes_from_the_token_or_a_private_file(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    cfg = make_config(tmp_path)
    key = links.link_secret(cfg)
    f = tmp_path / "state" / links.SECRET_FILE
    assert len(key) == 32 and f.is_file()
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert links.link_secret(cfg) == key  # kept across starts
    monkeypatch.setenv(TOKEN_ENV, SECRET)
    from_token = links.link_secret(cfg)
    assert from_token != key and len(from_token) == 32
    monkeypatch.setenv(TOKEN_ENV, SECRET + "-new")
    assert links.link_secret(cfg) != from_token  # a new token revokes old links
    sig = links.signature(from_token, "job1", 2_000_000_000)
    assert links.refusal(from_token, "job1", "2000000000", sig, now=1_900_000_000) is None
    assert links.refusal(links.link_secret(cfg), "job1", "2000000000", sig, now=1_900_000_000) is not None


async def test_http_source_makes_the_key_file_at_first_start(tmp_path, queue, make_server, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    cfg = make_config(tmp_path)
    f = tmp_path / "state" / links.SECRET_FILE
    assert not f.exists()
    srv = await make_server(config=cfg)
    assert f.is_file() and srv.source.link_secret == bytes.fromhex(f.read_text().strip())
