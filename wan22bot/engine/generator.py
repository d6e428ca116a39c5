"""The two-pass Wan 2.2 image-to-video generator.

It uses the components and helpers of diffusers' `WanImageToVideoPipeline` (prompt encoding, the
conditioning latents, the video processor) but runs the denoising loop itself, so that:
- pass 1 (steps [0, switch_step) on the high-noise expert) and pass 2 (the rest on the low-noise
  expert) are each timed on their own, device-synchronised;
- the sampler is ComfyUI's euler + "simple" schedule (see schedule.py), not diffusers' default;
- progress and cancellation happen at every step boundary.
Models load once and stay resident; `generate` may be called any number of times.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..config import ModelConfig
from ..errors import Cancelled, InputError, ModelError, OutOfMemory
from ..images import fit_photo
from .components import DTYPES, Components, load_components
from .fp8_linear import eager_while_calibrating
from .lora import FusedLora, LoraFile, read_lora
from .lora_originals import expert_originals
from .model_files import lora_paths
from .schedule import make_scheduler
from .timing import StageTimer
from .vae_decode import decode_video_chunks, drive
from .vae_encode import EncodeReport, prepare_latents
from .vae_levers import apply_vae_levers, cudnn_benchmark

log = logging.getLogger(__name__)

STAGES = ("text_encode", "image_encode", "pass1", "pass2", "vae_decode")


@dataclass
class GenerationRequest:
    image: Image.Image  # RGB; fitted (cover + center crop) to width x height here
    width: int
    height: int
    frames: int
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 4
    switch_step: int = 2
    cfg: float = 1.0
    shift: float = 5.0
    seed: int = 0
    lora: bool = True
    max_sequence_length: int | None = None

    def validate(self) -> None:
        from ..config import check_frames, check_size

        for key, v in (("width", self.width), ("height", self.height)):
            try:
                check_size(v)
            except ValueError as exc:
                raise InputError(f"{key} {v}: {exc}") from None
        try:
            check_frames(self.frames)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if not 0 <= self.switch_step <= self.steps:
            raise InputError(f"switch_step must be between 0 and steps ({self.steps}), got {self.switch_step}")


@dataclass
class Progress:
    stage: str  # one of STAGES, or "interpolate" / "encode" further down the line
    step: int = 0  # steps done within this pass (1-based after a step), or 0
    steps: int = 0  # steps in this pass
    total_step: int = 0
    total_steps: int = 0


@dataclass
class GenerationOutput:
    frames: torch.Tensor | None  # uint8 (F, H, W, 3) on the engine's device; None when streamed to a sink
    timings: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    width: int = 0
    height: int = 0


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]
FrameSink = Callable[[torch.Tensor], None]  # takes each decoded uint8 (f, H, W, 3) chunk, in order


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"model.device is '{name}' but no CUDA device is visible (install a CUDA build of torch, or set device = \"cpu\")")
    return dev


def resolve_weights(setting: str, device: torch.device) -> str:
    """`auto` -> fp8 where the GPU multiplies in fp8 (half the memory, faster), else bf16."""
    if setting != "auto":
        return setting
    from .fp8_linear import fp8_matmul_supported

    return "fp8" if fp8_matmul_supported(device) else "bf16"


def resolve_compile(setting, device: torch.device) -> bool:
    """`auto` -> compile on CUDA (measured faster there), not on the CPU (compiling costs more
    than it saves for the tiny model)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


