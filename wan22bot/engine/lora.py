"""Wan LoRA files (LightX2V, ComfyUI, kohya, PEFT) fused into a diffusers Wan expert, exactly.

What a file may hold (key names: lora_keys.py), and what each patch adds to its tensor, as
ComfyUI's LoRA loader computes it (comfy/lora.py, comfy/weight_adapter/lora.py): the weight is taken
to fp32, `strength * alpha/rank * up @ down` (alpha/rank = 1 without an alpha key), `strength * diff`,
`strength * diff_b` or `strength * diff_m` is added in fp32, and the sum is rounded once to the
tensor's dtype. alpha/rank is applied here and only here; the file's tensors are never modified.

Taking a LoRA out (the LoRA-free presets) never subtracts: every patched tensor is recomputed from
its original value, so fuse / remove / fuse again gives the same bits as a fresh load. The original
values come from an `original(name, dtype)` source when there is one (lora_originals.py re-reads
an expert's single file), checked bit for bit against the loaded tensor the first time; otherwise
a host (CPU) copy of each patched tensor is kept. For the LightX2V LoRAs, which patch every linear
layer of the blocks, that host copy is about the size of the expert in its load dtype (~28 GB per
A14B expert in bf16), held once per expert for the life of the loaded model.

Every key must be understood before any weight is touched: an unknown key, a missing factor or a
shape that does not fit is a ModelError naming it. Keys for Wan 2.1 I2V's image branch (k_img,
v_img, norm_k_img, img_emb), which the Wan 2.2 A14B experts lack, are skipped with one log line.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ModelError
from .lora_keys import IMAGE_BRANCH_NOTE, KeyName, split_key, target_of

log = logging.getLogger(__name__)

KIND_ORDER = ("lora_up/down", "lora_A/B", "diff", "diff_b", "diff_m")

# A source of a tensor's original value: fn(diffusers parameter name, dtype) -> the tensor exactly as
# the loader loads it in that dtype (e.g. re-read from the memory-mapped checkpoint), or None.
OriginalFn = Callable[[str, torch.dtype], "torch.Tensor | None"]


@dataclass
class Patch:
    """Everything a file says about one tensor of the model."""

    target: str  # diffusers parameter name
    kind: str  # one of KIND_ORDER
    keys: list[str]  # the file keys it is made of
    image_branch: bool = False
    up: torch.Tensor | None = None  # (out, rank[, 1...])
    down: torch.Tensor | None = None  # (rank, in[, k...])
    alpha: torch.Tensor | None = None
    delta: torch.Tensor | None = None  # diff / diff_b / diff_m: the full delta

    @property
    def scale(self) -> float:
        if self.alpha is None:
            return 1.0
        return float(self.alpha) / self.down.shape[0]  # type: ignore[union-attr]

    def fits(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """None when the patch fits a tensor of `shape`, else the shape the file gives."""
        if self.delta is not None:
            got = tuple(self.delta.shape)
            return None if got == tuple(shape) else got
        out_f = self.up.shape[0]  # type: ignore[union-attr]
        in_f = math.prod(self.down.shape[1:])  # type: ignore[union-attr]
        ok = len(shape) >= 2 and shape[0] == out_f and math.prod(shape[1:]) == in_f
        return None if ok else (out_f, *self.down.shape[1:])  # type: ignore[union-attr]

    def fused(self, base: torch.Tensor, strength: float) -> torch.Tensor:
        """round(base + strength * delta), the delta computed in fp32 on base's device."""
        w = base.to(torch.float32, copy=True)
        if self.delta is not None:
            w += strength * self.delta.to(w.device, torch.float32)
        else:
            up = self.up.to(w.device, torch.float32).flatten(start_dim=1)  # type: ignore[union-attr]
            down = self.down.to(w.device, torch.float32).flatten(start_dim=1)  # type: ignore[union-attr]
            w += ((strength * self.scale) * torch.mm(up, down)).reshape(w.shape)
        return w.to(base.dtype)


@dataclass
class LoraFile:
    path: Path
    patches: list[Patch] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ reading


