"""The TOML configuration, validated into pydantic models at start.

Every section forbids unknown keys so a typo ("setle_seconds") is an error naming the key instead
of a silently ignored setting. `load_config` turns pydantic's errors into one `ConfigError` whose
message names the key, the value given and what is allowed.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .validation import problems, show

# The negative prompt the Wan 2.x reference code ships; used by the `quality` preset (CFG > 1).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

# "fp8" is cuDNN fp8 attention and "fa3-fp8" FlashAttention-3 fp8: both opt-in, outside the accuracy guard.
# "sage-warp" is SageAttention 2 with per-warp Q/K quantisation on sm90; "sage-fused" the same kernel fed
# by our own quantisation inside the compiled blocks (engine/sage_prequant.py).
AttentionBackend = Literal["auto", "sdpa", "cudnn", "flash", "efficient", "math", "sage", "sage-warp", "sage-fused",
                           "fa3", "fa3-fp8", "fp8"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info) -> Any:
        # pydantic's lax mode would read `fps = true` as 1 fps; a boolean is never a number here
        if isinstance(v, bool):
            ann = cls.model_fields[info.field_name].annotation
            args = set(getattr(ann, "__args__", ())) or {ann}
            if args & {int, float} and bool not in args:
                raise ValueError("must be a number, not true/false")
        return v


class PathsConfig(_Section):
    input: Path = Path("./input")
    output: Path = Path("./output")
    state: Path = Path("./state")
    processed: Path | None = None  # default: <input>/processed
    failed: Path | None = None  # default: <input>/failed

    @property
    def processed_dir(self) -> Path:
        return self.processed or self.input / "processed"

    @property
    def failed_dir(self) -> Path:
        return self.failed or self.input / "failed"


class ModelConfig(_Section):
    kind: Literal["tiny", "wan2.2-i2v-a14b"] = "tiny"
    # ComfyUI's models/ folder: the seed's six files are found there by their standard names
    # (engine/model_files.py has the lookup order). Nothing else is needed.
    comfyui: Path | None = None
    # A Diffusers-format folder (transformer/, transformer_2/, text_encoder/, tokenizer/, vae/).
    path: Path | None = None
    # Single files (ComfyUI's); each wins over the comfyui folder and the Diffusers folder.
    high_noise: Path | None = None
    low_noise: Path | None = None
    text_encoder: Path | None = None
    vae: Path | None = None
    lora_high: Path | None = None
    lora_low: Path | None = None
    lora_high_strength: float = Field(1.0, ge=-4.0, le=4.0)
    lora_low_strength: float = Field(1.0, ge=-4.0, le=4.0)
    device: str = "auto"
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    # Weight storage: bf16 as loaded, or fp8 (e4m3) after the LoRA is fused. "auto": fp8 on a GPU
    # with fp8 matmuls (compute capability 8.9+: RTX 40xx/50xx, H100/H200), bf16 elsewhere.
    weights: Literal["auto", "bf16", "fp8"] = "auto"
    memory: Literal["auto", "resident", "swap", "offload"] = "auto"
    reserve_vram_gb: float = Field(4.0, ge=0.0, le=1024.0)
    attention_high: AttentionBackend = "auto"
    attention_low: AttentionBackend = "auto"
    # Regional torch.compile of the experts' blocks; "auto": on for CUDA devices, off elsewhere.
    compile: bool | Literal["auto"] = "auto"
    # fp8 linear layers: "rowwise" scales each activation row per call (most accurate); "static" uses
    # one per-tensor input scale calibrated on the layer's first call (ComfyUI --fast style, cheapest);
    # "delayed" takes the scale from the amax of earlier calls and keeps updating it.
    fp8_scaling: Literal["rowwise", "static", "delayed"] = "static"
    # cuBLAS fp8 fast accumulation in those layers: 8.989 s against 9.121 s per 81-frame forward on an
    # H200 (1.483 against 1.528 s at 25 frames; round 4), error against stock bf16 0.0466 either way.
    fp8_fast_accum: bool = True
    # inductor's tuning of the kernels it writes for the compiled blocks (engine/compile_tuning.py):
    # "coordinate-descent" searches block sizes per kernel at compile time. Opt-in: not measured yet.
    compile_tuning: Literal["default", "coordinate-descent"] = "default"
    # How sage-fused's Q and K get their RMSNorm, RoPE and int8 step (engine/qk_prep.py): "compiled"
    # leaves them to torch.compile; "triton" runs our two Triton kernels; "auto" = triton where
    # sage-fused runs in bf16, Triton imports and the kernels pass a one-call self-check at load,
    # compiled elsewhere. H200, 81 frames: 8.894 against 8.975 s
    # per forward (25 frames: 1.454 against 1.481), error against stock bf16 0.0465 either way.
    qk_prep: Literal["auto", "triton", "compiled"] = "auto"
    # How the inputs of the blocks' fp8 matmuls are made (engine/block_kernels.py, fused_block.py):
    # "triton" runs our kernels for residual add + LayerNorm + modulation + fp8 cast and GELU + fp8
    # cast; "compiled" leaves them to torch.compile; "auto" = triton where the linear layers are fp8
    # with static scales on a CUDA GPU, the model computes in bf16, the installed diffusers' block is
    # the one mirrored and the kernels pass a one-call self-check at load; compiled elsewhere.
    block_kernels: Literal["auto", "triton", "compiled"] = "auto"
    # What torch.compile generated, kept across restarts; empty: <paths.state>/compile-cache.
    compile_cache: Path | None = None
    # Static fp8 input scales, once calibrated, kept in <compile cache>/fp8-scales under a key over
    # the weights (LoRA included) and settings, so a restart or a LoRA switch back starts calibrated
    # instead of running the calibrating graph again (engine/fp8_scales.py).
    keep_fp8_scales: bool = True
    # The image encode skips the encoder layers that have settled on the black frames after the
    # photo (engine/vae_encode.py): bit-identical to diffusers' encode, so on by default.
    fast_image_encode: bool = True
    # VAE speed levers (engine/vae_levers.py): convolution weights in channels-last order ("auto":
    # on a CUDA device, where it cut the 81-frame decode from 4.58 to 4.11 s on an H200 at the same
    # PSNR), cuDNN autotuning while the VAE runs (off: 4.34 s on its own, not measured together with
    # channels-last) and torch.compile of the decoder (off: it did not finish compiling in 210 s).
    vae_channels_last: bool | Literal["auto"] = "auto"
    vae_cudnn_benchmark: bool = False
    vae_compile: bool = False
    # The decoder's norms, SiLU, causal padding and upsampling fused into fewer memory passes
    # (engine/vae_fast_decode.py: diffusers' math, rounded once per fused group). "auto": on when
    # the VAE is on a CUDA device; a VAE it does not mirror keeps the stock decoder.
    vae_fast_decode: bool | Literal["auto"] = "auto"
    # Load at daemon start, or lazily when the first job arrives.
    load: Literal["start", "first-job"] = "start"
    seed_weights: int = 0  # the tiny model's weight seed

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        ok = v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit())
        if not ok:
            raise ValueError("must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        return v

    @model_validator(mode="after")
    def _real_needs_weights(self) -> "ModelConfig":
        if self.kind == "wan2.2-i2v-a14b":
            singles = [self.high_noise, self.low_noise, self.text_encoder, self.vae]
            if self.comfyui is None and self.path is None and not all(singles):
                raise ValueError(
                    "kind 'wan2.2-i2v-a14b' needs 'comfyui' (ComfyUI's models folder), or the four single "
                    "files 'high_noise', 'low_noise', 'text_encoder' and 'vae', or 'path' (a Diffusers-format "
                    "folder)"
                )
        return self


class GenerationConfig(_Section):
    preset: Literal["fast", "quality"] = "fast"
    # Portrait size; landscape photos get it swapped when orientation is "auto".
    # None means the model's default (832x1216 for Wan 2.2, a small size for the tiny model).
    width: int | None = None
    height: int | None = None
    orientation: Literal["auto", "fixed"] = "auto"
    frames: int | None = None
    fps: int = Field(16, ge=1, le=120)
    # None means "take it from the preset".
    steps: int | None = Field(None, ge=1, le=200)
    switch_step: int | None = Field(None, ge=0, le=200)
    cfg: float | None = Field(None, ge=0.0, le=30.0)
    shift: float = Field(5.0, gt=0.0, le=100.0)
    seed: int = Field(-1, ge=-1, le=2**63 - 1)  # -1: a new random seed per job
    prompt: str = ""
    negative_prompt: str = WAN_NEGATIVE_PROMPT
    max_sequence_length: int | None = Field(None, ge=1, le=512)
    max_megapixels: float = Field(50.0, gt=0.0, le=1000.0)
    max_file_mb: float = Field(64.0, gt=0.0, le=4096.0)
    # H.264 (libx264) settings of the MP4: lower crf = better and bigger; slower presets = smaller.
    crf: int = Field(18, ge=0, le=51)
    encoder_preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                            "slower", "veryslow"] = "fast"
    # "auto": NVENC when this PyAV has h264_nvenc and it opens on this GPU, else libx264.
    encoder: Literal["auto", "libx264", "nvenc"] = "auto"
    encoder_threads: int = Field(0, ge=0, le=256)  # libx264 frame threads; 0 = one per core

    @field_validator("width", "height")
    @classmethod
    def _mult16(cls, v: int | None) -> int | None:
        if v is not None:
            check_size(v)
        return v

    @field_validator("frames")
    @classmethod
    def _frames(cls, v: int | None) -> int | None:
        if v is not None:
            check_frames(v)
        return v


def default_rife_weights() -> Path:
    """Where `wan22bot fetch-rife` puts the RIFE weights and where interpolation looks for them by
    default: ``$WAN22BOT_CACHE``, else ``$XDG_CACHE_HOME/wan22bot``, else ``~/.cache/wan22bot``,
    then ``rife/flownet.pkl``. One place, so a fresh clone's fetch and run agree."""
    root = os.environ.get("WAN22BOT_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        # the XDG spec says a relative value is invalid and must be ignored
        base = (Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache") / "wan22bot"
    return base / "rife" / "flownet.pkl"


class InterpolationConfig(_Section):
    enabled: bool = False
    weights: Path = Field(default_factory=default_rife_weights)
    batch: int = Field(8, ge=1, le=256)
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"


class WatchConfig(_Section):
    enabled: bool = True
    settle_seconds: float = Field(2.0, ge=0.0, le=3600.0)
    poll_seconds: float = Field(0.5, gt=0.0, le=60.0)
    extensions: list[str] = [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"]


class DiscordConfig(_Section):
    enabled: bool = False
    token_env: str = "WAN22BOT_DISCORD_TOKEN"
    token_file: Path | None = None
    api_base: str = "https://discord.com/api/v10"
    gateway_url: str = "wss://gateway.discord.gg/"
    guilds: list[int] = []  # where commands are synced; empty = global
    allowed_guilds: list[int] = []  # empty = any
    allowed_channels: list[int] = []  # empty = any
    allowed_roles: list[int] = []  # empty = anyone
    admin_roles: list[int] = []
    allow_dms: bool = False
    watch_channels: list[int] = []
    respond_to_mentions: bool = False
    max_queued_per_user: int = Field(3, ge=1, le=1000)
    rate_limit_per_hour: int = Field(20, ge=1, le=100000)
    edit_interval_seconds: float = Field(3.0, ge=0.5, le=600.0)

    @field_validator("api_base", "gateway_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://", "ws://", "wss://")):
            raise ValueError("must be an http(s):// or ws(s):// URL")
        return v


class HttpConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8622, ge=0, le=65535)
    token_env: str = "WAN22BOT_HTTP_TOKEN"
    public_url: str | None = None
    max_upload_mb: float = Field(64.0, gt=0.0, le=4096.0)
    # A request body that has not fully arrived after this many seconds is dropped (408), so a
    # client sending 1 byte/s cannot hold a connection and its buffer forever.
    body_timeout_seconds: float = Field(60.0, gt=0.0, le=3600.0)
    # Uploads read at the same time; one more gets 503 with Retry-After.
    max_concurrent_uploads: int = Field(4, ge=1, le=1000)
    # Video links posted to Discord are signed and expire after this many days (no token needed).
    link_days: float = Field(7.0, gt=0.0, le=3650.0)
    # More host names the API answers to (the Host header), besides the loopback names, `host`
    # and public_url's host; others get 421, which stops DNS-rebinding pages.
    allowed_hosts: list[str] = []


class QueueConfig(_Section):
    max_length: int = Field(100, ge=1, le=100000)
    max_attempts: int = Field(3, ge=1, le=100)
    # Finished jobs' journal rows are deleted after this many days, once delivered (0 = keep forever).
    keep_finished_days: float = Field(30.0, ge=0.0)
    # No word from the GPU thread for this long while it loads or runs a job = stuck: /healthz says
    # so and the systemd watchdog pings stop, so systemd restarts the daemon.
    stall_minutes: float = Field(15.0, gt=0.0)
    # "redis": several boxes on one queue. The front keeps this journal; jobs travel to the workers
    # on a Redis stream (queue/dispatcher.py, queue/remote.py).
    backend: Literal["sqlite", "redis"] = "sqlite"
    # redis://host:port/db, or rediss://... for TLS. The password is a credential, never written here
    # (queue/redis_conn.py reads WAN22BOT_REDIS_PASSWORD or $CREDENTIALS_DIRECTORY/redis-password).
    url: str | None = None
    # Where workers PUT results; empty: http://{[http] host}:{[http] port} of the front.
    front_url: str | None = None
    redis_prefix: str = "wan22bot"  # key prefix: several installs can share one Redis
    heartbeat_seconds: float = Field(5.0, gt=0.0, le=3600.0)  # a worker re-claims its entry this often
    # An entry nobody re-claimed for this long belongs to a worker that stopped: another takes it over.
    claim_timeout_seconds: float = Field(60.0, gt=0.0, le=86400.0)
    photo_max_mb: float = Field(32.0, gt=0.0, le=4096.0)  # photos up to this size travel inside the entry
    # A folder every box mounts: the front copies photos there and entries carry the path instead.
    shared_folder: Path | None = None
    max_result_mb: float = Field(4096.0, gt=0.0, le=65536.0)  # cap of a result a worker PUTs to the front

    @field_validator("redis_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", v):
            raise ValueError("must be 1-64 letters, digits or _ . : - (it starts every Redis key name)")
        return v

    @model_validator(mode="after")
    def _redis(self) -> "QueueConfig":
        # checked here rather than per field: a field error would print the URL, password and all
        if self.url is not None:
            u = urlsplit(self.url)
            if u.scheme not in ("redis", "rediss"):
                raise ValueError("url must start with redis:// (or rediss:// for TLS), e.g. "
                                 "url = \"redis://10.0.0.5:6379/0\"")
            if u.password is not None:
                raise ValueError("url holds a password: remove it from the config file and put it in the "
                                 "credential (env WAN22BOT_REDIS_PASSWORD, or the systemd credential "
                                 "redis-password)")
        if self.backend == "redis" and not self.url:
            raise ValueError("backend = \"redis\" needs url = \"redis://host:port/db\" (the Redis every box "
                             "shares)")
        if self.front_url is not None:
            u = urlsplit(self.front_url)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ValueError("front_url must be an http:// or https:// address of the front box, e.g. "
                                 "front_url = \"http://10.0.0.5:8622\"")
            if u.password is not None or u.username is not None:
                raise ValueError("front_url holds a user or password: remove it; workers send the [http] token "
                                 "(the env named by http.token_env)")
        if self.claim_timeout_seconds <= 2 * self.heartbeat_seconds:
            raise ValueError(f"claim_timeout_seconds ({self.claim_timeout_seconds:g}) must be more than twice "
                             f"heartbeat_seconds ({self.heartbeat_seconds:g}), or a worker that is merely slow "
                             f"loses its job; raise claim_timeout_seconds above {2 * self.heartbeat_seconds:g}")
        return self


class WorkerConfig(_Section):
    # false on a front box with no GPU: it keeps the queue and the sources, workers elsewhere render
    enabled: bool = True
    # The worker's consumer name on the Redis stream; empty: "<hostname>-<6 hex of the state folder>",
    # the same across restarts, so a restarted worker resumes the entries it held.
    name: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", v):
            raise ValueError("must be 1-64 letters, digits or _ . - (it names the worker in Redis and the status)")
        return v


class SchedulerConfig(_Section):
    retention_days: float = Field(30.0, ge=0.0)  # 0 = keep forever
    disk_quota_gb: float = Field(0.0, ge=0.0)  # 0 = no quota
    idle_unload_minutes: float = Field(0.0, ge=0.0)  # 0 = never unload
    housekeeping_minutes: float = Field(60.0, gt=0.0)


# Attention heads of each model kind's experts: split mode's Ulysses degree (the device count) must
# divide them, since each device attends over whole heads. engine/tiny.py has 2; Wan 2.2 A14B 40.
ATTENTION_HEADS = {"tiny": 2, "wan2.2-i2v-a14b": 40}


class GpusConfig(_Section):
    # Empty: the one device of [model] device. Several: one worker process per device
    # ("per-device") or every device on each job ("split").
    devices: list[str] = []
    mode: Literal["per-device", "split"] = "per-device"
    # split's exchange: our Ulysses all-to-all around each expert's own kernel (runs on CPUs too),
    # or diffusers' enable_parallelism(ContextParallelConfig) with cuDNN attention (CUDA only)
    split_engine: Literal["ulysses", "diffusers"] = "ulysses"

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: list[str]) -> list[str]:
        for d in v:
            if not (d == "cpu" or (d.startswith("cuda:") and d[5:].isdigit())):
                raise ValueError(f"'{d}' is not a device: write \"cpu\" or \"cuda:N\" (N the card's index)")
        cuda = [d for d in v if d != "cpu"]
        if len(set(cuda)) != len(cuda):
            raise ValueError("a CUDA device is listed twice: give each card once")
        if cuda and len(cuda) != len(v):
            raise ValueError("cpu and cuda:N devices are mixed: list only cards, or only \"cpu\"")
        return v


