"""Small builders shared by the core tests: photos, LoRA files, subprocess runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_PHOTO = REPO / "examples" / "photo.jpg"

# Original Wan module names (what LightX2V / ComfyUI LoRA files use) -> diffusers module names,
# with the (out, in) shape of the weight in the tiny transformer (inner dim 24, ffn 32).
WAN_TO_DIFFUSERS = {
    "self_attn.q": ("attn1.to_q", (24, 24)),
    "self_attn.k": ("attn1.to_k", (24, 24)),
    "self_attn.v": ("attn1.to_v", (24, 24)),
    "self_attn.o": ("attn1.to_out.0", (24, 24)),
    "cross_attn.q": ("attn2.to_q", (24, 24)),
    "cross_attn.k": ("attn2.to_k", (24, 24)),
    "cross_attn.v": ("attn2.to_v", (24, 24)),
    "cross_attn.o": ("attn2.to_out.0", (24, 24)),
    "ffn.0": ("ffn.net.0.proj", (32, 24)),
    "ffn.2": ("ffn.net.2", (24, 32)),
}


def lora_tensors(*, blocks=(0, 1), modules=tuple(WAN_TO_DIFFUSERS), rank: int = 4, alpha: float = 2.0,
                 seed: int = 0, shapes: dict[str, tuple[int, int]] | None = None) -> dict[str, torch.Tensor]:
    """A LoRA state dict in the LightX2V / ComfyUI layout (`diffusion_model.` prefix, down/up/alpha)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for i in blocks:
        for wan in modules:
            out_f, in_f = (shapes or {}).get(wan, WAN_TO_DIFFUSERS[wan][1])
            base = f"diffusion_model.blocks.{i}.{wan}"
            sd[f"{base}.lora_down.weight"] = torch.randn(rank, in_f, generator=g)
            sd[f"{base}.lora_up.weight"] = torch.randn(out_f, rank, generator=g)
            sd[f"{base}.alpha"] = torch.tensor(alpha)
    return sd


def write_lora(path: Path, sd: dict[str, torch.Tensor]) -> Path:
    save_file({k: v.clone().contiguous() for k, v in sd.items()}, str(path))
    return path


def expected_delta(sd: dict[str, torch.Tensor], block: int, wan: str) -> torch.Tensor:
    """alpha/rank * up @ down for one module, computed independently of wan22bot (in float64)."""
    base = f"diffusion_model.blocks.{block}.{wan}"
    down = sd[f"{base}.lora_down.weight"].double()
    up = sd[f"{base}.lora_up.weight"].double()
    alpha = float(sd[f"{base}.alpha"])
    return (alpha / down.shape[0]) * (up @ down)


def diffusers_name(block: int, wan: str) -> str:
    return f"blocks.{block}.{WAN_TO_DIFFUSERS[wan][0]}"


def weight_of(model: torch.nn.Module, name: str) -> torch.Tensor:
    return dict(model.named_modules())[name].weight.detach().clone()


def three_band_image(width: int, height: int, colours=((255, 0, 0), (0, 255, 0), (0, 0, 255)),
                     vertical: bool = True) -> Image.Image:
    """Three equal bands: left/middle/right when `vertical`, else top/middle/bottom."""
    arr = np.zeros((height, width, 3), np.uint8)
    n = width if vertical else height
    for k, c in enumerate(colours):
        sl = slice(k * n // 3, (k + 1) * n // 3)
        if vertical:
            arr[:, sl] = c
        else:
            arr[sl, :] = c
    return Image.fromarray(arr, "RGB")


def small_photo(width: int = 64, height: int = 96, seed: int = 0) -> Image.Image:
    """A smooth but non-uniform RGB photo (gradients plus a block), deterministic."""
    yy, xx = np.mgrid[0:height, 0:width]
    arr = np.stack([
        (xx * 255 // max(1, width - 1)),
        (yy * 255 // max(1, height - 1)),
        ((xx + yy + seed * 37) % 256),
    ], axis=-1).astype(np.uint8)
    arr[height // 4: height // 2, width // 4: width // 2] = (250, 240, 30)
    return Image.fromarray(arr, "RGB")


def cli_env(threads: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("WAN22BOT_HTTP_TOKEN", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """`python -m wan22bot ARGS` in a fresh process, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "wan22bot", *args], cwd=str(cwd or REPO), env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


class CliBatch:
    """Several `python -m wan22bot` runs started at once (they are mostly import time), collected by name."""

    def __init__(self, logs: Path, workdir: Path):
        self.logs = logs
        self.dir = workdir  # where the runs' inputs and outputs live
        self._procs: dict[str, tuple[subprocess.Popen, Path, Path, list[str]]] = {}
        self._done: dict[str, subprocess.CompletedProcess] = {}

    def start(self, name: str, *args: str, cwd: Path | None = None) -> None:
        out, err = self.logs / f"{name}.out", self.logs / f"{name}.err"
        cmd = [sys.executable, "-m", "wan22bot", *args]
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(cmd, cwd=str(cwd or REPO), env=cli_env(threads=1), stdout=fo, stderr=fe,
                                    stdin=subprocess.DEVNULL)
        self._procs[name] = (proc, out, err, cmd)

    def result(self, name: str, timeout: float = 300) -> subprocess.CompletedProcess:
        if name not in self._done:
            proc, out, err, cmd = self._procs[name]
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
            self._done[name] = subprocess.CompletedProcess(cmd, rc, out.read_text(errors="replace"),
                                                           err.read_text(errors="replace"))
        return self._done[name]

    def close(self) -> None:
        for proc, *_ in self._procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
