"""`<photo>.txt` prompts and `<photo>.toml` options, and refusing bad ones and broken photos."""

from __future__ import annotations

import os
import struct
import zlib

from wan22bot.jobs import JobState

from .conftest import photo_bytes, quiet, wait_for


async def test_prompt_and_options_reach_the_job(rig):
    rig.drop("beach.jpg", seed=1)
    (rig.input / "beach.jpg.txt").write_text("\ufeff  waves crash on the rocks \n", encoding="utf-8")
    (rig.input / "beach.jpg.toml").write_text(
        'frames = 9\nseed = 42\ninterpolate = true\npreset = "quality"\nprompt = "loses to the .txt"\n')
    rig.drop("dog.jpg", seed=2)
    (rig.input / "dog.txt").write_text("a dog wags its tail", encoding="utf-8")  # stem form
    (rig.input / "dog.toml").write_text("seed = 7\n")
    rig.drop("plain.jpg", seed=3)
    await rig.start()
    jobs = {j.spec.original_name: j for j in await rig.wait_jobs(3, JobState.done)}
    beach = jobs["beach.jpg"].spec.options
    assert (beach.prompt, beach.frames, beach.seed, beach.interpolate, beach.preset) == (
        "waves crash on the rocks", 9, 42, True, "quality")
    dog = jobs["dog.jpg"].spec.options
    assert (dog.prompt, dog.seed, dog.frames) == ("a dog wags its tail", 7, None)
    assert jobs["plain.jpg"].spec.options.model_dump(exclude_none=True) == {}
    # Companions travel with their photo.
    await wait_for(lambda: rig.listing(rig.input) == set(), 5, "input to empty")
    assert rig.listing(rig.processed) == {"beach.jpg", "beach.jpg.txt", "beach.jpg.toml", "dog.jpg", "dog.txt",
                                          "dog.toml", "plain.jpg"}


async def test_stem_companion_shared_by_two_photos_stays_until_the_last(rig):
    await rig.start(worker=False)
    (rig.input / "pair.txt").write_text("shared prompt")
    rig.drop("pair.jpg", seed=4)
    rig.drop("pair.png", photo_bytes(5, fmt="PNG"))
    jobs = await rig.wait_jobs(2)
    assert [j.spec.options.prompt for j in jobs] == ["shared prompt", "shared prompt"]
    rig.worker.start()
    await wait_for(lambda: rig.listing(rig.input) == set(), 5, "input to empty")
    assert rig.listing(rig.processed) == {"pair.jpg", "pair.png", "pair.txt"}


def _error_of(rig, name: str) -> str:
    text = (rig.failed / f"{name}.error.txt").read_text(encoding="utf-8")
    assert text.endswith("\n") and text.count("\n") == 1, f"not one line: {text!r}"
    assert text.strip().endswith("."), text
    return text.strip()


async def test_bad_options_fail_the_photo_naming_the_key(rig):
    await rig.start()
    cases = {
        "frames.jpg": "frames = 50\n",
        "unknown.jpg": "fps = 30\n",
        "preset.jpg": 'preset = "ultra"\n',
        "syntax.jpg": "frames = = 3\n",
        "seed.jpg": "seed = -5\n",
    }
    for i, (name, toml) in enumerate(cases.items()):
        (rig.input / f"{name}.toml").write_text(toml)
        rig.drop(name, seed=10 + i)
    (rig.input / "latin1.jpg.txt").write_bytes("caf\xe9".encode("latin-1"))
    rig.drop("latin1.jpg", seed=20)
    await wait_for(lambda: all((rig.failed / f"{n}.error.txt").exists() for n in [*cases, "latin1.jpg"]), 10,
                   "error files")
    await quiet(rig)
    assert await rig.jobs() == []
    assert rig.listing(rig.input) == set()
    assert {*cases, *(f"{n}.toml" for n in cases)} <= rig.listing(rig.failed)
    err = {n: _error_of(rig, n) for n in [*cases, "latin1.jpg"]}
    assert "frames" in err["frames.jpg"] and "50" in err["frames.jpg"] and "49" in err["frames.jpg"]
    assert "'fps'" in err["unknown.jpg"] and "unknown key" in err["unknown.jpg"]
    assert "preset" in err["preset.jpg"] and "ultra" in err["preset.jpg"]
    assert "not valid TOML" in err["syntax.jpg"] and "syntax.jpg.toml" in err["syntax.jpg"]
    assert "seed" in err["seed.jpg"]
    assert "latin1.jpg.txt" in err["latin1.jpg"] and "UTF-8" in err["latin1.jpg"]


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk +
            struct.pack(">I", zlib.crc32(chunk)) + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