def read_lora(path: Path, *, shapes_only: bool = False) -> LoraFile:
    """Read and check a LoRA file. With `shapes_only` the factors are meta tensors (nothing is read
    but the header and the alphas), enough for `plan_lora` and a report."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"LoRA file {path} does not exist")
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                if shapes_only and not k.endswith(".alpha"):
                    sl = f.get_slice(k)
                    tensors[k] = torch.empty(sl.get_shape(), device="meta", dtype=_dtype(sl.get_dtype()))
                else:
                    tensors[k] = f.get_tensor(k)
    except Exception as exc:  # safetensors raises several types for a damaged header or body
        raise ModelError(f"LoRA file {path} is not a readable .safetensors file ({exc})") from None
    return LoraFile(path, _patches(path, tensors))


def _dtype(name: str) -> torch.dtype:
    table = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
    return table.get(name, torch.float32)


def _examples(keys: list[str], n: int = 3) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _patches(path: Path, tensors: dict[str, torch.Tensor]) -> list[Patch]:
    name = path.name
    unknown: list[str] = []
    groups: dict[tuple[str, str], list[tuple[KeyName, torch.Tensor]]] = {}
    for key, t in tensors.items():
        kn = split_key(key)
        # an alpha belongs to a module that takes low-rank factors
        if kn is None or target_of(KeyName(key, kn.module, "down" if kn.part == "alpha" else kn.part, kn.style)) is None:
            unknown.append(key)
            continue
        family = "lora" if kn.part in ("down", "up", "alpha") else kn.part
        groups.setdefault((kn.module, family), []).append((kn, t))
    if unknown:
        raise ModelError(
            f"LoRA {name} has {len(unknown)} key(s) that name no Wan 2.2 expert module or LoRA part: "
            f"{_examples(sorted(unknown))} (wan22bot reads lora_down/lora_up/alpha, lora_A/lora_B, diff, diff_b "
            "and diff_m keys of Wan modules; convert the file or remove the keys)"
        )
    patches: list[Patch] = []
    problems: list[str] = []
    for (module, family), items in groups.items():
        keys = sorted(kn.key for kn, _ in items)
        if family != "lora":
            kn, t = items[0]
            if len(items) > 1:
                problems.append(f"{module} has the same {family} key under two prefixes ({_examples(keys)})")
                continue
            tgt = target_of(kn)
            patches.append(Patch(tgt.param, family, keys, tgt.image_branch, delta=t))  # type: ignore[union-attr]
            continue
        parts = {kn.part: (kn, t) for kn, t in items}
        styles = {kn.style for kn, _ in items if kn.style}
        if len(styles) > 1:
            problems.append(f"{module} has both lora_down/lora_up and lora_A/lora_B factors ({_examples(keys)})")
            continue
        if len(items) != len(parts):
            problems.append(f"{module} has the same factor under two prefixes ({_examples(keys)})")
            continue
        if "down" not in parts or "up" not in parts:
            missing = "the down factor (lora_down / lora_A)" if "down" not in parts else "the up factor (lora_up / lora_B)"
            problems.append(f"{module} lacks {missing} ({_examples(keys)})")
            continue
        kn_down, down = parts["down"]
        _, up = parts["up"]
        alpha = parts["alpha"][1] if "alpha" in parts else None
        if up.dim() < 2 or down.dim() < 2 or math.prod(up.shape[1:]) != down.shape[0]:
            problems.append(f"{module}: up {tuple(up.shape)} and down {tuple(down.shape)} do not multiply")
            continue
        if alpha is not None and alpha.numel() != 1:
            problems.append(f"{module}: alpha has shape {tuple(alpha.shape)}, not a single number")
            continue
        tgt = target_of(kn_down)
        patches.append(Patch(tgt.param, styles.pop(), keys, tgt.image_branch, up=up, down=down, alpha=alpha))  # type: ignore[union-attr]
    by_target: dict[str, list[Patch]] = {}
    for p in patches:
        by_target.setdefault(p.target, []).append(p)
    for tgt, ps in by_target.items():
        if len(ps) > 1:
            problems.append(f"{tgt} is patched by both {' and '.join(sorted(p.kind for p in ps))} "
                            f"({_examples(sorted(k for p in ps for k in p.keys))}); which one applies is ambiguous")
    if problems:
        raise ModelError(f"LoRA {name} is not usable: " + "; ".join(problems[:3])
                         + (f"; and {len(problems) - 3} more" if len(problems) > 3 else ""))
    if not patches:
        raise ModelError(f"LoRA file {path} contains no LoRA keys wan22bot recognises")
    return patches


# ------------------------------------------------------------------------------------------ planning


@dataclass
class LoraReport:
    """What one LoRA file does to one expert: patched tensors by kind, and skipped ones."""

    name: str
    applied: dict[str, int]
    skipped: int
    skipped_examples: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.applied.values())

    def render(self) -> str:
        kinds = ", ".join(f"{k} {self.applied[k]}" for k in KIND_ORDER if self.applied.get(k))
        line = f"{self.name}: {self.total} tensors patched ({kinds})"
        if self.skipped:
            line += f"; {self.skipped} skipped ({IMAGE_BRANCH_NOTE}; this model has none)"
        return line


@dataclass
class LoraPlan:
    lora: LoraFile
    apply: list[Patch]
    skipped: list[Patch]

    @property
    def report(self) -> LoraReport:
        return LoraReport(self.lora.path.name, dict(Counter(p.kind for p in self.apply)), len(self.skipped),
                          [p.keys[0] for p in self.skipped[:3]])


def tensor_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Every patchable tensor of `model` by parameter name; an fp8-stored linear layer counts by its
    logical `.weight` (its bf16 weight was replaced by an e4m3 buffer plus scales)."""
    from .fp8_linear import FP8Linear

    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    for n, m in model.named_modules():
        if isinstance(m, FP8Linear):
            shapes[f"{n}.weight"] = (m.out_features, m.in_features)
    return shapes


