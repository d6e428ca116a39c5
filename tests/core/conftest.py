"""Fixtures for the core tests: one loaded tiny generator shared by the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest

from wan22bot.engine.generator import GenerationRequest, TwoPassGenerator

from .helpers import EXAMPLE_PHOTO, CliBatch, small_photo

SMALL_W, SMALL_H = 64, 96
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(session, config, items):
    """Within tests/core, run the tests that wait on CLI subprocesses last.

    The subprocesses are started when the first core test runs (see `_cli_early`), so they work
    while the in-process tests run instead of being waited on first. Other folders keep their order.
    """
    slots = [i for i, it in enumerate(items) if Path(str(it.path)).resolve().is_relative_to(HERE)]
    core = [items[i] for i in slots]
    uses_cli = [it for it in core if "cli" in getattr(it, "fixturenames", ())]
    rest = [it for it in core if "cli" not in getattr(it, "fixturenames", ())]
    for i, it in zip(slots, rest + uses_cli):
        items[i] = it


@pytest.fixture(scope="session")
def tiny_gen(tiny_generator) -> TwoPassGenerator:
    """The built-in tiny model (random weights, seed 0) on the CPU, loaded once (tests/conftest.py)."""
    return tiny_generator


@pytest.fixture(scope="session")
def photo():
    return small_photo(SMALL_W, SMALL_H)


def small_request(photo, **kw) -> GenerationRequest:
    """A GenerationRequest with small, fast defaults (64x96, 5 frames, the fast preset's settings)."""
    args = dict(image=photo, width=SMALL_W, height=SMALL_H, frames=5, prompt="a red kite over the sea",
                negative_prompt="blurry", steps=4, switch_step=2, cfg=1.0, shift=5.0, seed=1234)
    args.update(kw)
    return GenerationRequest(**args)


CLI_SMALL_CONFIG = """
[paths]
input = "in"
output = "videos"
state = "state"
[model]
kind = "tiny"
device = "cpu"
[generation]
width = 64
height = 96
"""


@pytest.fixture(scope="session")
def cli(tmp_path_factory):
    """Every slow `python -m wan22bot` run of the core tests, started together and awaited by name.

    Layout of `cli.dir`: small.toml (tiny model, 64x96), out.mp4 (+ .json) from `generate`, bad
    photos, bad configs, and an empty folder where `check` runs on the built-in defaults.
    """
    d = tmp_path_factory.mktemp("cli")
    logs = d / "logs"
    logs.mkdir()
    (d / "small.toml").write_text(CLI_SMALL_CONFIG, encoding="utf-8")
    (d / "notes.jpg").write_bytes(b"shopping list: milk, eggs\n")
    (d / "empty.jpg").write_bytes(b"")
    (d / "real-model.toml").write_text('[model]\nkind = "wan2.2-i2v-a14b"\npath = "models/Wan2.2-I2V-A14B-Diffusers"\n',
                                       encoding="utf-8")
    (d / "bad.toml").write_text("[generation]\nframes = 50\n[watch]\nsetle_seconds = 2\n", encoding="utf-8")
    empty = d / "empty-cwd"
    empty.mkdir()
    small = str(d / "small.toml")

    batch = CliBatch(logs, d)
    batch.start("generate", "generate", str(EXAMPLE_PHOTO), "-o", str(d / "out.mp4"), "--seed", "5", "--frames", "9",
                "--quiet", "-c", small)
    batch.start("photo-text", "generate", str(d / "notes.jpg"), "-o", str(d / "notes.mp4"), "--frames", "5",
                "--quiet", "-c", small)
    batch.start("photo-empty", "generate", str(d / "empty.jpg"), "-o", str(d / "empty.mp4"), "--frames", "5",
                "--quiet", "-c", small)
    batch.start("check-defaults", "check", cwd=empty)
    batch.start("check-missing-model", "check", "-c", str(d / "real-model.toml"), cwd=d)
    batch.start("config-bad", "check", "-c", str(d / "bad.toml"), cwd=d)
    yield batch
    batch.close()


@pytest.fixture(scope="session", autouse=True)
def _cli_early(request):
    """Start the CLI runs with the first core test, but only when a selected test needs them."""
    if any("cli" in getattr(it, "fixturenames", ()) for it in request.session.items):
        request.getfixturevalue("cli")
