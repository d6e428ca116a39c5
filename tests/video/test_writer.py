"""Mp4Writer and the background encoder: planes in untouched, tags, threads, chunked = one-shot, errors."""

from __future__ import annotations


import av
import numpy as np
import pytest
import torch

from wan22bot.background_encoder import BackgroundEncoder, PlaneChunk
from wan22bot.errors import DiskFull
from wan22bot.video import EncodeSettings, Mp4Writer, encode_mp4, read_frames
from wan22bot.yuv import rgb_to_yuv420

from .helpers import decoded_planes, encoder_threads_alive, moving_frames, x264_threads

H, W = 64, 96


def planes_of(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, u, v = rgb_to_yuv420(torch.from_numpy(frames))
    return y.numpy(), u.numpy(), v.numpy()


def packed(y, u, v) -> np.ndarray:
    n = y.shape[0]
    return np.concatenate([y, u.reshape(n, H // 4, W), v.reshape(n, H // 4, W)], axis=1)


def test_planes_reach_the_encoder_unconverted(tmp_path):
    """crf 0 is lossless in x264: what comes back is exactly what went in, so nobody converted."""
    frames = moving_frames(6, H, W)
    y, u, v = planes_of(frames)
    out = tmp_path / "lossless.mp4"
    with Mp4Writer(out, W, H, 16, EncodeSettings(encoder="libx264", crf=0, preset="ultrafast")) as w:
        w.write_planes(y, u, v)
        w.close()
    assert np.array_equal(decoded_planes(out), packed(y, u, v))


def test_stream_is_tagged_bt709_limited_range(tmp_path):
    out = tmp_path / "tags.mp4"
    encode_mp4(moving_frames(3, H, W), out, 16)
    with av.open(str(out)) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range) == (1, 1, 1, 1)
        assert cc.pix_fmt == "yuv420p"
    # A reader that honours the tags gets the colours back; one that assumed BT.601 would not.
    frames = moving_frames(3, H, W, grain=0).astype(int)
    encode_mp4(frames.astype(np.uint8), out, 16)
    tagged = np.abs(read_frames(out).astype(int) - frames).mean()
    with av.open(str(out)) as c:
        as_601 = np.stack([f.to_ndarray(format="rgb24", src_colorspace="ITU601") for f in c.decode(video=0)])
    assert tagged < 3.0 and np.abs(as_601.astype(int) - frames).mean() > 2 * tagged


@pytest.mark.parametrize("threads", [1, 3])
def test_x264_threads_are_set_explicitly(tmp_path, threads):
    out = tmp_path / "t.mp4"
    # tall enough that x264 does not cap the thread count by picture height
    encode_mp4(moving_frames(2, 256, 64), out, 16, threads=threads, preset="ultrafast")
    assert x264_threads(out) == threads


def test_chunks_through_the_thread_equal_the_one_shot_file(tmp_path):
    """Every frame arrives once, in order, untouched, however the producer cuts the clip.

    Lossless (crf 0), so the decoded frames must equal the input planes exactly: a lossy stream
    made with two frame threads was seen to differ by a few code values between two encodes on a
    loaded 2-core machine, which says nothing about the chunking, so it is not what we compare."""
    frames = moving_frames(11, H, W)
    settings = EncodeSettings(encoder="libx264", crf=0, preset="veryfast", threads=2)
    one = tmp_path / "one.mp4"
    with Mp4Writer(one, W, H, 16, settings) as w:
        w.write_rgb(frames)
        w.close()
    streamed = tmp_path / "streamed.mp4"
    enc = BackgroundEncoder(Mp4Writer(streamed, W, H, 16, settings), max_chunks=1)
    for a, b in ((0, 1), (1, 5), (5, 6), (6, 11)):  # the VAE's 1, 4, ... pattern and odd pieces
        enc.put(PlaneChunk.from_device(*rgb_to_yuv420(torch.from_numpy(frames[a:b]))))
    size = enc.finish()
    assert size == streamed.stat().st_size
    assert not enc.alive and enc.busy > 0
    expected = packed(*planes_of(frames))
    assert np.array_equal(decoded_planes(one), expected)
    assert np.array_equal(decoded_planes(streamed), expected)
    assert not list(tmp_path.glob(".*.part"))


def test_an_encoder_error_surfaces_in_the_producer_and_stops_the_thread(tmp_path):
    out = tmp_path / "bad.mp4"
    enc = BackgroundEncoder(Mp4Writer(out, W, H, 16), max_chunks=1)
    y, u, v = planes_of(moving_frames(2, H, W))
    bad = PlaneChunk(torch.from_numpy(y[:, :, :-2].copy()), torch.from_numpy(u), torch.from_numpy(v))
    enc.put(bad)  # fails in the thread
    with pytest.raises(ValueError, match="expected yuv420p planes"):
        for _ in range(50):  # the producer keeps going until it notices; the thread drains, never blocks it
            enc.put(PlaneChunk(torch.from_numpy(y), torch.from_numpy(u), torch.from_numpy(v)))
        enc.finish()
    enc.abort()
    assert not enc.alive and not encoder_threads_alive()
    assert not out.exists() and not list(tmp_path.glob(".*.part"))


def test_a_producer_error_stops_the_encoder_and_leaves_nothing(tmp_path):
    out = tmp_path / "gone.mp4"
    out.write_bytes(b"an earlier result")
    with pytest.raises(RuntimeError, match="decoder broke"):
        with BackgroundEncoder(Mp4Writer(out, W, H, 16)) as enc:
            enc.put(PlaneChunk(*map(torch.from_numpy, planes_of(moving_frames(3, H, W)))))
            raise RuntimeError("decoder broke")
    assert not enc.alive and not encoder_threads_alive()
    assert out.read_bytes() == b"an earlier result"  # the old file is untouched, no partial one
    assert not list(tmp_path.glob(".*.part"))
    with pytest.raises(RuntimeError, match="after finish"):
        enc.put(PlaneChunk(*map(torch.from_numpy, planes_of(moving_frames(1, H, W)))))


def test_full_disk_in_the_encoder_thread_is_disk_full(tiny_disk):
    noise = np.random.default_rng(0).integers(0, 256, (17, 128, 128, 3), dtype=np.uint8)
    old = tiny_disk / "clip.mp4"
    old.write_bytes(b"previous video")
    enc = BackgroundEncoder(Mp4Writer(old, 128, 128, 16, EncodeSettings(preset="ultrafast")), max_chunks=2)
    with pytest.raises(DiskFull, match="no space left to write clip.mp4"):
        for i in range(17):
            enc.put(PlaneChunk(*rgb_to_yuv420(torch.from_numpy(noise[i:i + 1]))))
        enc.finish()
    enc.abort()
    assert not encoder_threads_alive()
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["clip.mp4"]
    assert old.read_bytes() == b"previous video"
