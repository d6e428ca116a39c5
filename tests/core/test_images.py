"""Photos from strangers: refused from the header when hostile, decoded to RGB correctly otherwise."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wan22bot.config import Config, GenerationConfig
from wan22bot.errors import InputError
from wan22bot.images import fit_photo, load_photo, probe_photo, target_size
from wan22bot.jobs import JobOptions
from wan22bot.render import resolve_settings

from .helpers import EXAMPLE_PHOTO, three_band_image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_bilevel_png(side: int) -> bytes:
    """A valid 1-bit side x side PNG, all black, built row by row (compresses to tens of kB)."""
    header = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
    row = b"\x00" + bytes((side + 7) // 8)
    co = zlib.compressobj(9)
    idat = b"".join(co.compress(row) for _ in range(side)) + co.flush()
    return header + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with no pixel data at all."""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + png_chunk(b"IEND", b""))


# ------------------------------------------------------------------ refusals


def test_text_file_named_jpg_is_refused(tmp_path):
    p = tmp_path / "holiday.jpg"
    p.write_text("this is not a picture\n")
    for fn in (probe_photo, load_photo):
        with pytest.raises(InputError, match="holiday.jpg is not an image"):
            fn(p)


def test_zero_byte_file_is_refused(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty.png is empty \(0 bytes\)"):
        load_photo(p)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(InputError, match="gone.jpg does not exist"):
        load_photo(tmp_path / "gone.jpg")


def test_truncated_jpeg_is_refused_when_decoding(tmp_path):
    data = EXAMPLE_PHOTO.read_bytes()
    half = tmp_path / "half.jpg"
    half.write_bytes(data[: len(data) // 2])
    probe_photo(half)  # the header is intact ...
    with pytest.raises(InputError, match="half.jpg is damaged or truncated"):
        load_photo(half)  # ... but the pixels are not


def test_20000x20000_png_is_refused_from_the_header_quickly():
    data = huge_bilevel_png(20000)
    assert len(data) < 200_000
    t0 = time.perf_counter()
    with pytest.raises(InputError) as exc:
        load_photo(data, "huge.png", max_megapixels=50)
    assert time.perf_counter() - t0 < 1.0  # decoding 400 MP would take far longer
    msg = str(exc.value)
    assert "huge.png" in msg and "20000x20000" in msg and "400 megapixels" in msg and "50 megapixels" in msg
    # the header is read correctly; the limit is what refuses it
    info = probe_photo(data, "huge.png", max_megapixels=500)
    assert (info.format, info.width, info.height) == ("PNG", 20000, 20000)


def test_oversized_header_is_refused_without_any_pixel_data():
    with pytest.raises(InputError, match="megapixels"):
        load_photo(png_header_only(12000, 9000), "claims.png", max_megapixels=50)


def test_decompression_bomb_size_is_refused_as_too_large_not_as_unreadable():
    """A 40000x40000 PNG is a PNG: the message must say it is too large, not that it is not an image."""
    with pytest.raises(InputError) as exc:
        probe_photo(png_header_only(40000, 40000), "bomb.png")
    assert "megapixels" in str(exc.value)


def test_file_over_the_byte_limit_is_refused(tmp_path):
    with pytest.raises(InputError, match="limit is 1 MiB"):
        probe_photo(EXAMPLE_PHOTO.read_bytes() + bytes(2 * 2**20), "big.jpg", max_bytes=2**20)


def test_unsupported_format_is_named():
    with pytest.raises(InputError, match="PPM"):
        probe_photo(encode(Image.new("RGB", (8, 8)), "PPM"), "x.ppm")


# ------------------------------------------------------------------ decoding


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    data = buf.getvalue()
    assert probe_photo(data).frames == 3
    arr = pixels(load_photo(data, "anim.gif"))
    assert (arr == (255, 0, 0)).all()


def test_exif_orientation_6_turns_a_landscape_jpeg_portrait():
    stored = Image.new("RGB", (64, 32), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 32, 32))  # stored left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    assert probe_photo(data).width == 64  # the header describes the stored image
    img = load_photo(data, "phone.jpg")
    assert img.size == (32, 64)
    arr = pixels(img).astype(int)
    top, bottom = arr[4:28].reshape(-1, 3).mean(0), arr[36:60].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 60  # the stored left edge is now at the top
    assert bottom[2] > 200 and bottom[0] < 60


def test_rgba_transparent_pixels_become_white():
    img = Image.new("RGBA", (3, 1))
    img.putpixel((0, 0), (0, 0, 0, 0))
    img.putpixel((1, 0), (0, 0, 255, 255))
    img.putpixel((2, 0), (0, 0, 0, 128))
    arr = pixels(load_photo(encode(img, "PNG")))
    assert arr[0, 0].tolist() == [255, 255, 255]
    assert arr[0, 1].tolist() == [0, 0, 255]
    assert all(abs(v - 127) <= 1 for v in arr[0, 2].tolist())  # half-transparent black on white


def test_la_grey_with_alpha_becomes_rgb_on_white():
    img = Image.new("LA", (2, 1))
    img.putpixel((0, 0), (10, 0))
    img.putpixel((1, 0), (10, 255))
    arr = pixels(load_photo(encode(img, "PNG")))
    assert arr.tolist() == [[[255, 255, 255], [10, 10, 10]]]


def test_palette_with_transparency_becomes_rgb():
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    data = encode(img, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    arr = pixels(load_photo(data))
    assert arr.tolist() == [[[255, 255, 255], [0, 255, 0]]]


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_becomes_rgb(fmt):
    img = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # no cyan, full magenta + yellow = red
    data = encode(img, fmt)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    arr = pixels(load_photo(data)).astype(int)
    assert (abs(arr - (255, 0, 0)) <= 3).all()


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grey_is_scaled_to_8_bit(fmt):
    values = np.array([[0, 257, 32768, 65535]], dtype="<u2")
    img = Image.frombytes("I;16", (4, 1), values.tobytes())
    data = encode(img, fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    arr = pixels(load_photo(data))
    assert arr[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_example_photo_loads_as_rgb():
    img = load_photo(EXAMPLE_PHOTO)
    assert img.mode == "RGB" and img.size == (640, 960)


# ------------------------------------------------------------------ sizing


@pytest.mark.parametrize("photo, orientation, expected", [
    ((3000, 4000), "auto", (832, 1216)),  # portrait
    ((4000, 3000), "auto", (1216, 832)),  # landscape: swapped
    ((2000, 2000), "auto", (832, 1216)),  # square: as configured
    ((4000, 3000), "fixed", (832, 1216)),  # fixed: always as configured
    ((3000, 4000), "fixed", (832, 1216)),
])
def test_target_size(photo, orientation, expected):
    assert target_size(*photo, 832, 1216, orientation) == expected


def test_target_size_auto_follows_the_photo_even_if_config_is_landscape():
    assert target_size(600, 800, 1216, 832) == (832, 1216)
    assert target_size(800, 600, 1216, 832) == (1216, 832)


def test_settings_pick_the_orientation_from_the_photo():
    cfg = Config(generation=GenerationConfig(width=64, height=96))
    land = resolve_settings(cfg, JobOptions(seed=1), (400, 300), (96, 144, 25))
    port = resolve_settings(cfg, JobOptions(seed=1), (300, 400), (96, 144, 25))
    assert (land.width, land.height) == (96, 64)
    assert (port.width, port.height, port.frames) == (64, 96, 25)


def test_fit_photo_center_crops_instead_of_stretching():
    img = three_band_image(300, 100)  # red | green | blue, left to right
    out = fit_photo(img, 64, 64)
    assert out.size == (64, 64)
    arr = pixels(out).astype(int)
    for col in (1, 32, 62):  # even the edges are the green middle band
        c = arr[:, col].mean(0)
        assert c[1] > 200 and c[0] < 40 and c[2] < 40, (col, c)


def test_fit_photo_portrait_crop_keeps_the_vertical_middle():
    img = three_band_image(100, 600, vertical=False)  # red / green / blue, top to bottom
    out = fit_photo(img, 64, 96)
    arr = pixels(out).astype(int)
    assert out.size == (64, 96)
    # 100x600 scaled to cover 64x96 is 64x384: the middle 96 rows are inside the green band
    assert (arr[:, :, 1] > 200).all() and (arr[:, :, 0] < 40).all() and (arr[:, :, 2] < 40).all()
