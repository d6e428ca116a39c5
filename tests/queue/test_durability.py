"""Durability: the spool folder is fsynced after a photo is accepted, the output folder after the
final renames. A power cut cannot be simulated, so os.fsync is recorded (and still called)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from wan22bot.config import Config, GenerationConfig, ModelConfig, PathsConfig
from wan22bot.errors import DiskFull
from wan22bot.jobs import JobSpec, JobState
from wan22bot.queue import JobEvent, JobQueue

from .conftest import photo_bytes, spec

PHOTO = Path(__file__).resolve().parents[2] / "examples" / "photo.jpg"


@pytest.fixture
def fsyncs(monkeypatch):
    """Every fsync'd descriptor, as (is a directory, its path), and every rename, in order."""
    seen: list[tuple[bool, str]] = []
    real = os.fsync

    def recording(fd):
        st = os.fstat(fd)
        seen.append((stat.S_ISDIR(st.st_mode), os.readlink(f"/proc/self/fd/{fd}")))
        return real(fd)

    def replacing(src, dst, **kw):
        seen.append((False, f"rename -> {os.fspath(dst)}"))
        return real_replace(src, dst, **kw)

    real_replace = os.replace
    monkeypatch.setattr(os, "fsync", recording)
    monkeypatch.setattr(os, "replace", replacing)
    return seen


async def test_accepting_a_photo_fsyncs_the_file_then_the_spool_folder(queues, fsyncs):
    q = await queues.open()
    job, _ = await q.submit(spec(), photo_bytes(1))
    spooled = Path(job.spec.input_path)
    files = [p for is_dir, p in fsyncs if not is_dir]
    dirs = [p for is_dir, p in fsyncs if is_dir]
    assert any(Path(p).parent == spooled.parent for p in files), fsyncs  # the temp file's bytes
    assert str(spooled.parent) in dirs, fsyncs  # and the rename into the spool


def test_atomic_write_replaces_whole_and_flushes_the_folder(tmp_path, fsyncs):
    from wan22bot.fsutil import atomic_write

    target = tmp_path / "side.json"
    target.write_text("old")
    atomic_write(target, "new")
    assert target.read_text() == "new"
    assert [p for p in tmp_path.iterdir()] == [target]  # no temp file left
    assert (True, str(tmp_path)) in fsyncs


def test_atomic_write_full_disk_is_disk_full_and_leaves_the_old_file(tmp_path, monkeypatch):
    from wan22bot.fsutil import atomic_write

    target = tmp_path / "side.json"
    target.write_text("old")
    real = os.fsync

    def full(fd):
        import errno

        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFull, match="no space left to write side.json"):
        atomic_write(target, "new")
    monkeypatch.setattr(os, "fsync", real)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["side.json"]


async def test_a_finished_job_fsyncs_the_output_folder_after_its_renames(tmp_path, fsyncs):
    from wan22bot.render import Renderer
    from wan22bot.worker import Worker

    cfg = Config(paths=PathsConfig(input=tmp_path / "in", output=tmp_path / "out", state=tmp_path / "state"),
                 model=ModelConfig(kind="tiny", device="cpu"),
                 generation=GenerationConfig(width=64, height=96, frames=5))
    q = JobQueue(cfg.paths.state, cfg.paths.output)
    await q.start()
    worker = Worker(cfg, q, Renderer(cfg))
    done = asyncio.Event()
    q.add_listener(lambda ev: done.set() if ev.kind in ("done", "failed") else None)
    try:
        worker.start()
        job, _ = await q.submit(JobSpec(source="cli", original_name="photo.jpg", input_path="", name=""), PHOTO)
        await asyncio.wait_for(done.wait(), 120)
        final = await q.get(job.id)
        assert final.state == JobState.done, final.error
    finally:
        await worker.stop()
        await q.close()
    out = str(cfg.paths.output)
    mp4, side = Path(final.result.output), Path(final.result.sidecar)
    assert mp4.is_file() and side.is_file()
    dir_syncs = [i for i, (is_dir, p) in enumerate(fsyncs) if is_dir and p == out]
    renames = {p.removeprefix("rename -> "): i for i, (_d, p) in enumerate(fsyncs) if p.startswith("rename -> ")}
    assert str(mp4) in renames and str(side) in renames, fsyncs
    # the output folder is flushed after both final renames
    assert dir_syncs and dir_syncs[-1] > max(renames[str(mp4)], renames[str(side)]), fsyncs
