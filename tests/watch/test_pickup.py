"""Which files are taken, and when: settling, start-up scan, ignored names, odd names, symlinks."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading

from wan22bot.jobs import JobState

from .conftest import SETTLE, make_config, photo_bytes, quiet, stalling_writer, wait_for


async def test_photo_is_taken_only_after_it_settles(rig):
    await rig.start(rescan_seconds=60)  # the observer, not the rescan, must find it
    data = photo_bytes(1, size=(256, 192), noise=True)
    path = rig.input / "slow copy.jpg"
    done = threading.Event()
    early: set[str] = set()

    async def copied():
        if not done.is_set():
            if await rig.jobs():
                early.add("queued")
            if rig.listing(rig.failed):
                early.add("judged")
        return done.is_set()

    # a slow copy: three chunks, each pause shorter than settle_seconds
    writer = stalling_writer(path, data, chunks=3, pause=SETTLE * 0.6, done=done)
    await wait_for(copied, 20, "the copy to finish")
    t_complete = asyncio.get_running_loop().time()
    writer.join(5)
    assert early == set(), f"a half-written photo was {early}"
    jobs = await rig.wait_jobs(1, JobState.done)
    waited = asyncio.get_running_loop().time() - t_complete
    assert waited >= SETTLE * 0.9, f"taken {waited:.2f} s after the last write; settle is {SETTLE} s"
    assert len(jobs) == 1
    assert jobs[0].content_hash == hashlib.sha256(data).hexdigest()  # the whole file, never a prefix
    await rig.wait_file(rig.processed / "slow copy.jpg")
    assert not rig.failed.exists() or rig.listing(rig.failed) == set()


async def test_photos_already_there_at_start_are_taken(rig):
    rig.drop("a.jpg", seed=1)
    rig.drop("b.PNG", photo_bytes(2, fmt="PNG"))
    await rig.start()
    jobs = await rig.wait_jobs(2, JobState.done)
    assert sorted(j.spec.original_name for j in jobs) == ["a.jpg", "b.PNG"]
    await rig.wait_file(rig.processed / "a.jpg")
    await rig.wait_file(rig.processed / "b.PNG")
    assert rig.listing(rig.input) == set()
    assert {"a.mp4", "a.json", "b.mp4", "b.json"} <= rig.listing(rig.output)


async def test_hidden_partial_and_subfolder_files_are_ignored(rig):
    good = photo_bytes(7)
    rig.processed.mkdir(parents=True)
    (rig.processed / "old.jpg").write_bytes(photo_bytes(8))  # processed/ lives inside input: not rescanned
    (rig.input / "sub").mkdir()
    (rig.input / "sub" / "inner.jpg").write_bytes(photo_bytes(9))
    await rig.start()
    ignored = [".hidden.jpg", "cat.jpg.part", "dog.jpg.crdownload", "eel.tmp", "fox.jpg.tmp", "notes.txt",
               "gnu.jpg.toml", "~$lock.jpg"]
    for i, name in enumerate(ignored):
        rig.drop(name, photo_bytes(20 + i))
    rig.drop("control.jpg", good)
    await rig.wait_jobs(1, JobState.done)
    await rig.wait_file(rig.processed / "control.jpg")
    await quiet(rig)
    jobs = await rig.jobs()
    assert [j.spec.original_name for j in jobs] == ["control.jpg"]
    assert set(ignored) <= rig.listing(rig.input)
    assert rig.listing(rig.failed) == set()
    assert (rig.processed / "old.jpg").exists() and (rig.input / "sub" / "inner.jpg").exists()

    # A browser finishing its download renames cat.jpg.part to cat.jpg: that one is taken.
    os.rename(rig.input / "cat.jpg.part", rig.input / "cat.jpg")
    jobs = await rig.wait_jobs(2, JobState.done)
    assert jobs[-1].spec.original_name == "cat.jpg"


async def test_names_with_spaces_unicode_dashes_and_dots(rig):
    names = ["with spaces.jpg", "café ☕.jpg", "-rf.jpg", "--help.jpeg", "my.holiday.jpg"]
    await rig.start()
    for i, n in enumerate(names):
        rig.drop(n, seed=100 + i)
    jobs = await rig.wait_jobs(len(names), JobState.done)
    by_name = {j.spec.original_name: j for j in jobs}
    assert set(by_name) == set(names)
    for n in names:
        await rig.wait_file(rig.processed / n)
        assert by_name[n].result and os.path.exists(by_name[n].result.output)
    # Output names are the stems (the queue's safe_stem decides about dashes and symbols).
    assert by_name["with spaces.jpg"].spec.name == "with spaces"
    assert by_name["my.holiday.jpg"].spec.name == "my.holiday"
    assert by_name["café ☕.jpg"].spec.name.startswith("café")
    assert by_name["-rf.jpg"].spec.name.lstrip("-") == "rf"
    assert by_name["--help.jpeg"].spec.name.lstrip("-") == "help"
    assert by_name["-rf.jpg"].spec.reply["path"] == str(rig.input / "-rf.jpg")
    assert rig.listing(rig.input) == set()
    for p in rig.output.iterdir():
        assert p.parent == rig.output


async def test_symlink_pointing_outside_is_ignored(rig, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="wan22bot.sources.watch")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    secret = outside / "secret.jpg"
    secret.write_bytes(photo_bytes(42))
    os.symlink(secret, rig.input / "link.jpg")
    os.symlink(outside, rig.input / "dirlink.jpg")
    await rig.start()
    rig.drop("control.jpg", seed=43)
    await rig.wait_jobs(1, JobState.done)
    await rig.wait_file(rig.processed / "control.jpg")
    await quiet(rig)
    assert [j.spec.original_name for j in await rig.jobs()] == ["control.jpg"]
    assert (rig.input / "link.jpg").is_symlink() and secret.exists()
    assert rig.listing(rig.failed) == set()
    assert rig.listing(rig.processed) == {"control.jpg"}
    msgs = [r.getMessage() for r in caplog.records if "link.jpg" in r.getMessage()]
    assert msgs and "outside" in msgs[0]
    assert len(msgs) == 1, "the ignored link is logged once, not on every rescan"


async def test_symlink_inside_the_input_folder_is_followed(rig):
    real = rig.input / "real.jpg"
    real.write_bytes(photo_bytes(44))
    os.symlink(real, rig.input / "alias.jpg")
    await rig.start(worker=False)
    # Two names in the folder: two photos, two videos (only the same file seen twice is merged).
    jobs = await rig.wait_jobs(2)
    assert sorted(j.spec.original_name for j in jobs) == ["alias.jpg", "real.jpg"]
    assert len({j.content_hash for j in jobs}) == 1
    rig.worker.start()
    await wait_for(lambda: rig.listing(rig.input) == set(), 5, "input to empty")
    assert len(await rig.jobs()) == 2
    assert rig.listing(rig.processed) == {"real.jpg", "alias.jpg"}
    assert {"real.mp4", "alias.mp4"} <= rig.listing(rig.output)


async def test_rescan_finds_photos_without_the_observer(rig):
    await rig.start(observe=False, rescan_seconds=0.4)
    assert rig.source._observer is None
    rig.drop("polled.jpg", seed=50)
    await rig.wait_jobs(1, JobState.done, timeout=5)
    await rig.wait_file(rig.processed / "polled.jpg")


async def test_reload_picks_up_new_extensions_and_settle(rig, tmp_path):
    await rig.start()
    rig.drop("later.jfif", seed=60)
    await quiet(rig)
    assert await rig.jobs() == []
    cfg = make_config(tmp_path, extensions=[".JFIF", "jpg"], settle_seconds=0.1)
    rig.source.reload(cfg)
    assert rig.source.settle_seconds == 0.1
    jobs = await rig.wait_jobs(1, JobState.done)
    assert jobs[0].spec.original_name == "later.jfif"
    await rig.wait_file(rig.processed / "later.jfif")
