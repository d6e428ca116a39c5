"""Paths in the journal are absolute; rows written relative to an old working directory are migrated."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

from wan22bot.config import load_config
from wan22bot.jobs import JobResult, JobState
from wan22bot.queue import JobQueue

from .conftest import claim, photo_bytes, spec


async def test_relative_folders_are_stored_absolute_and_survive_another_cwd(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)
    q = JobQueue(Path("state"), Path("out"))  # as the built-in defaults would give
    await q.start()
    try:
        job, _ = await q.submit(spec(), photo_bytes(1))
    finally:
        await q.close()
    assert Path(job.spec.input_path).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    q = JobQueue(home / "state", home / "out")
    await q.start()
    try:
        got = await claim(q)
        assert got.id == job.id
        assert Path(got.spec.input_path).read_bytes()[:4] == b"\xff\xd8\xff\xe0"
    finally:
        await q.close()


def test_config_paths_resolve_against_the_config_folder_from_any_cwd(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.toml").write_text('[paths]\nstate = "./st"\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("conf/config.toml"), required=True)  # a relative -c
    assert cfg.paths.state == tmp_path / "conf" / "st"
    assert cfg.paths.state.is_absolute() and cfg.paths.output.is_absolute()
    monkeypatch.chdir(tmp_path / "conf")
    default = load_config(None)  # no file at all: the built-in defaults, pinned to where we started
    assert all(p.is_absolute() for p in (default.paths.input, default.paths.output, default.paths.state))


def _old_row(con, jid: str, state: str, input_path: str, output: str | None) -> None:
    """A row as an older version wrote it: paths relative to its start directory."""
    s = spec(name="cat.jpg").model_copy(update={"input_path": input_path, "name": "cat"})
    result = None
    if output:
        result = JobResult(output=output, sidecar=output[:-4] + ".json", timings={"total": 1.0}, frames=5, fps=16,
                           width=64, height=96, seed=1, bytes=3).model_dump_json()
    con.execute("INSERT INTO jobs (id, state, source, lane, spec, created, finished, result, delivered) "
                "VALUES (?,?,?,?,?,?,?,?,?)", (jid, state, "watch", "watch:", s.model_dump_json(), 1.0,
                                                2.0 if output else None, result, 1 if output else 0))


async def test_old_relative_rows_are_migrated_at_start(tmp_path, monkeypatch, caplog):
    # an older daemon ran in tmp_path with state "state" and output "out": relative rows
    root = tmp_path
    q = JobQueue(root / "state", root / "out")
    await q.start()
    await q.close()
    (root / "state" / "spool" / "aaa.jpg").write_bytes(photo_bytes("queued"))
    (root / "out").mkdir(exist_ok=True)
    (root / "out" / "cat.mp4").write_bytes(b"mp4")
    con = sqlite3.connect(str(root / "state" / "jobs.sqlite"))
    with con:
        _old_row(con, "queuedjob", "queued", "state/spool/aaa.jpg", None)
        _old_row(con, "donejob", "done", "state/spool/bbb.jpg", "out/cat.mp4")
    con.close()

    # restarted from somewhere else
    monkeypatch.chdir(tmp_path.parent)
    caplog.set_level(logging.INFO, logger="wan22bot.queue")
    q = JobQueue(root / "state", root / "out")
    await q.start()
    try:
        assert any("2 jobs had paths relative" in r.getMessage() for r in caplog.records), caplog.text
        done = await q.get("donejob")
        assert done.result.output == str(root / "out" / "cat.mp4")
        assert Path(done.result.output).read_bytes() == b"mp4"  # the old video is found (and served)
        assert done.result.sidecar == str(root / "out" / "cat.json")
        queued = await claim(q)
        assert queued.id == "queuedjob"
        assert Path(queued.spec.input_path) == root / "state" / "spool" / "aaa.jpg"
        assert Path(queued.spec.input_path).is_file()  # the job can still run
        await q.finish(queued, JobState.done)
    finally:
        await q.close()
    # a second start has nothing left to migrate
    caplog.clear()
    q = JobQueue(root / "state", root / "out")
    await q.start()
    await q.close()
    assert not any("relative" in r.getMessage() for r in caplog.records)
    raw = sqlite3.connect(str(root / "state" / "jobs.sqlite")).execute("SELECT spec FROM jobs").fetchall()
    assert all(Path(json.loads(s)["input_path"]).is_absolute() for (s,) in raw)


async def test_an_old_relative_video_is_served_over_http_after_a_restart_elsewhere(tmp_path, monkeypatch):
    import aiohttp

    from wan22bot.config import Config, HttpConfig, PathsConfig, WatchConfig
    from wan22bot.sources.http import HttpSource

    root = tmp_path / "srv"
    q = JobQueue(root / "state", root / "out")
    await q.start()
    await q.close()
    (root / "out").mkdir()
    (root / "out" / "cat.mp4").write_bytes(b"\0\0\0\x18ftypisom-old-video")
    con = sqlite3.connect(str(root / "state" / "jobs.sqlite"))
    with con:
        _old_row(con, "donejob", "done", "state/spool/bbb.jpg", "out/cat.mp4")
    con.close()
    monkeypatch.chdir(tmp_path)  # not the folder the old daemon ran in
    cfg = Config(paths=PathsConfig(input=root / "in", output=root / "out", state=root / "state"),
                 http=HttpConfig(host="127.0.0.1", port=0), watch=WatchConfig(enabled=False))
    q = JobQueue(cfg.paths.state, cfg.paths.output)
    await q.start()
    http = HttpSource(cfg, q, None)
    await http.start()
    try:
        async with aiohttp.ClientSession() as s, s.get(f"{http.url}/api/jobs/donejob/video") as r:
            assert r.status == 200, await r.text()
            assert await r.read() == b"\0\0\0\x18ftypisom-old-video"
    finally:
        await http.stop()
        await q.close()