def plan_lora(lora: LoraFile, model: torch.nn.Module) -> LoraPlan:
    """Match every patch to a tensor of `model` (which may live on the meta device). Raises ModelError,
    naming the keys, when a patch has no tensor (other than the image branch) or does not fit."""
    shapes = tensor_shapes(model)
    apply, skipped, missing, misfit = [], [], [], []
    for p in lora.patches:
        shape = shapes.get(p.target)
        if shape is None:
            (skipped if p.image_branch else missing).append(p)
            continue
        got = p.fits(shape)
        if got is not None:
            where = p.target.removesuffix(".weight").removesuffix(".bias")  # the module, or a bare table
            misfit.append(f"{where} is {shape}, the LoRA gives {got} ({p.keys[0]})")
            continue
        apply.append(p)
    name = lora.path.name
    if missing:
        keys = [p.keys[0] for p in missing]
        raise ModelError(
            f"LoRA {name} patches {len(missing)} tensor(s) this model does not have, e.g. "
            f"{missing[0].target} ({_examples(keys)}): it is not a LoRA for the Wan 2.2 I2V A14B experts"
        )
    if misfit:
        raise ModelError(f"LoRA {name} does not fit this model: " + "; ".join(misfit[:3])
                         + (f"; and {len(misfit) - 3} more" if len(misfit) > 3 else "")
                         + " (is it for another model size?)")
    return LoraPlan(lora, apply, skipped)


def lora_summary(path: Path, model: torch.nn.Module) -> LoraReport:
    """The report of `path` against `model` without reading the factors (the model may be on meta)."""
    return plan_lora(read_lora(path, shapes_only=True), model).report


# ------------------------------------------------------------------------------------------ fusing


