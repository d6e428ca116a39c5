from __future__ import annotations

import asyncio
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .fakehub import FakeFile, FakeHub, start

WAN22 = "Comfy-Org/Wan_2.2_ComfyUI_Repackaged"
WAN21 = "Comfy-Org/Wan_2.1_ComfyUI_repackaged"
STAGING = ".wan22bot-fetch"


@dataclass(frozen=True)
class Seed:
    """One of the six files, as the tests know it independently of wan22bot's own table."""

    repo_id: str
    path_in_repo: str

    @property
    def name(self) -> str:
        return self.path_in_repo.rsplit("/", 1)[-1]

    @property
    def relpath(self) -> str:
        return self.path_in_repo.removeprefix("split_files/")


# Where ComfyUI's Wan 2.2 14B image-to-video template downloads them from.
SEED = [
    Seed(WAN22, "split_files/diffusion_models/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"),
    Seed(WAN22, "split_files/diffusion_models/wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"),
    Seed(WAN21, "split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
    Seed(WAN22, "split_files/vae/wan_2.1_vae.safetensors"),
    Seed(WAN22, "split_files/loras/wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors"),
    Seed(WAN22, "split_files/loras/wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors"),
]

# Six tiny stand-ins for the six real files, at the real repositories' paths. Sizes differ so a
# file landing in the wrong place would show; the first is big enough to be interrupted halfway.
SIZES = [256 * 1024, 96 * 1024, 64 * 1024, 16 * 1024, 24 * 1024, 24 * 1024]


def content_for(i: int) -> bytes:
    return random.Random(1000 + i).randbytes(SIZES[i])


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str


@pytest.fixture
async def hub():
    h = FakeHub()
    for i, f in enumerate(SEED):
        h.add(f.repo_id, f.path_in_repo, content_for(i))
    runner, url = await start(h)
    h.url = url
    try:
        yield h
    finally:
        h.release.set()
        await runner.cleanup()


def served(hub: FakeHub, i: int) -> FakeFile:
    return hub.files[(SEED[i].repo_id, SEED[i].path_in_repo)]


def partial_of(hub: FakeHub, dest: Path, i: int) -> Path:
    """Where fetch-models keeps file i while it is incomplete: named after the sha256 it must end with."""
    seed = SEED[i]
    subfolder = seed.relpath.rsplit("/", 1)[0]
    return dest / subfolder / STAGING / f"{seed.name}.{served(hub, i).sha256[:16]}.incomplete"


def child_env(endpoint: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HF_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update({
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(tmp_path / "hf-home"),  # no saved token, no cache shared with the machine
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    })
    return env


async def spawn(endpoint: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    """`python -m wan22bot fetch-models ARGS` in its own process, pointed at `endpoint`."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wan22bot", "fetch-models", *args,
        cwd=tmp_path, env={**child_env(endpoint, tmp_path), **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def fetch(endpoint: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                timeout: float = 90) -> Run:
    proc = await spawn(endpoint, tmp_path, *args, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return Run(proc.returncode, out.decode(), err.decode())