class TwoPassGenerator:
    def __init__(self, cfg: ModelConfig, components_factory=None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        # bf16/fp16 matmuls on the CPU are slow and not what anyone benchmarks; CPU runs are fp32.
        self.dtype = DTYPES[cfg.dtype] if self.device.type == "cuda" else torch.float32
        self.weights = resolve_weights(cfg.weights, self.device)  # "auto" decided for this device
        self.compile = resolve_compile(cfg.compile, self.device)
        self.components: Components | None = None
        self.pipe = None
        self.loras: dict[str, FusedLora] = {}  # expert key -> its LoRA, switchable exactly
        self.lora_fused = False
        self.components_factory = components_factory
        self.memory_mode = "resident"
        self.swaps: dict = {}
        self.attention: dict = {}  # "high"/"low" -> AttentionChoice, set at load
        self.last_timer: StageTimer | None = None  # the last render's stages (peak memory per stage)
        self.last_encode: EncodeReport | None = None  # what the last render's image encode skipped
        # where calibrated static fp8 scales are kept (engine/fp8_scales.py); the renderer sets it
        # beside the compile cache; None: not kept
        self.scales_dir: Path | None = None
        self._scale_keys: dict[str, str | None] = {}  # expert key -> its fp8 scales' key now
        self._context_digest: str | None = None  # of the text encoder and VAE, once per load
        self._lock = threading.Lock()  # one generation at a time per process

    # ---------------------------------------------------------------- lifecycle
    @property
    def loaded(self) -> bool:
        return self.pipe is not None

    def load(self) -> None:
        if self.loaded:
            return
        from diffusers import WanImageToVideoPipeline

        from .attention import apply_attention_backend
        from .fp8_linear import convert_to_fp8
        from .memory import PinnedSwap, activation_bytes, choose_mode, device_free_bytes, module_bytes

        t0 = time.perf_counter()
        comps = (self.components_factory or load_components)(self.cfg, self.device, self.dtype)
        lora_files: dict[str, tuple[LoraFile, float]] = {}
        lora_high, lora_low = lora_paths(self.cfg)  # explicit keys, else the ComfyUI folder's LoRAs
        for key, path, strength in (("transformer", lora_high, self.cfg.lora_high_strength),
                                    ("transformer_2", lora_low, self.cfg.lora_low_strength)):
            if path is not None:
                lora_files[key] = (read_lora(path), strength)
        # Taking a LoRA out recomputes the patched tensors from their originals: by default re-read
        # from the expert's single file (lora_originals.py), else held as a host copy. Components
        # may offer their own source instead: `comps.originals` maps "transformer" / "transformer_2"
        # to `fn(diffusers parameter name, dtype) -> tensor as loaded, or None` (it may be filled
        # while an expert's builder runs; it is read after the build).
        originals = getattr(comps, "originals", None)
        self.loras = {}
        cuda = self.device.type == "cuda"
        # Components may hold builders instead of modules, so a 32 GB card never has to hold two
        # bf16 experts at once: each is built, fused, quantised and (in swap mode) parked in turn.
        expert_bytes = (module_bytes(comps.transformer) if isinstance(comps.transformer, torch.nn.Module)
                        else A14B_EXPERT_BYTES)
        text_bytes = (module_bytes(comps.text_encoder) if isinstance(comps.text_encoder, torch.nn.Module)
                      else A14B_TEXT_BYTES)
        if self.weights == "fp8":
            expert_bytes //= 2
        free = device_free_bytes(self.device) if cuda else 1 << 62
        work = activation_bytes(comps.default_width, comps.default_height, comps.default_frames)
        # On a CPU there is nothing to save, but an explicit mode still runs its code path (tests).
        self.memory_mode = (choose_mode(self.cfg.memory, free, self.cfg.reserve_vram_gb, expert_bytes, text_bytes, work)
                            if cuda or self.cfg.memory != "auto" else "resident")
        self.swaps = {}
        scaling = self.cfg.fp8_scaling
        if self.memory_mode == "offload" and scaling != "rowwise":
            # diffusers' streamed group offload brings every buffer back from the copy it took when
            # offload was set up, which would undo a calibrated input scale
            scaling = "rowwise"
        comps.text_encoder = cast_for_compute(_built(comps.text_encoder), self.dtype).to(self.device)
        if self.memory_mode in ("swap", "offload"):
            self.swaps["text_encoder"] = PinnedSwap(comps.text_encoder, self.device)
        for key in ("transformer", "transformer_2"):
            model = cast_for_compute(_built(getattr(comps, key)), self.dtype).to(self.device)
            setattr(comps, key, model)
            if key in lora_files:
                lora, strength = lora_files[key]
                source = originals.get(key) if originals is not None else None
                if source is None and self.components_factory is None:
                    source = expert_originals(self.cfg, key)
                fl = FusedLora(model, lora, strength, device=self.device, original=source)
                fl.set(True)
                self.loras[key] = fl
                log.info("fused LoRA (strength %g) into %s: %s; originals for taking it out: %s", strength, key,
                         fl.report.render(), f"host copy, {fl.kept_bytes / 2**30:.2f} GiB" if fl.kept_bytes
                         else "re-read from the model file")
            if self.weights == "fp8":
                if scaling != self.cfg.fp8_scaling:
                    log.info("%s: fp8 scaling rowwise instead of %s under memory = offload", key, self.cfg.fp8_scaling)
                n = convert_to_fp8(model, scaling=scaling, fast_accum=self.cfg.fp8_fast_accum)
                log.info("%s: %d linear layers stored in fp8%s", key, n,
                         ", fast accumulation" if self.cfg.fp8_fast_accum else "")
            if self.memory_mode == "swap":
                self.swaps[key] = PinnedSwap(model, self.device)
            elif self.memory_mode == "offload":
                model.to("cpu")
                model.enable_group_offload(onload_device=self.device, offload_type="block_level",
                                           num_blocks_per_group=1, use_stream=cuda)
        self.lora_fused = bool(self.loras)
        comps.vae = cast_for_compute(comps.vae, self.dtype).to(self.device)
        channels_last = self.cfg.vae_channels_last
        if channels_last == "auto":
            channels_last = self.device.type == "cuda"
        fast_decode = self.cfg.vae_fast_decode
        if fast_decode == "auto":
            fast_decode = self.device.type == "cuda"
        levers = apply_vae_levers(comps.vae, channels_last=channels_last, compile=self.cfg.vae_compile,
                                  fast_decode=fast_decode)
        if self.cfg.vae_cudnn_benchmark:
            levers.append("cuDNN autotuning")
        if levers:
            log.info("VAE levers: %s", ", ".join(levers))
        self.components = comps
        high = apply_attention_backend(comps.transformer, self.cfg.attention_high, self.device, compiled=self.compile)
        low = apply_attention_backend(comps.transformer_2, self.cfg.attention_low, self.device,
                                      choice=high if self.cfg.attention_high == "auto" else None,
                                      compiled=self.compile)
        self.attention = {"high": high, "low": low}
        from . import qk_prep

        for key, choice in (("transformer", high), ("transformer_2", low)):
            use, why = qk_prep.wanted(self.cfg.qk_prep, choice.backend, self.device, dtype=self.dtype)
            if use:
                qk_prep.install(getattr(comps, key), device=self.device)  # swap/offload park it on the CPU
            log.info("%s: Q/K prep %s (%s)", key, "triton" if use else "compiled", why)
        from . import fused_block

        for key in ("transformer", "transformer_2"):
            model = getattr(comps, key)
            use, why = fused_block.wanted(self.cfg.block_kernels, model, self.device, scaling, self.weights,
                                          dtype=self.dtype)
            if use:
                fused_block.install(model)
            log.info("%s: block kernels %s (%s)", key, "triton" if use else "compiled", why)
        log.info("attention: high-noise expert %s; low-noise expert %s", high.describe(), low.describe())
        self.pipe = WanImageToVideoPipeline(
            tokenizer=comps.tokenizer,
            text_encoder=comps.text_encoder,
            vae=comps.vae,
            scheduler=make_scheduler(5.0),
            transformer=comps.transformer,
            transformer_2=comps.transformer_2,
            boundary_ratio=0.9,
        )
        self.pipe.set_progress_bar_config(disable=True)
        if self.compile:
            from torch import _dynamo

            from .compile_tuning import apply_compile_tuning

            apply_compile_tuning(self.cfg.compile_tuning)
            # 25/49/81/161 frames each compile once; keep them all.
            _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
            comps.transformer.compile_repeated_blocks(fullgraph=True)
            comps.transformer_2.compile_repeated_blocks(fullgraph=True)
        self._context_digest = None
        self._restore_scales()
        log.info("model loaded in %.1f s: %s on %s (%s, weights %s, memory %s)", time.perf_counter() - t0,
                 comps.description, self.device, str(self.dtype).removeprefix("torch."), self.weights,
                 self.memory_mode)

    def _bring(self, key: str) -> float:
        sw = self.swaps.get(key)
        return sw.load() if sw else 0.0

    def _drop(self, key: str) -> None:
        sw = self.swaps.get(key)
        if sw:
            sw.evict()

    def unload(self) -> None:
        self.pipe = None
        self.components = None
        self.swaps = {}
        self.loras = {}
        self.lora_fused = False
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _scale_settings(self, key: str) -> str:
        """What, besides the weights, shapes the activations the static scales are taken from."""
        from .. import __version__

        from . import fp8_scales

        if self._context_digest is None:  # the text encoder and the VAE feed every expert's layers
            comps = self.components
            self._context_digest = " ".join(fp8_scales.tensor_digest(m)[:16] for m in (comps.text_encoder, comps.vae))
        choice = self.attention.get("high" if key == "transformer" else "low")
        return (f"wan22bot {__version__}; {key}; dtype {self.dtype}; attention "
                f"{choice.backend if choice else None}; fast accumulation {self.cfg.fp8_fast_accum}; "
                f"text encoder and VAE {self._context_digest}")

    def _restore_scales(self) -> None:
        """Key each expert's fp8 scales as its weights are now, and take back any kept under it."""
        from . import fp8_scales

        self._scale_keys = {}
        if self.scales_dir is None or not self.cfg.keep_fp8_scales or self.components is None:
            return
        for key in ("transformer", "transformer_2"):
            model = getattr(self.components, key)
            self._scale_keys[key] = skey = fp8_scales.fingerprint(model, self._scale_settings(key))
            if skey is None:
                continue
            n = fp8_scales.restore(model, self.scales_dir, skey)
            log.info("%s: fp8 input scales %s", key,
                     f"taken back for {n} layers ({skey})" if n else "calibrate on the next job")

    def _save_scales(self) -> None:
        from . import fp8_scales

        for key, skey in self._scale_keys.items():
            if skey is not None and self.scales_dir is not None:
                path = fp8_scales.save(getattr(self.components, key), self.scales_dir, skey)
                if path is not None:
                    log.info("%s: fp8 input scales kept in %s", key, path)

    def _set_lora(self, on: bool) -> None:
        """Fuse (or take back out) the configured LoRAs. A no-op when none are configured.

        Each patched tensor is recomputed from its original value (never by subtracting), so the
        weights, and a seed's video, do not depend on the presets of earlier jobs. fp8 experts get
        the restored (or re-fused) weight quantised again exactly as at load."""
        if on == self.lora_fused or not self.loras:
            self.lora_fused = on and bool(self.loras)
            return
        for key, fl in self.loras.items():
            # swap mode: write into the host copy the expert is brought in from, not a GPU copy that
            # the next swap would drop
            self._drop(key)
            fl.set(on)
            log.info("%s LoRA %s %s %s", "fused" if on else "took out", fl.lora.path.name,
                     "into" if on else "of", key)
        self.lora_fused = on
        # Other weights upstream change every layer's input, not only the patched layers': all of
        # them calibrate again on the next job, unless scales kept for these weights come back.
        from .fp8_scales import static_layers

        for key in self.loras:
            for _, lin in static_layers(getattr(self.components, key)):
                lin.reset_calibration()
        self._restore_scales()

    @property
    def defaults(self) -> tuple[int, int, int]:
        """(width, height, frames) the loaded model is made for."""
        if self.components is None:
            from .components import Components  # noqa: F401

            if self.cfg.kind == "tiny":
                from .tiny import TINY_FRAMES, TINY_HEIGHT, TINY_WIDTH

                return TINY_WIDTH, TINY_HEIGHT, TINY_FRAMES
            return 832, 1216, 81
        c = self.components
        return c.default_width, c.default_height, c.default_frames

    # ---------------------------------------------------------------- generation
    def generate(self, req: GenerationRequest, progress: ProgressFn | None = None,
                 should_cancel: CancelFn | None = None, sink: FrameSink | None = None) -> GenerationOutput:
        req.validate()
        with self._lock:
            self.load()
            try:
                return self._generate(req, progress or (lambda p: None), should_cancel or (lambda: False), sink)
            except torch.OutOfMemoryError:
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                from .memory import oom_advice

                timer = getattr(self, "last_timer", None)
                raise OutOfMemory(oom_advice(timer.current if timer else None, self.memory_mode, self.weights,
                                             req.width, req.height, req.frames)) from None

    @torch.no_grad()
    def _generate(self, req: GenerationRequest, progress: ProgressFn, should_cancel: CancelFn,
                  sink: FrameSink | None = None) -> GenerationOutput:
        pipe, comps, dev = self.pipe, self.components, self.device
        assert pipe is not None and comps is not None
        self._set_lora(req.lora)
        timer = self.last_timer = StageTimer(dev)
        H, W, F = req.height, req.width, req.frames
        cfg_on = req.cfg > 1.0
        msl = req.max_sequence_length or comps.max_sequence_length

        with timer.stage("swap"):
            self._bring("text_encoder")
        with timer.stage("text_encode"):
            progress(Progress("text_encode"))
            prompt_embeds, negative_embeds = pipe.encode_prompt(
                prompt=req.prompt,
                negative_prompt=req.negative_prompt if cfg_on else None,
                do_classifier_free_guidance=cfg_on,
                max_sequence_length=msl,
                device=dev,
                dtype=self.dtype,
            )

        with timer.stage("swap"):
            self._drop("text_encoder")
        with timer.stage("image_encode"):
            progress(Progress("image_encode"))
            image = fit_photo(req.image, W, H)
            pixels = pipe.video_processor.preprocess(image, height=H, width=W).to(dev, torch.float32)
            # Noise is drawn on the CPU from the seed (as ComfyUI does), so a seed gives the same
            # video on any device.
            shape = (1, 16, (F - 1) // 4 + 1, H // 8, W // 8)
            noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(req.seed), dtype=torch.float32)
            with cudnn_benchmark(self.cfg.vae_cudnn_benchmark):
                (latents, condition), self.last_encode = prepare_latents(
                    pipe, pixels, 1, 16, H, W, F, torch.float32, dev, None, latents=noise.to(dev),
                    fast=self.cfg.fast_image_encode,
                )
            log.debug("image encode: %s", self.last_encode.describe())
            condition = condition.to(self.dtype)

        scheduler = make_scheduler(req.shift)
        scheduler.set_timesteps(req.steps, device=dev)
        timesteps = scheduler.timesteps
        passes = (
            ("pass1", "transformer", comps.transformer, range(0, req.switch_step)),
            ("pass2", "transformer_2", comps.transformer_2, range(req.switch_step, req.steps)),
        )
        for stage, key, model, indices in passes:
            if len(indices) and self.swaps:
                # one expert on the GPU at a time: the other one leaves before this one arrives
                with timer.stage("swap"):
                    self._drop("transformer_2" if key == "transformer" else "transformer")
                    self._bring(key)
            with timer.stage(stage):
                for k, i in enumerate(indices):
                    if should_cancel():
                        raise Cancelled(f"cancelled before step {i + 1} of {req.steps}")
                    t = timesteps[i]
                    x = torch.cat([latents.to(self.dtype), condition], dim=1)
                    with eager_while_calibrating(model, self.compile) as eager:
                        if eager:
                            log.info("%s: calibrating its fp8 input scales in this step, uncompiled", key)
                        v = model(hidden_states=x, timestep=t.expand(1), encoder_hidden_states=prompt_embeds,
                                  return_dict=False)[0]
                    if cfg_on:
                        v_neg = model(hidden_states=x, timestep=t.expand(1), encoder_hidden_states=negative_embeds,
                                      return_dict=False)[0]
                        v = v_neg + req.cfg * (v - v_neg)
                    latents = scheduler.step(v.float(), t, latents, return_dict=False)[0]
                    progress(Progress(stage, k + 1, len(indices), i + 1, req.steps))

        self._save_scales()  # the first job after a load or a LoRA switch has calibrated them
        if self.swaps:
            # The decoder's working memory (11 GiB at 81 frames) must not sit on top of an expert
            # on a 32 GB card; the expert comes back in ~0.3 s at the next job's pass.
            with timer.stage("swap"):
                self._drop("transformer")
                self._drop("transformer_2")
        if should_cancel():
            raise Cancelled("cancelled before decoding")
        if sink is not None:
            # Streamed: each chunk goes on (RIFE, colour conversion, encoder) while the next decodes;
            # vae_decode counts the decoder alone.
            progress(Progress("vae_decode"))
            timer.seconds["vae_decode"] = drive(self.decode_chunks(latents), sink, dev)
            frames = None
        else:
            with timer.stage("vae_decode"):
                progress(Progress("vae_decode"))
                frames = self.decode(latents)
        return GenerationOutput(frames=frames, timings=dict(timer.seconds), seed=req.seed, width=W, height=H)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> uint8 frames (F, H, W, 3) on the device, rounded like the video processor."""
        return torch.cat(list(self.decode_chunks(latents)))

    def decode_chunks(self, latents: torch.Tensor) -> Iterator[torch.Tensor]:
        """As decode, one latent frame's worth at a time (1 frame, then 4 per latent frame)."""
        vae = self.components.vae  # type: ignore[union-attr]
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean, device=latents.device).view(1, z, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, device=latents.device).view(1, z, 1, 1, 1)
        lat = (latents.float() * std + mean).to(vae.dtype)
        chunks = decode_video_chunks(vae, lat)
        try:
            while True:
                # autotuning (when on) only while the decoder runs, not while the consumer does RIFE
                with cudnn_benchmark(self.cfg.vae_cudnn_benchmark):
                    video = next(chunks, None)  # (1, 3, f, H, W) in [-1, 1]
                if video is None:
                    return
                video = ((video[0].float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
                yield video.permute(1, 2, 3, 0).contiguous()
        finally:
            chunks.close()  # a consumer that stopped early leaves the decoder's cache clean now


A14B_EXPERT_BYTES = 14_289_000_000 * 2
A14B_TEXT_BYTES = 6_730_000_000 * 2


def _built(x):
    """A component or a zero-argument builder of one."""
    return x if isinstance(x, torch.nn.Module) else x()


def cast_for_compute(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast to `dtype` but keep the modules diffusers marks as fp32-only (norms, time embedding).

    Tensor by tensor: casting everything to `dtype` first and the kept modules back to fp32 after
    would round fp32 values from the file (norms, modulation tables) through bf16 on the way.
    """
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    kept: set[int] = set()
    if dtype != torch.float32 and keep:
        for name, mod in model.named_modules():
            if any(k in name.split(".") for k in keep):
                kept.update(id(t) for t in list(mod.parameters()) + list(mod.buffers()))
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if not t.is_floating_point():
                continue
            want = torch.float32 if id(t) in kept else dtype
            if t.dtype != want:
                t.data = t.data.to(want)
    return model
    model.to(dtype)
    if dtype != torch.float32 and keep:
        for name, mod in model.named_modules():
            if any(k in name.split(".") for k in keep):
                mod.float()
    return model