class Config(_Section):
    paths: PathsConfig = PathsConfig()
    model: ModelConfig = ModelConfig()
    generation: GenerationConfig = GenerationConfig()
    interpolation: InterpolationConfig = Field(default_factory=InterpolationConfig)
    watch: WatchConfig = WatchConfig()
    discord: DiscordConfig = DiscordConfig()
    http: HttpConfig = HttpConfig()
    queue: QueueConfig = QueueConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    gpus: GpusConfig = GpusConfig()
    worker: WorkerConfig = WorkerConfig()
    # The file it was read from (None: built-in defaults).
    source: Annotated[Path | None, Field(exclude=True)] = None

    @model_validator(mode="after")
    def _frames_fit_the_model(self) -> "Config":
        n = self.generation.frames
        if n is not None and n > max_frames(self.model.kind):
            raise ValueError(f"[generation] frames = {n}: {frames_limit_sentence(self.model.kind)}; set "
                             f"generation.frames to {max_frames(self.model.kind)} or fewer")
        return self

    @model_validator(mode="after")
    def _split_fits_the_heads(self) -> "Config":
        g = self.gpus
        if len(g.devices) == 1 and g.mode == "per-device":
            # one listed device runs in-process like [model] device: the two must agree
            if self.model.device not in ("auto", g.devices[0]):
                raise ValueError(f"[gpus] devices = [\"{g.devices[0]}\"] but [model] device = \"{self.model.device}\": "
                                 "name the device in one place")
            self.model.device = g.devices[0]
        if g.mode != "split":
            return self
        n = len(g.devices)
        if g.split_engine == "diffusers" and "cpu" in g.devices:
            raise ValueError("[gpus] split_engine = \"diffusers\" needs CUDA devices (diffusers 0.42.1 builds its "
                             "device mesh with rank % accelerator count, a division by zero without one); use "
                             "split_engine = \"ulysses\" on CPUs")
        if n < 2:
            raise ValueError("[gpus] mode = \"split\" needs at least two devices: list them in gpus.devices, "
                             "or use mode = \"per-device\"")
        heads = ATTENTION_HEADS.get(self.model.kind)
        if heads is not None and heads % n:
            fits = [d for d in range(2, heads + 1) if heads % d == 0 and d <= 16]
            raise ValueError(f"[gpus] mode = \"split\" with {n} devices: the {self.model.kind} model's "
                             f"{heads} attention heads do not divide among {n}; use {fits} devices")
        return self

    @property
    def devices(self) -> list[str]:
        """The devices jobs run on: [gpus] devices, or the one [model] device."""
        return list(self.gpus.devices) or [self.model.device]


