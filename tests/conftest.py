"""Fixtures every test folder may use."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_generator():
    """The built-in tiny model (random weights, seed 0) on the CPU, built and loaded once for the
    whole run: building it is most of what a short render costs, and the tests that render (core,
    watch, Discord, HTTP) only need a loaded one."""
    from wan22bot.config import ModelConfig
    from wan22bot.engine.generator import TwoPassGenerator

    gen = TwoPassGenerator(ModelConfig(kind="tiny", device="cpu"))
    gen.load()
    return gen
