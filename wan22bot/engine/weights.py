"""Reading a ComfyUI .safetensors file in whatever weight layout it uses, exactly as ComfyUI reads it.

Layouts understood (everything else is refused with a message naming it, never loaded "as is"):
- plain float files: fp32, fp16, bf16 (values used as stored);
- plain fp8 files (`*_fp8_e4m3fn.safetensors` with no scale anywhere): ComfyUI casts the stored
  value, so do we;
- "fp8_scaled" (the older ComfyUI layout): an empty `scaled_fp8` marker tensor; each quantised
  Linear has an fp8 `weight` and a float32 scalar `scale_weight` (real weight = weight x scale),
  sometimes `scale_input`. Any other fp8 tensor of the file, biases included, is used as stored:
  ComfyUI turns `scale_weight` into its per-layer quantisation entry for the *weight* only;
- per-layer quantisation entries (the newer layout): `<layer>.comfy_quant` holds the UTF-8 JSON
  `{"format": ...}` as a uint8 tensor (or the header's `_quantization_metadata` lists the layers),
  with `<layer>.weight_scale` beside the weight. The formats "float8_e4m3fn" and "float8_e5m2"
  have one float32 scale per tensor and are read exactly; nvfp4, mxfp8, int8 and the 4-bit
  formats are refused.

The dequantisation is ComfyUI's own: `weight.to(dtype) * scale.to(dtype)`, in the load dtype.
Tensors are read one at a time from the memory-mapped file, so a 14B expert never needs two copies.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ModelError

FP8_DTYPES = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
FP8_FORMATS = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
# ComfyUI's other per-layer formats, named so the refusal can say what the file is.
OTHER_FORMATS = {
    "nvfp4": "NVFP4 (4-bit, block scales)",
    "mxfp8": "MXFP8 (block scales)",
    "int8_tensorwise": "int8 (tensor-wise)",
    "convrot_w4a4": "ConvRot W4A4 (4-bit)",
    "asym_w4a8_int8": "W4A8 (4-bit weights)",
    "awq_w4a16": "AWQ W4A16 (4-bit)",
}
# Keys a bitsandbytes (nf4/fp4/int8) checkpoint carries next to its packed weights.
BNB_MARKERS = (".absmax", ".quant_map", ".quant_state", ".nested_absmax", ".nested_quant_map", ".SCB")
EXTRA_KEYS = ("spiece_model",)  # carried by ComfyUI's text encoder files; not weights
SUPPORTED = ("bf16, fp16, fp32, fp8 (e4m3/e5m2), ComfyUI's fp8_scaled, or per-layer float8 quantisation "
             "(comfy_quant)")


@dataclass
class Layout:
    """What a file holds, in words for `check`, plus the pieces the reader needs."""

    kind: str  # "float", "fp8", "fp8_scaled", "comfy_quant"
    stored: str  # e.g. "bf16", "fp16 + fp8 (e4m3)"
    quantised_layers: int = 0
    input_scales: int = 0

    def describe(self) -> str:
        if self.kind == "fp8_scaled":
            extra = f", {self.input_scales} with scale_input" if self.input_scales else ""
            return (f"fp8_scaled ({self.stored}, per-tensor scale_weight on {self.quantised_layers} layers{extra}; "
                    "other tensors as stored)")
        if self.kind == "comfy_quant":
            extra = f", {self.input_scales} with input_scale" if self.input_scales else ""
            return (f"per-layer quantisation ({self.stored}, per-tensor weight_scale on {self.quantised_layers} "
                    f"layers{extra})")
        if self.kind == "fp8":
            return f"{self.stored}, unscaled (values used as stored)"
        return self.stored


TORCH_DTYPES = {**FLOAT_DTYPES, **FP8_DTYPES, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
                "I32": torch.int32, "I64": torch.int64, "BOOL": torch.bool}


class SafetensorsFile:
    """A .safetensors file read through a private memory map.

    Tensors are views of the file's pages (not copies on the heap), so reading an fp8 weight and
    writing its bf16 value allocates only the bf16 tensor: a 14B expert peaks at about its bf16 size
    instead of half as much again in freed-but-kept fp8 buffers.
    """

    def __init__(self, path: Path):
        import mmap

        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 8:
                raise ValueError("the file is shorter than a safetensors header")
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise ValueError("the header length is out of range")
            header = json.loads(fh.read(n).decode("utf-8"))
            self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._start = 8 + n
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for key, e in header.items():
            begin, end = e["data_offsets"]
            if e["dtype"] not in TORCH_DTYPES or not 0 <= begin <= end or self._start + end > size:
                raise ValueError(f"entry {key} is malformed ({e['dtype']}, bytes {begin}..{end})")
            self.entries[key] = (e["dtype"], tuple(e["shape"]), begin, end)

    def keys(self) -> list[str]:
        return list(self.entries)

    def get_tensor(self, key: str) -> torch.Tensor:
        dtype, shape, begin, end = self.entries[key]
        td = TORCH_DTYPES[dtype]
        count = (end - begin) // td.itemsize
        if count == 0:
            return torch.empty(shape, dtype=td)
        return torch.frombuffer(self._mm, dtype=td, count=count, offset=self._start + begin).reshape(shape)


@dataclass
class Checkpoint:
    """An open .safetensors file: logical weight names, their shapes, and exact float values on demand."""

    path: Path
    layout: Layout
    shapes: dict[str, tuple[int, ...]]  # logical weights only (no markers, scales or extras)
    dtypes: dict[str, str]
    metadata: dict[str, str]
    _file: SafetensorsFile
    _scales: dict[str, str] = field(default_factory=dict)  # weight key -> its scale key

    def names(self) -> list[str]:
        return list(self.shapes)

    def raw(self, key: str) -> torch.Tensor:
        """The stored tensor, a view of the file (copy it before keeping or changing it)."""
        return self._file.get_tensor(key)

    def has(self, key: str) -> bool:
        return key in self._file.entries

    def extra(self, key: str) -> torch.Tensor | None:
        return self.raw(key).clone() if self.has(key) else None

    def tensor(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """The real value of one weight in `dtype`: dequantised where the layout says so, else as stored."""
        t = self.raw(name)
        out = t.to(dtype, copy=True)
        scale_key = self._scales.get(name)
        if scale_key is not None:
            # ComfyUI's per-tensor dequantisation: weight.to(dtype) * scale.to(dtype)
            out.mul_(self.raw(scale_key).to(dtype))
        return out

    def items(self, dtype_of) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.shapes:
            yield name, self.tensor(name, dtype_of(name))


def _refuse(path: Path, what: str) -> ModelError:
    return ModelError(f"{path} is {what}, which wan22bot does not load; use the file in one of: {SUPPORTED} "
                      "(e.g. the fp8_scaled or fp16 file of the same model)")


def open_checkpoint(path: Path) -> Checkpoint:
    """Open and classify a file; raise ModelError naming any layout that is not understood exactly."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist or is not a file")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"GGUF":
        raise _refuse(path, "a GGUF file (llama.cpp's quantised format)")
    try:
        handle = SafetensorsFile(path)
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise ModelError(f"{path} is not a readable .safetensors file ({exc}); re-download it") from None
    keys = handle.keys()
    dtypes = {k: e[0] for k, e in handle.entries.items()}
    shapes = {k: e[1] for k, e in handle.entries.items()}
    return _classify(path, handle, keys, dtypes, shapes, handle.metadata)


