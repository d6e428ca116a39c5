"""The daemon as systemd runs it: a real subprocess (tiny model) talking sd_notify to a real socket.

One run serves every test here (starting the daemon is the slow part): NOTIFY_SOCKET and
WATCHDOG_USEC as a Type=notify unit with WatchdogSec=2s gets them, INVOCATION_ID as every systemd
service gets it (journald log format), and a Discord token in the environment that must never leak.
Three photos are dropped into the watched folder, then the daemon gets SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import signal
import tempfile
import time
from pathlib import Path

import pytest

from tests.daemon.conftest import PHOTO, DaemonProc

from .notifysock import NotifySocket

pytestmark = pytest.mark.slow

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GsEcRt.wan22bot-test-token-must-not-leak"
WATCHDOG_USEC = 2_000_000
PHOTOS = ["alpha.jpg", "bravo.jpg", "charlie.jpg"]
STATUS_RE = re.compile(r"^(idle|running (?P<name>.+)); (?P<queued>\d+) queued, (?P<done>\d+) done, (?P<failed>\d+) failed$")


def _make_photo(path: Path, colour: tuple[int, int, int]) -> None:
    from PIL import Image

    img = Image.open(PHOTO).convert("RGB")
    img.paste(colour, (0, 0, 40, 40))  # distinct content: the watched folder dedupes by content
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="JPEG", quality=90)
    os.replace(tmp, path)


class Run:
    pass


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("systemd-run")
    sockdir = tempfile.mkdtemp(prefix="sdn")  # short: AF_UNIX paths are limited to 108 bytes
    sock_path = os.path.join(sockdir, "notify")
    sock = NotifySocket(sock_path).start()
    d = DaemonProc(root)
    r = Run()
    r.daemon = d
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k in ("WATCHDOG_PID", "JOURNAL_STREAM", "CREDENTIALS_DIRECTORY", "LISTEN_FDS", "LISTEN_PID"):
                mp.delenv(k, raising=False)
            d.start(env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": str(WATCHDOG_USEC),
                         "INVOCATION_ID": "5f0e3b1c2a2d4e6f8a9b0c1d2e3f4a5b", "WAN22BOT_DISCORD_TOKEN": TOKEN},
                    wait=False)
        ready = sock.wait_for(lambda g: g.fields.get("READY") == "1", 90, "READY=1")
        r.ready_t = ready.t
        d.wait_healthy()
        d.input.mkdir(exist_ok=True)
        r.dropped_t = time.monotonic()
        for i, name in enumerate(PHOTOS):
            _make_photo(d.input / name, (80 * i, 30, 200 - 60 * i))
        d.wait_for(lambda: all((d.output / f"{Path(n).stem}.json").exists() for n in PHOTOS), 120, "3 videos")
        try:  # a missing STATUS fails test_status_follows_the_queue, not every test of the module
            sock.wait_for(lambda g: g.fields.get("STATUS", "").endswith(f"0 queued, {len(PHOTOS)} done, 0 failed"),
                          10, "STATUS with every job done")
        except AssertionError:
            pass
        r.jobs = d.jobs()
        r.api_text = json.dumps(r.jobs)
        r.sidecars = "".join((d.output / f"{Path(n).stem}.json").read_text() for n in PHOTOS)
        # the watchdog is checked over at least 3 s of the daemon's life
        time.sleep(max(0.0, r.ready_t + 3.5 - time.monotonic()))
        r.term_t = time.monotonic()
        r.exit_code = d.stop(signal.SIGTERM, timeout=60)
        r.exit_t = time.monotonic()
        try:  # the daemon has exited, so its last datagram is on the socket: wait until it is read
            sock.wait_for(lambda g: g.fields.get("STOPPING") == "1", 5, "STOPPING=1")
        except AssertionError:  # its absence fails test_sigterm_sends_stopping_and_exits_0 alone
            pass
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)
        sock.close()
        os.unlink(sock_path)
        os.rmdir(sockdir)
    r.pid = d.proc.pid
    r.datagrams = sock.snapshot()
    r.log = d.log.read_text(encoding="utf-8", errors="replace")
    return r


def statuses(r, after: float = 0.0) -> list[str]:
    return [g.fields["STATUS"] for g in r.datagrams if "STATUS" in g.fields and g.t >= after]


def test_every_notification_comes_from_the_main_process(run):
    # NotifyAccess=main: systemd drops datagrams from any other process
    assert run.datagrams
    assert {g.pid for g in run.datagrams} == {run.pid}
    for g in run.datagrams:
        assert set(g.fields) <= {"READY", "STATUS", "WATCHDOG", "STOPPING", "RELOADING"}, g.raw


def test_ready_with_a_status(run):
    ready = [g for g in run.datagrams if g.fields.get("READY") == "1"]
    assert len(ready) == 1  # once; a second READY=1 only follows a reload
    assert ready[0].fields.get("STATUS") == "idle; 0 queued, 0 done, 0 failed"
    assert ready[0].t < run.dropped_t


def test_status_follows_the_queue(run):
    after = statuses(run, run.dropped_t)
    parsed = [STATUS_RE.match(s) for s in after]
    assert all(parsed), after
    assert max(int(m["queued"]) for m in parsed) >= 1, after  # depth reported while one ran, others waited
    running = {m["name"] for m in parsed if m["name"]}
    assert running and running <= set(PHOTOS), after
    done = [int(m["done"]) for m in parsed]
    assert done == sorted(done), after  # sent in order
    assert after[-1] == f"idle; 0 queued, {len(PHOTOS)} done, 0 failed"


def test_watchdog_pings_keep_coming(run):
    pings = [g.t for g in run.datagrams if g.fields.get("WATCHDOG") == "1" and g.t < run.term_t]
    # the first ping goes out with READY=1, then one every WATCHDOG_USEC/2
    assert len([t for t in pings if run.ready_t - 0.5 <= t <= run.ready_t + 3.0]) >= 2
    # never a gap systemd would kill for, not even while the three jobs ran
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert gaps and max(gaps) < WATCHDOG_USEC / 1e6, gaps
    assert pings[-1] > run.term_t - WATCHDOG_USEC / 1e6


def test_sigterm_sends_stopping_and_exits_0(run):
    assert run.exit_code == 0, run.log[-3000:]
    stopping = [g for g in run.datagrams if g.fields.get("STOPPING") == "1"]
    assert len(stopping) == 1
    assert run.term_t <= stopping[0].t
    # nothing claims readiness after stopping
    assert not [g for g in run.datagrams if g.t > stopping[0].t and g.fields.get("READY")]
    assert "stopped" in run.log


def test_journald_log_lines_carry_no_timestamps(run):
    lines = [ln for ln in run.log.splitlines() if ln.strip()]
    stamped = [ln for ln in lines if re.match(r"^\s*(\d{4}-\d{2}-\d{2}|\d{1,2}:\d{2}:\d{2})", ln)]
    assert stamped == []
    ours = [ln for ln in lines if re.match(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) wan22bot[\w.]*: ", ln)]
    assert len(ours) >= 10, lines


def test_every_job_line_names_its_job(run):
    ids = {j["photo"]: j["id"] for j in run.jobs}
    assert sorted(ids) == sorted(PHOTOS)
    assert all(j["state"] == "done" for j in run.jobs)
    lines = run.log.splitlines()
    for photo in PHOTOS:
        stem = Path(photo).stem
        about = [ln for ln in lines if stem in ln]
        assert len(about) >= 3, about  # queued, started, done
        missing = [ln for ln in about if ids[photo] not in ln]
        assert missing == []
        for word in ("queued", "started", "done"):
            assert any(word in ln for ln in about), (word, about)
    # a line that speaks of a job by id speaks of one of these jobs
    for jid in re.findall(r"\bjob ([0-9a-f]{6,})", run.log):
        assert jid in ids.values(), jid


def test_the_token_never_appears(run):
    assert TOKEN not in run.log
    assert TOKEN.split(".")[-1] not in run.log
    assert TOKEN not in run.api_text
    assert TOKEN not in run.sidecars
    assert not any(TOKEN.encode() in g.raw for g in run.datagrams)