class FusedLora:
    """One LoRA file on one expert, switchable on and off; every switch recomputes the patched
    tensors from their originals, so the weights after any sequence of switches are bit-identical to a
    fresh load with the LoRA (on) or without it (off)."""

    def __init__(self, model: torch.nn.Module, lora: LoraFile, strength: float, *,
                 device: torch.device | None = None, original: OriginalFn | None = None):
        self.plan = plan_lora(lora, model)  # raises before anything is touched
        self.model = model
        self.lora = lora
        self.strength = float(strength)
        self.device = device
        self._source = original
        self._kept: dict[str, torch.Tensor] = {}
        self._from_source: set[str] = set()
        self.fused = False
        rep = self.plan.report
        if rep.skipped:
            log.warning("LoRA %s: %d tensors skipped (%s; this model has none), e.g. %s", rep.name, rep.skipped,
                        IMAGE_BRANCH_NOTE, ", ".join(rep.skipped_examples))

    @property
    def report(self) -> LoraReport:
        return self.plan.report

    @property
    def kept_bytes(self) -> int:
        """Host memory held for the originals (0 when the loader's source provides them)."""
        return sum(t.numel() * t.element_size() for t in self._kept.values())

    @torch.no_grad()
    def set(self, on: bool) -> None:
        if on == self.fused:
            return
        for p in self.plan.apply:
            self._write(p, on)
        self.fused = on

    # -------------------------------------------------------------- internals
    def _current(self, name: str) -> tuple[torch.nn.Module, str, torch.Tensor | None]:
        from .fp8_linear import FP8Linear

        mod_name, _, leaf = name.rpartition(".")
        mod = self.model.get_submodule(mod_name) if mod_name else self.model
        if isinstance(mod, FP8Linear) and leaf == "weight":
            return mod, leaf, None
        return mod, leaf, getattr(mod, leaf)

    def _original(self, name: str, current: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        if name in self._kept:
            return self._kept[name]
        if name in self._from_source:
            t = self._source(name, dtype)  # type: ignore[misc]
            if t is None:
                raise ModelError(f"the original value of {name} is no longer available from the model files; "
                                 "restart wan22bot to reload the model")
            return t
        if current is None:
            raise ModelError(f"{name} was stored in fp8 before its original value was kept; fuse the LoRA "
                             "before quantising the expert")
        # first touch: trust the loader's source only if it gives exactly the loaded bits
        if self._source is not None:
            t = self._source(name, dtype)
            if t is not None and tuple(t.shape) == tuple(current.shape) and \
                    torch.equal(t.to(current.device, current.dtype), current):
                self._from_source.add(name)
                return t
        self._kept[name] = current.detach().to("cpu", copy=True)
        return self._kept[name]

    def _write(self, p: Patch, on: bool) -> None:
        mod, leaf, cur = self._current(p.target)
        dtype = cur.dtype if cur is not None else mod.compute_dtype
        dev = self.device or (cur.device if cur is not None else mod.weight_fp8.device)
        base = self._original(p.target, cur, dtype).to(dev, dtype)
        new = p.fused(base, self.strength) if on else base
        if cur is None:
            _requantise(mod, new)
        else:
            cur.copy_(new.to(cur.device))


def _requantise(mod: torch.nn.Module, weight: torch.Tensor) -> None:
    """Store `weight` in an FP8Linear exactly as quantising it at load would: the layer class itself
    quantises a linear holding `weight` (with the layer's own scaling), and its buffers are copied in."""
    linear = torch.nn.utils.skip_init(torch.nn.Linear, mod.in_features, mod.out_features, bias=False,
                                      device=weight.device, dtype=weight.dtype)
    linear.weight.data = weight
    kw = {"scaling": mod.scaling} if hasattr(mod, "scaling") else {}
    fresh = type(mod)(linear, use_scaled_mm=mod.use_scaled_mm, **kw)
    mod.weight_fp8.copy_(fresh.weight_fp8.to(mod.weight_fp8.device))
    mod.weight_scale.copy_(fresh.weight_scale.to(mod.weight_scale.device))
    if hasattr(mod, "reset_calibration"):  # activation scales are calibrated again, as after a load
        mod.reset_calibration()


def fuse_lora(model: torch.nn.Module, lora: LoraFile, strength: float, **kw) -> FusedLora:
    """Plan, then fuse at once; the returned handle switches it off and on again exactly."""
    fl = FusedLora(model, lora, strength, **kw)
    fl.set(True)
    return fl