def _layer_confs(path: Path, handle, keys: list[str], metadata: dict[str, str]) -> dict[str, dict]:
    confs: dict[str, dict] = {}
    if "_quantization_metadata" in metadata:
        try:
            layers = json.loads(metadata["_quantization_metadata"]).get("layers", {})
        except (ValueError, AttributeError):
            raise ModelError(f"{path}: the header's _quantization_metadata is not valid JSON; re-download the file") from None
        for layer, conf in layers.items():
            confs[layer] = conf if isinstance(conf, dict) else {"format": conf}
    for k in keys:
        if k.endswith(".comfy_quant"):
            layer = k[: -len(".comfy_quant")]
            try:
                confs[layer] = json.loads(bytes(handle.get_tensor(k).to(torch.uint8).tolist()).decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                raise ModelError(f"{path}: {k} is not the JSON a comfy_quant entry holds; re-download the file") from None
    return confs


def _classify(path: Path, handle, keys, dtypes, shapes, metadata) -> Checkpoint:
    bnb = [k for k in keys if any(m in k for m in BNB_MARKERS)]
    if bnb:
        raise _refuse(path, f"a bitsandbytes-quantised file (nf4/fp4/int8; e.g. key {bnb[0]})")
    marker = [k for k in keys if k == "scaled_fp8" or k.endswith(".scaled_fp8")]
    confs = _layer_confs(path, handle, keys, metadata)
    if marker and confs:
        raise _refuse(path, "a file with both the scaled_fp8 marker and per-layer comfy_quant entries")
    skip = set(marker) | {k for k in keys if k.endswith(".comfy_quant")} | set(EXTRA_KEYS)
    scales: dict[str, str] = {}
    input_scales = 0
    if marker:
        kind = "fp8_scaled"
        for k in keys:
            if k.endswith(".scale_weight"):
                layer = k[: -len(".scale_weight")]
                w = layer + ".weight"
                if w not in shapes:
                    raise ModelError(f"{path}: {k} has no {w} beside it; the file is damaged, re-download it")
                if dtypes[w] not in FP8_DTYPES:
                    raise _refuse(path, f"an fp8_scaled file whose scaled weight {w} is {dtypes[w]}, not fp8")
                _scalar(path, k, shapes[k])
                scales[w] = k
                skip.add(k)
            elif k.endswith(".scale_input"):
                input_scales += 1
                skip.add(k)
    elif confs:
        kind = "comfy_quant"
        for layer, conf in confs.items():
            fmt = conf.get("format")
            if fmt not in FP8_FORMATS:
                name = OTHER_FORMATS.get(fmt, f"an unknown format {fmt!r}")
                raise _refuse(path, f"quantised per layer in {name} (layer {layer})")
            if layer + ".weight" not in shapes and "model.diffusion_model." + layer + ".weight" in shapes:
                # header metadata may name layers without the model prefix the tensors carry
                layer = "model.diffusion_model." + layer
            w, s = layer + ".weight", layer + ".weight_scale"
            if w not in shapes or s not in shapes:
                raise ModelError(f"{path}: the comfy_quant layer {layer} lacks {w if w not in shapes else s}; "
                                 "the file is damaged, re-download it")
            if dtypes[w] != {"float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}[fmt]:
                raise _refuse(path, f"a {fmt} layer {layer} stored as {dtypes[w]}")
            _scalar(path, s, shapes[s])
            scales[w] = s
            skip.add(s)
            if layer + ".input_scale" in shapes:
                input_scales += 1
                skip.add(layer + ".input_scale")
    else:
        kind = "plain"
        stray = [k for k in keys if k.endswith((".scale_weight", ".weight_scale", ".scale_input", ".input_scale"))]
        if stray:
            # Loading the weights without their scales would be silently wrong.
            raise _refuse(path, f"a quantised file with scales ({stray[0]}) but neither the scaled_fp8 marker nor "
                                "comfy_quant entries saying how to apply them")
    names = [k for k in keys if k not in skip]
    for k in names:
        if dtypes[k] in FLOAT_DTYPES or dtypes[k] in FP8_DTYPES:
            continue
        what = {"I8": "int8", "U8": "uint8 (packed 4-bit?)", "I32": "int32", "I64": "int64"}.get(dtypes[k], dtypes[k])
        raise _refuse(path, f"a file with {what} weights (e.g. {k})")
    words = {"F64": "fp64", "F32": "fp32", "F16": "fp16", "BF16": "bf16", "F8_E4M3": "fp8 e4m3", "F8_E5M2": "fp8 e5m2"}
    present = {dtypes[k] for k in names}
    stored_s = " + ".join(w for d, w in words.items() if d in present)
    if kind == "plain":
        kind = "fp8" if present & set(FP8_DTYPES) else "float"
    layout = Layout(kind=kind, stored=stored_s, quantised_layers=len(scales), input_scales=input_scales)
    return Checkpoint(path=path, layout=layout, shapes={k: shapes[k] for k in names},
                      dtypes={k: dtypes[k] for k in names}, metadata=metadata, _file=handle, _scales=scales)


def _scalar(path: Path, key: str, shape: tuple[int, ...]) -> None:
    n = 1
    for d in shape:
        n *= d
    if n != 1:
        raise _refuse(path, f"a file with a non-scalar scale {key} of shape {list(shape)} (per-row or block "
                            "scales)")