# The most frames each model kind makes. The tiny model's rotary position table has 32 temporal
# positions (rope_max_seq_len in engine/tiny.py), one per latent frame, and the VAE packs 4 frames
# per latent after the first: (32 - 1) * 4 + 1 = 125; one more latent frame is a RuntimeError deep
# in the transformer. Wan 2.2 A14B's table is far longer; 161 frames (10 s at 16 fps) is the longest
# the workflow it replaces runs, and what its memory estimates are measured for.
MAX_FRAMES = {"tiny": 125, "wan2.2-i2v-a14b": 161}


def max_frames(kind: str) -> int:
    return MAX_FRAMES.get(kind, min(MAX_FRAMES.values()))


def frames_limit_sentence(kind: str) -> str:
    return f"the {kind} model makes at most {max_frames(kind)} frames"


def check_model_frames(n: int | None, kind: str) -> None:
    """A ValueError naming the model's limit when `n` frames is more than model `kind` makes."""
    if n is not None and n > max_frames(kind):
        raise ValueError(f"frames is {n}, but {frames_limit_sentence(kind)}; ask for {max_frames(kind)} or fewer")


def check_frames(n: int) -> None:
    """Frame counts must be 4k+1 (the VAE packs 4 frames per latent after the first)."""
    top = max(MAX_FRAMES.values())
    if n < 1 or n > top or (n - 1) % 4 != 0:
        lo = max(1, ((n - 1) // 4) * 4 + 1)
        hi = lo + 4
        if n < 1:
            raise ValueError(f"frames must be 4k+1 and at least 1 (e.g. 25, 49, 81), got {n}")
        if n > top:
            raise ValueError(f"frames must be at most {top} (the most any supported model makes), got {n}")
        raise ValueError(f"frames must be 4k+1; {n} is not: the nearest valid counts are {lo} and {hi}")


def check_size(v: int) -> None:
    if v < 16 or v > 4096 or v % 16 != 0:
        lo, hi = max(16, v // 16 * 16), (v // 16 + 1) * 16
        raise ValueError(f"must be a multiple of 16 between 16 and 4096; nearest valid values are {lo} and {hi}")


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for p in problems(exc):
        if p.unknown_key:
            lines.append(f"  [{p.key}] unknown key (check the spelling; see config.toml in the README)")
            continue
        lines.append(f"  [{p.key}] = {show(p.given)}: {p.message}" if p.key else f"  {p.message}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | os.PathLike[str] | None, *, required: bool = False) -> Config:
    """Load and validate a TOML file. A missing default file gives the built-in defaults."""
    if path is None:
        path = Path("config.toml")
        required = False
    p = Path(path)
    if not p.exists():
        if required:
            raise ConfigError(f"config file {p} does not exist (pass -c PATH, or create it from the README)")
        # built-in defaults are relative to where wan22bot was started; pin them now so the
        # journal never stores a path that changes meaning with the working directory
        return resolve_paths(Config(), Path.cwd())
    try:
        raw = p.read_bytes()
        data = tomllib.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    cfg = resolve_paths(config_from_dict(data, str(p)), p.absolute().parent)
    object.__setattr__(cfg, "source", p)
    return cfg


def resolve_paths(cfg: Config, base: Path) -> Config:
    """Relative paths in the file are relative to the file's folder, not the cwd (systemd starts in /)."""

    def fix(v: Path | None) -> Path | None:
        if v is None:
            return None
        v = v.expanduser()
        return v if v.is_absolute() else (base / v)

    for section, keys in (
        (cfg.paths, ("input", "output", "state", "processed", "failed")),
        (cfg.model, ("comfyui", "path", "high_noise", "low_noise", "text_encoder", "vae", "lora_high", "lora_low")),
        (cfg.interpolation, ("weights",)),
        (cfg.discord, ("token_file",)),
        (cfg.queue, ("shared_folder",)),
    ):
        for k in keys:
            object.__setattr__(section, k, fix(getattr(section, k)))
    return cfg
