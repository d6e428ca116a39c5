"""Reading a user's photo safely and fitting it to the model's frame size.

Photos arrive from strangers (Discord, a shared folder), so the header is checked before any pixel
is decoded: a 20000x20000 PNG is refused from its header alone, and a decompression bomb never
reaches the decoder. Every refusal is an `InputError` with one sentence a person can act on.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

# Pillow's own bomb guard is global; ours is per call (max_megapixels), so turn Pillow's into an
# error at a high ceiling rather than a warning we might miss.
Image.MAX_IMAGE_PIXELS = 1_000_000_000

SUPPORTED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"}
SUFFIX_BY_FORMAT = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif",
                    "GIF": ".gif"}


@dataclass(frozen=True)
class PhotoInfo:
    format: str
    width: int
    height: int
    mode: str
    frames: int  # >1 for animated GIF/WebP: only the first frame is used

    @property
    def suffix(self) -> str:
        """The file suffix a spooled copy of this photo gets."""
        return SUFFIX_BY_FORMAT.get(self.format, ".img")


def _open(data: bytes | os.PathLike[str] | str, name: str) -> Image.Image:
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(src)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise InputError(f"{name} has more than {Image.MAX_IMAGE_PIXELS // 1_000_000} megapixels, too many to "
                         "open safely") from None
    except UnidentifiedImageError:
        raise InputError(f"{name} is not an image wan22bot can read (JPEG, PNG, WebP, BMP, TIFF or GIF)") from None
    except FileNotFoundError:
        raise InputError(f"{name} does not exist") from None
    except OSError as exc:
        raise InputError(f"{name} could not be opened: {exc}") from None


def probe_photo(
    data: bytes | os.PathLike[str] | str,
    name: str | None = None,
    *,
    max_megapixels: float = 50.0,
    max_bytes: int | None = None,
) -> PhotoInfo:
    """Check type, size and pixel count from the header only (cheap, safe on hostile input)."""
    name = name or (Path(data).name if not isinstance(data, (bytes, bytearray)) else "the photo")
    size = len(data) if isinstance(data, (bytes, bytearray)) else _file_size(data, name)
    if size == 0:
        raise InputError(f"{name} is empty (0 bytes)")
    if max_bytes is not None and size > max_bytes:
        raise InputError(f"{name} is {size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB")
    img = _open(data, name)
    try:
        if img.format not in SUPPORTED_FORMATS:
            raise InputError(f"{name} is a {img.format} image; supported are JPEG, PNG, WebP, BMP, TIFF and GIF")
        w, h = img.size
        if w < 1 or h < 1:
            raise InputError(f"{name} has no pixels")
        mp = w * h / 1e6
        if mp > max_megapixels:
            raise InputError(
                f"{name} is {w}x{h} ({mp:.0f} megapixels); the limit is {max_megapixels:g} megapixels "
                "(raise generation.max_megapixels to allow it)"
            )
        return PhotoInfo(img.format, w, h, img.mode, getattr(img, "n_frames", 1))
    finally:
        img.close()


def check_photo(
    data: bytes | os.PathLike[str] | str,
    name: str | None = None,
    *,
    max_megapixels: float = 50.0,
    max_bytes: int | None = None,
) -> PhotoInfo:
    """The one check every source runs before it accepts a photo: the header checks of `probe_photo`
    (type, bytes, megapixels: a bomb is refused from its header), a decode of every byte, so a
    damaged or truncated file is refused at once rather than failing minutes later in the queue, and
    its colour mode converted to RGB the way the pipeline will. Blocking: run it in a thread."""
    info = probe_photo(data, name, max_megapixels=max_megapixels, max_bytes=max_bytes)
    name = name or (Path(data).name if not isinstance(data, (bytes, bytearray)) else "the photo")
    img = _open(data, name)
    try:
        if img.format == "JPEG":
            # A reduced-size decode still reads every byte of the compressed data, so truncation and
            # corruption fail the same way, at an eighth of the memory for a large photo.
            img.draft("RGB", (max(1, info.width // 8), max(1, info.height // 8)))
        img.seek(0)
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        img.close()
        detail = " ".join(str(exc).split()).rstrip(".")
        raise InputError(f"{name} is damaged or truncated and cannot be decoded" +
                         (f" ({detail})" if detail else "")) from None
    try:
        # One pixel through the same conversion the pipeline uses: a mode Pillow opens but cannot
        # turn into RGB (premultiplied grey+alpha TIFFs, say) is refused now, not in the worker.
        to_rgb(img.crop((0, 0, 1, 1)))
    except (ValueError, OSError) as exc:
        raise InputError(f"{name} uses the colour mode {img.mode}, which cannot be converted to RGB ({exc}); "
                         "save it as an ordinary RGB JPEG or PNG") from None
    finally:
        img.close()
    return info


def _file_size(path: os.PathLike[str] | str, name: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        raise InputError(f"{name} does not exist") from None
    except OSError as exc:
        raise InputError(f"{name} cannot be read: {exc.strerror}") from None


def load_photo(
    data: bytes | os.PathLike[str] | str,
    name: str | None = None,
    *,
    max_megapixels: float = 50.0,
    max_bytes: int | None = None,
) -> Image.Image:
    """Decode to an 8-bit RGB image, EXIF orientation applied. Animated images give their first frame."""
    probe_photo(data, name, max_megapixels=max_megapixels, max_bytes=max_bytes)
    name = name or (Path(data).name if not isinstance(data, (bytes, bytearray)) else "the photo")
    img = _open(data, name)
    try:
        img.seek(0)
        img.load()  # a truncated file fails here, not later inside the pipeline
        img = ImageOps.exif_transpose(img) or img
        return to_rgb(img)
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{name} is damaged or truncated and cannot be decoded ({exc})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to RGB: alpha is composited on white, 16-bit is scaled down, CMYK/palette converted."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype("uint8")
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.max() > 1.0 else 1.0
        return Image.fromarray(np.clip(arr / hi * 255 + 0.5, 0, 255).astype("uint8"), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode != "RGB":
        return img.convert("RGB")
    return img


def target_size(photo_w: int, photo_h: int, width: int, height: int, orientation: str = "auto") -> tuple[int, int]:
    """(width, height) for the video. `width`x`height` is the portrait size; landscape photos swap it."""
    if orientation == "auto":
        portrait_w, portrait_h = min(width, height), max(width, height)
        if photo_w > photo_h:
            return portrait_h, portrait_w
        if photo_w == photo_h:
            return width, height
        return portrait_w, portrait_h
    return width, height


def fit_photo(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover the target and center-crop to it (ComfyUI's center crop, not a stretch)."""
    return ImageOps.fit(img, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
