"""End to end: the daemon as a subprocess, photos in, videos out, crashes and full disks survived."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from wan22bot.video import probe_mp4

from .conftest import PHOTO

pytestmark = pytest.mark.slow


def _make_photo(path: Path, colour: tuple[int, int, int]) -> None:
    from PIL import Image

    img = Image.open(PHOTO).convert("RGB")
    img.paste(colour, (0, 0, 40, 40))  # distinct content per photo (dedupe is by content)
    img.save(path, quality=90)


def _broken_set(folder: Path) -> dict[str, str]:
    """name -> a word its error file must contain."""
    (folder / "notes.jpg").write_text("this is text, not a photo")
    (folder / "empty.png").write_bytes(b"")
    good = PHOTO.read_bytes()
    (folder / "half.jpg").write_bytes(good[: len(good) // 2])
    from PIL import Image

    Image.new("1", (20000, 20000)).save(folder / "huge.png")  # 400 MP, a few KB compressed
    return {"notes.jpg": "not an image", "empty.png": "empty", "half.jpg": "truncated", "huge.png": "megapixels"}


def test_valid_and_broken_photos_together_then_a_config_reload(daemon_factory):
    d = daemon_factory().start()
    d.input.mkdir(exist_ok=True)
    broken = _broken_set(d.input)
    names = ["one.jpg", "two words.jpg", "café ☕.jpg", "-dash.jpg"]
    for i, n in enumerate(names):
        _make_photo(d.input / n, (40 * i, 200, 10))
    # every valid photo becomes an MP4 + sidecar; every broken one lands in failed/ with its reason
    d.wait_for(lambda: all((d.output / f"{Path(n).stem}.mp4").exists() and
                           (d.output / f"{Path(n).stem}.json").exists() for n in names),
               what="all videos")
    for n in names:
        info = probe_mp4(d.output / f"{Path(n).stem}.mp4")
        assert info.frames == 5 and round(info.fps) == 16 and (info.width, info.height) == (64, 96)
        side = json.loads((d.output / f"{Path(n).stem}.json").read_text())
        assert side["timings"]["pass1"] > 0 and side["timings"]["pass2"] > 0
    failed = d.input / "failed"
    d.wait_for(lambda: all((failed / f"{n}.error.txt").exists() for n in broken), what="error files")
    for n, word in broken.items():
        assert (failed / n).exists()
        text = (failed / f"{n}.error.txt").read_text()
        assert word in text.lower(), (n, text)
    # the daemon is still up and serving
    assert d.get("/healthz")[0] == 200
    _sighup_reloads_config_without_dropping_the_queue(d)


def _sighup_reloads_config_without_dropping_the_queue(d) -> None:
    """On the same daemon (one start fewer for the suite): SIGHUP re-reads the config, a bad one
    is refused and logged, and photos are still taken afterwards."""
    assert d.proc is not None
    text = d.config.read_text().replace("settle_seconds = 0.3", "settle_seconds = 0.5")
    d.config.write_text(text)
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for(lambda: "config reloaded" in d.log.read_text(), what="reload log line")
    d.config.write_text(text.replace("settle_seconds = 0.5", "settle_seconds = -1"))
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for(lambda: "config not reloaded" in d.log.read_text(), what="bad reload refused")
    assert "watch.settle_seconds" in d.log.read_text()
    shutil.copy(PHOTO, d.input / "after.jpg")
    d.wait_for(lambda: (d.output / "after.mp4").exists(), what="video after reload")
    assert d.stop() == 0


def test_kill9_mid_job_then_restart_finishes_each_job_exactly_once(daemon_factory, tmp_path):
    # 49 frames keeps each job running long enough to be killed in the middle of it (it is killed
    # during the first job, so the length costs little)
    d = daemon_factory(frames=49).start()
    d.input.mkdir(exist_ok=True)
    for i in range(3):
        _make_photo(d.input / f"p{i}.jpg", (90 * i, 10, 10))
    # every photo accepted (journaled) and one of them mid-generation
    d.wait_for(lambda: len(d.jobs()) == 3, what="3 accepted jobs")
    running = d.wait_for(lambda: [j for j in d.jobs() if j["state"] == "running"], what="a running job")
    victim = running[0]["id"]
    d.kill9()
    accepted = {j["id"] for j in _journal_ids(d.state)}
    assert len(accepted) == 3
    assert victim in accepted
    # The restart renders at 5 frames: the crash recovery is the subject, not the render length
    # (frame counts come from the config at render time).
    d2 = daemon_factory(frames=5, root=tmp_path)
    d2.start()
    d2.wait_for(lambda: len([j for j in d2.jobs() if j["state"] == "done"]) == 3, timeout=180, what="3 done")
    jobs = {j["id"]: j for j in d2.jobs()}
    assert set(jobs) == accepted  # nothing lost, nothing duplicated
    assert jobs[victim]["attempts"] == 2  # re-queued once after the crash
    mp4s = sorted(p.name for p in d2.output.glob("*.mp4"))
    assert mp4s == ["p0.mp4", "p1.mp4", "p2.mp4"]  # exactly once: no p0-2.mp4 duplicates
    assert sorted(p.name for p in (d2.input / "processed").iterdir()) == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert d2.stop() == 0


def _journal_ids(state: Path) -> list[dict]:
    import sqlite3

    db = sqlite3.connect(state / "jobs.sqlite")
    try:
        return [{"id": r[0]} for r in db.execute("SELECT id FROM jobs")]
    finally:
        db.close()


def _multipart(photo: bytes, name: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_fifty_concurrent_uploads_none_lost(daemon_factory):
    d = daemon_factory().start()
    photo = PHOTO.read_bytes()
    results: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def upload(i: int) -> None:
        body, ctype = _multipart(photo, f"up{i}.jpg")
        req = urllib.request.Request(f"http://127.0.0.1:{d.port}/api/jobs", data=body, method="POST",
                                     headers={"Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                out = (r.status, json.loads(r.read()))
        except urllib.error.HTTPError as exc:
            out = (exc.code, json.loads(exc.read() or b"{}"))
        with lock:
            results.append(out)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 50
    codes = [c for c, _ in results]
    assert set(codes) <= {202, 503}, codes  # accepted, or clearly refused (queue full)
    refused = [b for c, b in results if c == 503]
    # clearly refused: the queue is full, or too many uploads are being received at once
    assert all("full" in b.get("error", "") or "uploads are already being received" in b.get("error", "")
               for b in refused), refused
    accepted_ids = {b["id"] for c, b in results if c == 202}
    assert accepted_ids and len(accepted_ids) == codes.count(202)
    journal = {j["id"] for j in d.jobs()}
    assert accepted_ids == journal  # every accepted upload is a job; no refused one is
    # Acceptance is the subject, not fifty renders: the first two are rendered for real, the rest
    # cancelled while queued; every accepted job must still reach a final state.
    order = sorted(d.jobs(), key=lambda j: j["created"])
    for job in order[2:]:
        req = urllib.request.Request(f"http://127.0.0.1:{d.port}/api/jobs/{job['id']}", method="DELETE")
        try:
            urllib.request.urlopen(req, timeout=30).close()
        except urllib.error.HTTPError as exc:
            assert exc.code == 409, (exc.code, job)  # it started (or finished) meanwhile
    d.wait_for(lambda: all(j["state"] in ("done", "cancelled") for j in d.jobs()), timeout=240,
               what="every upload done or cancelled")
    final = d.jobs()
    assert {j["id"] for j in final} == accepted_ids
    done = [j for j in final if j["state"] == "done"]
    assert len(done) >= 2
    assert sorted(p.name for p in d.output.glob("*.mp4")) == sorted(f"{Path(j['output']).name}" for j in done)
    assert d.stop() == 0


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def test_full_output_disk_fails_clearly_and_recovers(daemon_factory, tmp_path):
    out = tmp_path / "out"
    if not _mount_tmpfs(out, "8k"):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); the full-disk path is untested")
    try:
        (out / "filler").write_bytes(b"\0" * 4096)  # leave no room for an MP4
        d = daemon_factory().start()
        d.input.mkdir(exist_ok=True)
        _make_photo(d.input / "first.jpg", (1, 2, 3))
        failed = d.input / "failed"
        d.wait_for(lambda: (failed / "first.jpg.error.txt").exists(), what="disk-full error")
        assert "no space" in (failed / "first.jpg.error.txt").read_text()
        assert not list(out.glob("*.part")) and not list(out.glob(".*.part"))  # no half-written files
        assert d.get("/healthz")[0] == 200  # the daemon and its queue survive
        # space comes back: the next photo works
        subprocess.run(["mount", "-o", "remount,size=4m", str(out)], check=True)
        _make_photo(d.input / "second.jpg", (9, 9, 9))
        d.wait_for(lambda: (out / "second.mp4").exists() and (out / "second.json").exists(), what="second video")
        states = sorted(j["state"] for j in d.jobs())
        assert states == ["done", "failed"]
        assert d.stop() == 0
    finally:
        subprocess.run(["umount", "-l", str(out)], capture_output=True)


def test_sigterm_checkpoints_running_job_and_exits_zero(daemon_factory, tmp_path):
    d = daemon_factory(frames=49).start()  # long enough to be stopped mid-job
    d.input.mkdir(exist_ok=True)
    _make_photo(d.input / "long.jpg", (5, 5, 5))
    d.wait_for(lambda: [j for j in d.jobs() if j["state"] == "running"], what="running")
    t0 = time.time()
    assert d.stop(signal.SIGTERM, timeout=60) == 0
    assert time.time() - t0 < 60
    assert "checkpointed" in d.log.read_text()
    ids = _journal_ids(d.state)
    assert len(ids) == 1
    d2 = daemon_factory(frames=5, root=tmp_path).start()  # the checkpoint is the subject, not 49 frames
    d2.wait_for(lambda: [j for j in d2.jobs() if j["state"] == "done"], timeout=180, what="done after restart")
    job = d2.jobs()[0]
    assert job["attempts"] == 1  # a clean shutdown is not the job's fault
    assert (d2.output / "long.mp4").exists()
    assert d2.stop() == 0
