"""`wan22bot check`: is this configuration usable? Every problem with its fix; non-zero when unusable."""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config


@dataclass
class Report:
    ok: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"  ok    {m}" for m in self.ok]
        lines += [f"  warn  {m}" for m in self.warnings]
        lines += [f"  ERROR {m}" for m in self.errors]
        verdict = "usable" if not self.errors else f"NOT usable ({len(self.errors)} problem(s))"
        return "\n".join(lines + ["", f"wan22bot check: {verdict}"])


def _writable_dir(p: Path) -> str | None:
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            return f"{p} cannot be created"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} exists but is not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user"
    return None


def run_checks(cfg: Config) -> Report:
    import torch

    from ..engine.attention import available_backends
    from ..engine.model_check import check_model
    from ..engine.generator import resolve_device
    from ..errors import ModelError

    rep = Report()
    src = f" ({cfg.source})" if cfg.source else " (built-in defaults; no config file)"
    rep.ok.append(f"config is valid{src}")

    # paths
    for key in ("input", "output", "state"):
        p = getattr(cfg.paths, key)
        problem = _writable_dir(p)
        if problem:
            rep.errors.append(f"paths.{key}: {problem} (create it, or point paths.{key} elsewhere)")
        else:
            rep.ok.append(f"paths.{key} = {p}")
    out_probe = cfg.paths.output if cfg.paths.output.exists() else Path(".")
    free_gb = shutil.disk_usage(out_probe).free / 2**30
    (rep.ok if free_gb >= 2 else rep.warnings).append(f"{free_gb:.1f} GiB free where videos are written")

    # model
    m = cfg.model
    if m.kind == "tiny":
        rep.ok.append("model.kind = tiny (built-in, random weights: its videos are noise; for demos and tests)")
    # each file: what it is, its weight layout, then one small finite forward per part
    model_rep = check_model(m)
    rep.ok.extend(model_rep.ok)
    rep.warnings.extend(model_rep.warnings)
    rep.errors.extend(model_rep.errors)

    # LoRAs: per file, the tensors it patches by key kind and the keys skipped (no weights loaded)
    from ..engine.lora_check import check_loras

    lora_ok, lora_errors = check_loras(m)
    rep.ok.extend(lora_ok)
    rep.errors.extend(lora_errors)

    # device
    try:
        dev = resolve_device(m.device)
        if dev.type == "cuda":
            free, total = torch.cuda.mem_get_info(dev)
            rep.ok.append(f"device {dev}: {torch.cuda.get_device_name(dev)}, {free / 2**30:.1f} of "
                          f"{total / 2**30:.1f} GiB free")
            if m.kind != "tiny" and total / 2**30 < 30 and m.memory == "resident":
                rep.errors.append("model.memory = resident needs about 60 GiB for two bf16 experts; use 'swap' "
                                  "or 'offload' (and weights = 'fp8') on this card")
        else:
            rep.ok.append(f"device {dev} (torch {torch.__version__})")
            if m.kind != "tiny":
                rep.warnings.append("the 14B model on a CPU is impractically slow; install a CUDA build of torch")
    except ModelError as exc:
        rep.errors.append(str(exc))
        dev = torch.device("cpu")
    # [gpus]: every listed card must be visible to this process
    if len(cfg.devices) > 1:
        cards = [d for d in cfg.devices if d.startswith("cuda:")]
        count = torch.cuda.device_count() if cards else 0
        missing = [d for d in cards if int(d[5:]) >= count]
        if missing:
            rep.errors.append(f"[gpus] devices lists {', '.join(missing)}, but {count} CUDA device(s) are visible "
                              "here: list only cards that exist (nvidia-smi -L)")
        else:
            what = "each job over all of them" if cfg.gpus.mode == "split" else "a job per device at once"
            rep.ok.append(f"[gpus] mode {cfg.gpus.mode} on {', '.join(cfg.devices)}: {what}, a worker process each")

    # attention
    backends = available_backends(dev)
    for key in ("attention_high", "attention_low"):
        want = getattr(m, key)
        state = backends.get(want, "unknown")
        if state.startswith("ok"):
            rep.ok.append(f"model.{key} = {want}: {state}")
        else:
            rep.errors.append(f"model.{key} = {want}: {state} (set it to 'auto')")
    rep.ok.append("attention backends here: " + ", ".join(f"{k} ({v})" for k, v in backends.items()))

    # interpolation
    ic = cfg.interpolation
    if ic.enabled and not Path(ic.weights).is_file():
        rep.errors.append(f"interpolation.enabled is on but {ic.weights} does not exist: run `wan22bot fetch-rife`")
    elif Path(ic.weights).is_file():
        rep.ok.append(f"RIFE weights at {ic.weights}")
    else:
        rep.ok.append("interpolation off by default (per job: --interpolate; needs `wan22bot fetch-rife`)")

    # discord
    d = cfg.discord
    if d.enabled:
        token = os.environ.get(d.token_env)
        cred = d.token_file
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if token:
            rep.ok.append(f"discord token present in ${d.token_env}")
        elif cred and Path(cred).is_file():
            rep.ok.append(f"discord token file {cred}")
        elif cred_dir and (Path(cred_dir) / "discord-token").is_file():
            rep.ok.append("discord token from the systemd credential 'discord-token'")
        else:
            rep.errors.append(f"discord.enabled is on but no token: set ${d.token_env}, discord.token_file, or a "
                              "systemd credential named discord-token")
    # http
    h = cfg.http
    if h.enabled:
        local = h.host in ("127.0.0.1", "localhost", "::1")
        if not local and not os.environ.get(h.token_env):
            rep.errors.append(f"http.host = {h.host} is reachable from other machines; set a bearer token in "
                              f"${h.token_env} (or bind to 127.0.0.1)")
        elif h.public_url and not os.environ.get(h.token_env):
            rep.errors.append(f"http.public_url is set ({h.public_url}), so the API is reached through a proxy; "
                              f"set a bearer token in ${h.token_env} (or remove public_url)")
        else:
            rep.ok.append(f"http on {h.host}:{h.port}" + ("" if local else " (bearer token required)"))

    # video encoder: a forced NVENC that cannot open would fail every job
    from ..errors import ConfigError
    from ..video import choose_codec, nvenc_problem

    try:
        codec = choose_codec(cfg.generation.encoder)
        why = "" if codec != "libx264" or cfg.generation.encoder != "auto" else f" (NVENC not used: {nvenc_problem()})"
        rep.ok.append(f"video encoder {codec}{why}")
    except ConfigError as exc:
        rep.errors.append(str(exc))

    # scheduler
    s = cfg.scheduler
    rep.ok.append(
        f"housekeeping every {s.housekeeping_minutes:g} min: keep outputs "
        + (f"{s.retention_days:g} days" if s.retention_days else "forever")
        + (f", disk quota {s.disk_quota_gb:g} GiB" if s.disk_quota_gb else ", no disk quota")
        + (f"; unload models after {s.idle_unload_minutes:g} idle min" if s.idle_unload_minutes else
           "; models stay loaded when idle")
    )
    return rep


def cmd_check(cfg: Config, args: argparse.Namespace) -> int:
    rep = run_checks(cfg)
    print(rep.render())
    return 0 if not rep.errors else 1