async def test_broken_photos_go_to_failed_with_one_sentence(rig, monkeypatch):
    # empty.jpg waits out the zero-byte grace before it is judged; 1 s instead of 5 keeps this fast
    monkeypatch.setattr("wan22bot.sources.watch.settle.EMPTY_GRACE_SECONDS", 1.0)
    jpeg = photo_bytes(30, size=(256, 192), noise=True)
    bad = {
        "text.jpg": b"this is a shopping list, not a photo\n",
        "empty.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) * 2 // 3],
        "huge.png": _png_header_only(20000, 20000),
        "bmp-in-disguise.gif": b"BM" + b"\0" * 10,
    }
    await rig.start()
    for name, data in bad.items():
        rig.drop(name, data)
    (rig.input / "text.jpg.txt").write_text("its prompt goes with it")
    rig.drop("fine.jpg", jpeg)
    await wait_for(lambda: all((rig.failed / f"{n}.error.txt").exists() for n in bad), 10, "error files")
    jobs = await rig.wait_jobs(1, JobState.done)
    await quiet(rig)
    assert [j.spec.original_name for j in await rig.jobs()] == ["fine.jpg"] == [j.spec.original_name for j in jobs]
    assert rig.listing(rig.input) == set()
    assert set(bad) | {"text.jpg.txt"} <= rig.listing(rig.failed)
    for name, data in bad.items():
        assert (rig.failed / name).read_bytes() == data  # moved as it was, not rewritten
    err = {n: _error_of(rig, n) for n in bad}
    assert err["text.jpg"].startswith("text.jpg is not an image")
    assert "empty" in err["empty.jpg"] and "0 bytes" in err["empty.jpg"]
    assert "truncated" in err["truncated.jpg"]
    assert "20000x20000" in err["huge.png"] and "megapixels" in err["huge.png"]
    assert err["bmp-in-disguise.gif"].startswith("bmp-in-disguise.gif")


async def test_failed_names_never_overwrite(rig):
    rig.failed.mkdir(parents=True)
    (rig.failed / "dup.jpg").write_bytes(b"earlier")
    (rig.failed / "dup.jpg.error.txt").write_text("earlier reason.\n")
    await rig.start()
    rig.drop("dup.jpg", b"not a photo either")
    await rig.wait_file(rig.failed / "dup-2.jpg.error.txt")
    assert (rig.failed / "dup.jpg").read_bytes() == b"earlier"
    assert (rig.failed / "dup.jpg.error.txt").read_text() == "earlier reason.\n"
    assert (rig.failed / "dup-2.jpg").read_bytes() == b"not a photo either"


async def test_a_companion_that_is_a_link_fails_the_photo_and_its_target_is_never_read(rig, tmp_path):
    secret = tmp_path / "elsewhere" / "hostname"
    secret.parent.mkdir()
    secret.write_text("secret-box-name\n")
    os.symlink(secret, rig.input / "host.jpg.txt")  # the prompt would be the host's name
    os.symlink(secret, rig.input / "opts.toml")  # stem form, options
    fifo = rig.input / "pipe.jpg.txt"
    os.mkfifo(fifo)  # reading it would hang the check
    await rig.start()
    for i, name in enumerate(["host.jpg", "opts.jpg", "pipe.jpg"]):
        rig.drop(name, seed=40 + i)
    rig.drop("control.jpg", seed=45)
    (rig.input / "control.jpg.txt").write_text("an ordinary prompt")
    await wait_for(lambda: all((rig.failed / f"{n}.error.txt").exists() for n in ["host.jpg", "opts.jpg", "pipe.jpg"]),
                   10, "error files")
    jobs = await rig.wait_jobs(1, JobState.done)
    assert [j.spec.original_name for j in jobs] == ["control.jpg"]
    assert jobs[0].spec.options.prompt == "an ordinary prompt"
    await quiet(rig)
    assert len(await rig.jobs()) == 1
    err = {n: _error_of(rig, n) for n in ["host.jpg", "opts.jpg", "pipe.jpg"]}
    assert "host.jpg.txt is a symbolic link" in err["host.jpg"]
    assert "opts.toml is a symbolic link" in err["opts.jpg"]
    assert "pipe.jpg.txt is not a regular file" in err["pipe.jpg"]
    for text in err.values():
        assert "secret-box-name" not in text
    # The links travel with their photo as links; their target is untouched.
    assert (rig.failed / "host.jpg.txt").is_symlink() and (rig.failed / "opts.toml").is_symlink()
    assert secret.read_text() == "secret-box-name\n"
    assert rig.listing(rig.input) == set()
