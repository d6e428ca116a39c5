"""MP4 output (H.264, yuv420p, faststart, atomic) and the sidecar JSON written beside it."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from wan22bot.config import Config, GenerationConfig, ModelConfig, PathsConfig
from wan22bot.errors import DiskFull
from wan22bot.jobs import TIMING_KEYS, JobOptions
from wan22bot.render import Renderer, write_json_atomic
from wan22bot.video import encode_mp4, probe_mp4, read_frames
from wan22bot.yuv import rgb_to_yuv420

from .helpers import small_photo


def moving_frames(n: int, h: int, w: int) -> np.ndarray:
    """A bright square sliding over a gradient: easy to compress, easy to recognise after decoding."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 60)], -1).astype(np.uint8)
    out = np.repeat(base[None], n, 0)
    for i in range(n):
        x0 = (i * 4) % (w - 16)
        out[i, 8:24, x0:x0 + 16] = 255
    return out


def box_atoms(data: bytes) -> list[tuple[str, int]]:
    """Top-level MP4 boxes in file order with their byte offsets."""
    atoms, pos = [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(data[pos + 8:pos + 16], "big")
        atoms.append((kind, pos))
        if size < 8:
            break
        pos += size
    return atoms


@pytest.mark.parametrize("fps", [16, 32])
def test_encode_probe_and_read_back(tmp_path, fps):
    frames = moving_frames(9, 48, 64)
    out = tmp_path / "clip.mp4"
    size = encode_mp4(frames, out, fps)
    assert size == out.stat().st_size > 0
    info = probe_mp4(out)
    assert info.frames == 9
    assert info.fps == pytest.approx(fps)
    assert (info.width, info.height) == (64, 48)
    assert info.codec == "h264" and info.pix_fmt == "yuv420p"
    assert info.duration == pytest.approx(9 / fps, abs=1.5 / fps)
    back = read_frames(out)
    assert back.shape == (9, 48, 64, 3) and back.dtype == np.uint8
    # lossy, but the content survives (crf 18)
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 6
    assert not list(tmp_path.glob(".*.part"))


def test_faststart_puts_moov_before_mdat(tmp_path):
    out = tmp_path / "fs.mp4"
    encode_mp4(moving_frames(9, 48, 64), out, 16)
    data = out.read_bytes()
    assert 0 <= data.find(b"moov") < data.find(b"mdat")
    kinds = [k for k, _ in box_atoms(data)]
    assert kinds[0] == "ftyp" and kinds.index("moov") < kinds.index("mdat")


def test_rejects_frames_of_the_wrong_type(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4(np.zeros((2, 16, 16, 3), np.float32), tmp_path / "x.mp4", 16)
    assert not list(tmp_path.iterdir())


def test_full_disk_raises_disk_full_and_leaves_no_partial_file(tiny_disk):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (17, 128, 128, 3), dtype=np.uint8)  # incompressible: ~100s of kB
    old = tiny_disk / "clip.mp4"
    old.write_bytes(b"previous video")  # an earlier result under the same name survives
    with pytest.raises(DiskFull, match="no space left to write clip.mp4"):
        encode_mp4(noise, old, 16)
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["clip.mp4"]
    assert old.read_bytes() == b"previous video"


def test_full_disk_sidecar_raises_disk_full_and_leaves_no_partial_file(tiny_disk):
    filler = tiny_disk / "filler"
    with pytest.raises(OSError) as exc:
        with open(filler, "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    assert exc.value.errno == errno.ENOSPC
    with pytest.raises(DiskFull):
        write_json_atomic(tiny_disk / "clip.json", {"timings": {"total": 1.0}, "pad": "x" * 20000})
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler"]


# ------------------------------------------------------------------ render: MP4 + sidecar


@pytest.fixture(scope="module")
def rendered(tiny_gen, tmp_path_factory):
    d = tmp_path_factory.mktemp("render")
    photo = d / "portrait.png"
    small_photo(300, 450).save(photo)
    cfg = Config(paths=PathsConfig(output=d / "out"), model=ModelConfig(device="cpu"),
                 generation=GenerationConfig(width=64, height=96, frames=5, seed=-1))
    result = Renderer(cfg, generator=tiny_gen).render(photo, "portrait", d / "out", JobOptions(seed=4242),
                                                      meta={"source": "test"})
    return result, d


def test_render_writes_the_mp4(rendered):
    result, d = rendered
    assert Path(result.output) == d / "out" / "portrait.mp4"
    info = probe_mp4(Path(result.output))
    assert (info.frames, info.fps, info.width, info.height) == (5, 16.0, 64, 96)
    assert info.codec == "h264" and info.pix_fmt == "yuv420p"
    assert result.bytes == os.path.getsize(result.output)
    assert (result.frames, result.fps, result.width, result.height, result.seed) == (5, 16, 64, 96, 4242)


def test_sidecar_has_timings_seed_settings_versions(rendered):
    result, d = rendered
    assert Path(result.sidecar) == d / "out" / "portrait.json"
    side = json.loads(Path(result.sidecar).read_text(encoding="utf-8"))
    t = side["timings"]
    for key in TIMING_KEYS:
        assert key in t, key
    for key in ("text_encode", "image_encode", "pass1", "pass2", "vae_decode", "yuv", "encode", "tail", "total"):
        assert t[key] > 0, key
    assert t["interpolate"] == 0
    # The encoder thread overlaps the decode, so `encode` is not a slice of the total; `tail` is.
    assert t["tail"] >= (t["vae_decode"] + t["yuv"]) * 0.99
    stages = sum(t[k] for k in ("text_encode", "image_encode", "pass1", "pass2", "tail"))
    assert t["total"] >= stages * 0.99
    assert side["encoder"] in ("libx264", "h264_nvenc")
    assert side["seed"] == 4242
    s = side["settings"]
    assert (s["seed"], s["width"], s["height"], s["frames"], s["fps"]) == (4242, 64, 96, 5, 16)
    assert (s["steps"], s["switch_step"], s["cfg"], s["shift"], s["lora"], s["interpolate"]) == (4, 2, 1.0, 5.0, True, False)
    for key in ("wan22bot", "python", "torch", "diffusers", "transformers", "device"):
        assert side["versions"][key]
    assert side["frames"] == 5 and side["fps"] == 16 and side["source"] == "test"
    assert not list((d / "out").glob(".*.part"))


# ------------------------------------------------------------------ render: the streamed tail


@pytest.fixture(scope="module")
def random_rife():
    from wan22bot.interpolate import IFNet, Interpolator

    from ..interpolate.helpers import random_state_dict

    net = IFNet()
    net.load_state_dict(random_state_dict(2))
    return Interpolator.from_model(net.eval(), device="cpu", batch=3)


def _renderer(tiny_gen, rife, out: Path, **gen) -> Renderer:
    cfg = Config(paths=PathsConfig(output=out), model=ModelConfig(device="cpu"),
                 generation=GenerationConfig(**{"width": 48, "height": 64, "frames": 5, "encoder": "libx264",
                                                "encoder_threads": 2, **gen}))
    r = Renderer(cfg, generator=tiny_gen)
    r._interpolator = rife  # random weights: only the bits matter here, not the looks
    return r


def _encoder_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name == "mp4-encoder"]


def test_streamed_render_equals_the_one_shot_path(tiny_gen, random_rife, tmp_path):
    """Decode in chunks -> RIFE on chunks -> YUV -> encoder thread gives the same MP4 frames as
    decoding everything, doubling it in one call and encoding it in one go. Lossless (crf 0): two
    lossy encodes with frame threads are not promised to be bit-identical, so the frames are
    compared with exactly what went in."""
    from wan22bot.engine.generator import GenerationRequest
    from wan22bot.images import load_photo

    photo = tmp_path / "p.png"
    small_photo(60, 80).save(photo)
    r = _renderer(tiny_gen, random_rife, tmp_path / "out", crf=0)
    result = r.render(photo, "streamed", tmp_path / "out", JobOptions(seed=99, interpolate=True))
    assert (result.frames, result.fps) == (9, 32)
    s = json.loads(Path(result.sidecar).read_text(encoding="utf-8"))["settings"]

    image = load_photo(photo, photo.name, max_megapixels=50, max_bytes=2**26)
    out = tiny_gen.generate(GenerationRequest(
        image=image, width=s["width"], height=s["height"], frames=s["frames"], prompt=s["prompt"],
        negative_prompt=s["negative_prompt"], steps=s["steps"], switch_step=s["switch_step"], cfg=s["cfg"],
        shift=s["shift"], seed=s["seed"], lora=s["lora"]))
    doubled = random_rife.double(out.frames.numpy())
    g = r.cfg.generation
    ref = tmp_path / "one_shot.mp4"
    encode_mp4(doubled, ref, 32, crf=g.crf, preset=g.encoder_preset, threads=g.encoder_threads)
    from tests.video.helpers import decoded_planes

    got, want = decoded_planes(Path(result.output)), decoded_planes(ref)
    assert got.shape == want.shape == (9, 64 * 3 // 2, 48)
    assert np.array_equal(got, want)
    y, u, v = (p.numpy() for p in rgb_to_yuv420(torch.from_numpy(doubled)))
    n = y.shape[0]
    assert np.array_equal(got, np.concatenate([y, u.reshape(n, -1, 48), v.reshape(n, -1, 48)], axis=1))
    t = json.loads(Path(result.sidecar).read_text(encoding="utf-8"))["timings"]
    assert t["interpolate"] > 0 and t["tail"] >= (t["vae_decode"] + t["interpolate"] + t["yuv"]) * 0.99


def test_cancel_while_decoding_stops_the_encoder_and_leaves_no_file(tiny_gen, random_rife, tmp_path):
    from wan22bot.errors import Cancelled

    photo = tmp_path / "p.png"
    small_photo(64, 96).save(photo)
    stages: list[str] = []
    r = _renderer(tiny_gen, random_rife, tmp_path / "out")
    with pytest.raises(Cancelled, match="while decoding"):
        r.render(photo, "gone", tmp_path / "out", JobOptions(seed=1, interpolate=True),
                 progress=lambda p: stages.append(p.stage), should_cancel=lambda: "vae_decode" in stages)
    assert not _encoder_threads()
    assert not list((tmp_path / "out").iterdir())  # neither the MP4 nor its .part


def test_forced_nvenc_fails_before_the_passes(tiny_gen, random_rife, tmp_path):
    from wan22bot.errors import ConfigError
    from wan22bot.video import nvenc_problem

    if nvenc_problem() is None:
        pytest.skip("NVENC opens on this machine")
    photo = tmp_path / "p.png"
    small_photo(64, 96).save(photo)
    stages: list[str] = []
    r = _renderer(tiny_gen, random_rife, tmp_path / "out", encoder="nvenc")
    with pytest.raises(ConfigError, match='generation.encoder is "nvenc"'):
        r.render(photo, "n", tmp_path / "out", JobOptions(seed=1), progress=lambda p: stages.append(p.stage))
    assert stages == [] and not _encoder_threads()
    assert not list((tmp_path / "out").iterdir())
