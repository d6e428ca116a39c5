"""One job from photo to MP4 + sidecar: the part shared by `wan22bot generate` and the worker.

photo -> checks -> settings (config defaults, preset, per-job options) -> TwoPassGenerator ->
optional RIFE -> MP4 -> sidecar JSON. Blocking; the daemon calls it from its GPU thread.
Everything after pass 2 is streamed (tail.py): decoded chunks are doubled, converted and encoded
by a background thread while the rest decodes.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import Config, check_model_frames
from .engine.generator import CancelFn, GenerationRequest, Progress, ProgressFn, TwoPassGenerator
from .engine.presets import PRESETS
from .errors import DiskFull, InputError, ModelError
from .images import load_photo, target_size
from .jobs import TIMING_KEYS, JobOptions, JobResult
from .background_encoder import BackgroundEncoder
from .tail import StreamingTail
from .fsutil import atomic_write
from .video import EncodeSettings, Mp4Writer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """Everything that decides the video, after defaults, preset and per-job options are merged."""

    preset: str
    width: int
    height: int
    frames: int
    fps: int
    steps: int
    switch_step: int
    cfg: float
    shift: float
    seed: int
    prompt: str
    negative_prompt: str
    lora: bool
    interpolate: bool


def new_seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


def resolve_settings(cfg: Config, options: JobOptions, photo_size: tuple[int, int],
                     model_defaults: tuple[int, int, int]) -> Settings:
    g = cfg.generation
    preset_name = options.preset or g.preset
    preset = PRESETS[preset_name]
    dw, dh, dframes = model_defaults
    width, height = target_size(*photo_size, g.width or dw, g.height or dh, g.orientation)
    steps = options.steps or g.steps or preset.steps
    switch = g.switch_step if g.switch_step is not None else preset.switch_step
    if options.steps and g.switch_step is None:
        switch = max(0, round(steps * preset.switch_step / preset.steps))
    if switch > steps:
        raise InputError(f"switch_step ({switch}) is larger than steps ({steps})")
    seed = options.seed if options.seed is not None else g.seed
    if seed is None or seed < 0:
        seed = new_seed()
    interpolate = options.interpolate if options.interpolate is not None else cfg.interpolation.enabled
    frames = options.frames or g.frames or dframes
    try:  # a job queued before a model change, or a watch-folder companion file, may ask for more
        check_model_frames(frames, cfg.model.kind)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return Settings(
        preset=preset_name,
        width=width,
        height=height,
        frames=frames,
        fps=g.fps,
        steps=steps,
        switch_step=switch,
        cfg=g.cfg if g.cfg is not None else preset.cfg,
        shift=g.shift,
        seed=seed,
        prompt=options.prompt if options.prompt is not None else g.prompt,
        negative_prompt=options.negative_prompt if options.negative_prompt is not None else g.negative_prompt,
        lora=preset.lora,
        interpolate=interpolate,
    )


def versions(device: torch.device) -> dict[str, str]:
    import diffusers
    import transformers

    out = {
        "wan22bot": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["cuda"] = torch.version.cuda or ""
    return out


class Renderer:
    """Owns the resident generator (and RIFE) and turns a photo into an MP4 with its sidecar."""

    def __init__(self, cfg: Config, generator: TwoPassGenerator | None = None):
        self.cfg = cfg
        self.generator = generator or TwoPassGenerator(cfg.model)
        self._interpolator = None

    @property
    def loaded(self) -> bool:
        return self.generator.loaded

    def load(self) -> float:
        """Load the models (no-op when loaded); returns the seconds it took."""
        t0 = time.perf_counter()
        if self.generator.compile and not self.generator.loaded:
            from .engine.compile_cache import use_compile_cache

            cache = use_compile_cache(self.cfg.model.compile_cache or self.cfg.paths.state / "compile-cache")
            self.generator.scales_dir = cache / "fp8-scales"
        self.generator.load()
        return time.perf_counter() - t0

    def unload(self) -> None:
        self.generator.unload()
        self._interpolator = None

    def interpolator(self):
        if self._interpolator is None:
            from .interpolate import Interpolator

            ic = self.cfg.interpolation
            if not Path(ic.weights).is_file():
                raise ModelError(f"interpolation needs RIFE weights at {ic.weights}; run `wan22bot fetch-rife` first")
            interp = Interpolator(ic.weights, device=str(self.generator.device), dtype=ic.dtype, batch=ic.batch)
            interp.load()
            self._interpolator = interp
        return self._interpolator

    def render(self, photo: Path, name: str, output_dir: Path, options: JobOptions | None = None, *,
               progress: ProgressFn | None = None, should_cancel: CancelFn | None = None,
               meta: dict[str, Any] | None = None, photo_name: str | None = None) -> JobResult:
        options = options or JobOptions()
        progress = progress or (lambda p: None)
        g = self.cfg.generation
        # A bad photo is refused before minutes of model loading, not after.
        t_photo = time.perf_counter()
        image = load_photo(photo, photo_name or Path(photo).name, max_megapixels=g.max_megapixels,
                           max_bytes=int(g.max_file_mb * 2**20))
        s = resolve_settings(self.cfg, options, image.size, self.generator.defaults)
        interp = self.interpolator() if s.interpolate else None  # fail before 2 minutes of GPU work
        before_load = time.perf_counter() - t_photo
        load_seconds = self.load() if not self.loaded else 0.0  # reported apart: warm runs are what's compared
        t_start = time.perf_counter() - before_load
        output_dir = Path(output_dir)
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DiskFull(f"cannot create the output folder {output_dir}: {exc.strerror}") from None
        mp4 = output_dir / f"{name}.mp4"
        fps = s.fps * 2 if interp is not None else s.fps
        # Opened before the passes: a forced encoder that cannot open fails now, not after them.
        writer = Mp4Writer(mp4, s.width, s.height, fps,
                           EncodeSettings(encoder=g.encoder, crf=g.crf, preset=g.encoder_preset,
                                          threads=g.encoder_threads))
        encoder = BackgroundEncoder(writer)
        marks: dict[str, float] = {}

        def on_progress(p: Progress) -> None:
            if p.stage == "vae_decode":
                marks.setdefault("tail_start", time.perf_counter())  # pass 2 has just ended
            progress(p)

        tail = StreamingTail(encoder, self.generator.device,
                             doubler=interp.stream(total_frames=s.frames) if interp is not None else None,
                             should_cancel=should_cancel, on_stage=lambda stage: progress(Progress(stage)))
        try:
            out = self.generator.generate(
                GenerationRequest(image=image, width=s.width, height=s.height, frames=s.frames, prompt=s.prompt,
                                  negative_prompt=s.negative_prompt, steps=s.steps, switch_step=s.switch_step,
                                  cfg=s.cfg, shift=s.shift, seed=s.seed, lora=s.lora),
                on_progress, should_cancel, sink=tail)
            size = tail.finish()
        except BaseException:
            encoder.abort()  # the encoder thread is joined and the partial MP4 removed
            raise
        timings = {k: 0.0 for k in TIMING_KEYS}
        timings.update(out.timings)
        timings["interpolate"] = tail.interpolate
        timings["yuv"] = tail.yuv
        timings["encode"] = encoder.busy
        timings["tail"] = time.perf_counter() - marks.get("tail_start", time.perf_counter())
        timings["total"] = time.perf_counter() - t_start
        if load_seconds:
            timings["model_load"] = load_seconds
        result = JobResult(output=str(mp4), sidecar=str(output_dir / f"{name}.json"), timings=timings,
                           frames=tail.frames_out, fps=fps, width=s.width, height=s.height, seed=s.seed,
                           bytes=size)
        sidecar = {
            "name": name,
            "photo": photo_name or Path(photo).name,
            "settings": asdict(s),
            "seed": s.seed,
            "frames": result.frames,
            "fps": fps,
            "duration_seconds": round(result.frames / fps, 4),
            "model": self.generator.components.description if self.generator.components else self.cfg.model.kind,
            "timings": {k: round(v, 4) for k, v in timings.items()},
            "encoder": writer.codec,
            "versions": versions(self.generator.device),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(meta or {}),
        }
        try:
            write_json_atomic(Path(result.sidecar), sidecar)
        except DiskFull:
            mp4.unlink(missing_ok=True)
            raise
        return result


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
