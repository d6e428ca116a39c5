"""User values in log lines cannot forge a line: ids from URLs, file names with newlines or ESC."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import pytest
from yarl import URL

from wan22bot import logsafe
from wan22bot.jobs import JobOptions, JobSpec

from .helpers import png_bytes

FORGED = "INFO wan22bot.sources.http: forged"


@pytest.fixture
def log_text(caplog):
    """The daemon's log chain (record factory + SafeFormatter, as `setup_logging` installs them),
    writing to a string; returns a function giving what was written so far."""
    caplog.set_level(logging.INFO)
    before = logging.getLogRecordFactory()
    logsafe.install()
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logsafe.SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    yield buf.getvalue
    root.removeHandler(handler)
    logging.setLogRecordFactory(before)


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


async def test_job_id_from_the_url_is_escaped_in_the_access_log(make_server, log_text):
    srv = await make_server()
    evil = "ab%0A" + FORGED.replace(" ", "%20") + "%1B[2J%0D%7F%C2%85"
    async with srv.session.get(URL(srv.url(f"/api/jobs/{evil}"), encoded=True)) as r:
        assert r.status == 404
    async with srv.session.delete(URL(srv.url(f"/api/jobs/{evil}/"), encoded=True)) as r:
        assert r.status in (404, 405)
    text = log_text()
    assert not any(line.startswith("INFO wan22bot.sources.http: forged") for line in text.splitlines())
    hits = lines_with(text, "/api/jobs/ab")
    assert len(hits) == 2, text  # one line per request, whole
    for line in hits:
        assert "\\n" + FORGED + "\\x1b[2J\\r\\x7f\\x85" in line and "\x1b" not in line


async def test_file_name_with_newline_and_esc_is_one_log_line(queue, log_text):
    name = "cat\n" + FORGED + "\x1b[31m.png"
    spec = JobSpec(source="watch", input_path="", original_name=name, name="cat", options=JobOptions(),
                   user=None, reply={})
    job, _ = await queue.submit(spec, png_bytes(), suffix=".png")
    hits = lines_with(log_text(), f"job {job.id}: queued from watch")
    assert len(hits) == 1 and hits[0].endswith("(cat\\n" + FORGED + "\\x1b[31m.png -> cat.mp4)")
    assert not any(line.startswith("INFO wan22bot.sources.http: forged") for line in log_text().splitlines())


def test_tracebacks_keep_their_lines_but_cannot_start_one(log_text):
    log = logging.getLogger("wan22bot.test")
    try:
        raise ValueError("bad name a\n" + FORGED + "\x1b[0m")
    except ValueError:
        log.exception("job %s failed", "x\ny")
    text = log_text()
    first, *rest = text.rstrip("\n").split("\n")
    assert first == "ERROR wan22bot.test: job x\\ny failed"
    assert rest[0] == "Traceback (most recent call last):"
    assert all(line.startswith("  ") for line in rest[1:]) and "\x1b" not in text


def test_safe_escapes_every_control_character():
    assert logsafe.safe("a\x00b\tc\rd\ne\x1bf\x7fg\x9fh\u2028i") == "a\\x00b\\tc\\rd\\ne\\x1bf\\x7fg\\x9fh\\u2028i"
    assert logsafe.safe("plain ünïcode / path.png") == "plain ünïcode / path.png"


def test_the_cli_logging_setup_installs_the_escaping():
    """What `wan22bot run` (and every command) sets up, in a fresh process: one line per record."""
    code = ("import logging, sys; from wan22bot.cli import setup_logging; setup_logging(False); "
            "logging.getLogger('wan22bot.sources.http').info('http: job %s: cancel requested', "
            "'ab\\n" + FORGED + "\\x1b[2J')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "JOURNAL_STREAM": "1:1"})  # the journald format: no timestamps
    assert r.returncode == 0, r.stderr
    assert r.stderr == ("INFO wan22bot.sources.http: http: job ab\\n" + FORGED + "\\x1b[2J: cancel requested\n")
