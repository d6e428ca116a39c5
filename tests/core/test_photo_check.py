"""images.check_photo: the one check every source runs before it accepts a photo."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from wan22bot.config import Config
from wan22bot.errors import InputError
from wan22bot.images import check_photo, to_rgb
from wan22bot.sources.discord.source import check_photo as discord_check_photo

from .helpers import EXAMPLE_PHOTO


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_intact_photo_passes_with_its_format_and_suffix(tmp_path):
    info = check_photo(EXAMPLE_PHOTO)
    assert (info.format, info.suffix) == ("JPEG", ".jpg") and info.width > 0 and info.height > 0
    png = check_photo(encode(Image.new("RGBA", (9, 7)), "PNG"), "a.png")
    assert (png.format, png.suffix, png.width, png.height, png.mode) == ("PNG", ".png", 9, 7, "RGBA")


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_jpeg_is_refused_from_bytes_and_from_a_file(tmp_path, keep):
    data = EXAMPLE_PHOTO.read_bytes()
    cut = data[: int(len(data) * keep)]
    p = tmp_path / "cut.jpg"
    p.write_bytes(cut)
    for given, name in ((cut, "upload.jpg"), (p, None)):
        with pytest.raises(InputError) as err:
            check_photo(given, name)
        msg = str(err.value)
        assert msg.startswith(name or "cut.jpg") and "damaged or truncated" in msg and "\n" not in msg


def test_truncated_png_is_refused():
    data = encode(Image.effect_noise((64, 64), 40).convert("RGB"), "PNG")
    with pytest.raises(InputError, match="half.png is damaged or truncated"):
        check_photo(data[: len(data) // 2], "half.png")


def premultiplied_grey_alpha_tiff() -> bytes:
    """A valid TIFF Pillow opens as mode 'La' (ExtraSamples = associated alpha), which has no RGB conversion."""
    data = bytearray(encode(Image.new("LA", (8, 8), (100, 200)), "TIFF"))
    entry = struct.pack("<HHIH", 338, 3, 1, 2)  # ExtraSamples, SHORT, 1 value: 2 (unassociated alpha)
    at = data.find(entry)
    assert at > 0
    data[at + 8:at + 10] = struct.pack("<H", 1)  # associated alpha
    return bytes(data)


def test_colour_mode_that_cannot_become_rgb_is_refused_with_the_fix():
    tiff = premultiplied_grey_alpha_tiff()
    img = Image.open(io.BytesIO(tiff))
    assert img.mode == "La"
    with pytest.raises(ValueError):  # what the worker would hit minutes later
        to_rgb(img)
    with pytest.raises(InputError) as err:
        check_photo(tiff, "scan.tif")
    msg = str(err.value)
    assert msg.startswith("scan.tif uses the colour mode La") and "RGB JPEG or PNG" in msg


def test_limits_still_apply_before_any_decode():
    big = encode(Image.new("L", (1200, 1000)), "PNG")
    with pytest.raises(InputError, match="1.2 megapixels|1 megapixels"):
        check_photo(big, "big.png", max_megapixels=1.0)
    with pytest.raises(InputError, match="limit is 0 MiB"):
        check_photo(big, "big.png", max_bytes=100)


def test_discord_uses_the_shared_check_with_the_config_limits(tmp_path):
    cfg = Config.model_validate({"generation": {"max_megapixels": 1.0}})
    data = EXAMPLE_PHOTO.read_bytes()
    info = discord_check_photo(data, "p.jpg", cfg)
    assert info == check_photo(data, "p.jpg")
    with pytest.raises(InputError, match="the limit is 1 megapixels"):
        discord_check_photo(encode(Image.new("L", (1200, 1000)), "PNG"), "big.png", cfg)
    with pytest.raises(InputError, match="cut.jpg is damaged or truncated"):
        discord_check_photo(data[: len(data) // 2], "cut.jpg", cfg)
