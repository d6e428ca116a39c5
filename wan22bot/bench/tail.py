"""Timing everything after pass 2 (VAE decode, RIFE, colour conversion, MP4 encode), serial
against overlapped, plus the image encode before pass 1; random weights, timing only.

    python -m wan22bot.bench.tail --device cuda --frames 81 [--width 832 --height 1216]
        [--no-rife] [--vae-dtype bf16|fp32] [--channels-last] [--cudnn-benchmark] [--compile-decoder]
        [--fast-decode]
        [--psnr] [--encoder auto]
        [--threads 0] [--rife-weights weights/rife/flownet.pkl]

- serial: the tail as 140cdeb ran it: stock VAE decode of the whole clip, RIFE on the whole clip,
  frames to the host, rgb24 frames into PyAV (swscale converts on the CPU) and libx264.
- overlapped: the tail as render.py runs it now: the decoder's chunks go through RIFE (same
  batches) and the RGB -> YUV conversion on the device to the encoder thread while the rest decodes.
- image encode: diffusers' own encode of the conditioning video, then engine/vae_encode.py's
  exact shortcut (`[model] fast_image_encode`) on the same input, checked equal with torch.equal.

The VAE levers (`--channels-last`, `--cudnn-benchmark`, `--compile-decoder`, `--fast-decode`) are
applied as the render path applies them (engine/vae_levers.py): cuDNN autotuning only while the VAE
runs; a compiled decoder, and the fast decode's compiled groups on CUDA, are warmed up on the whole
clip first (that time is reported on its own, as compile_warmup_s / fast_decode_warmup_s).

Random VAE weights decode noise, and x264 spends far longer on noise than on a real video, so the
frames after the decoder are replaced by a panning texture of the same size (the decode itself is
timed for real). RIFE has random weights unless --rife-weights is given. `--psnr` decodes once more
in float32 and reports the PSNR of the --vae-dtype decode against it (meaningful with real weights
only; with random ones it shows the rounding of the dtype on a random network).

Prints a few readable lines on stderr and one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import torch

from ..background_encoder import BackgroundEncoder
from ..engine.timing import synchronize
from ..engine.vae_decode import decode_video_chunks
from ..engine.vae_encode import EncodeReport
from ..engine.vae_encode import encode as fast_encode
from ..engine.vae_fast_decode import install_fast_decode
from ..engine.vae_levers import compile_decoder, cudnn_benchmark, to_channels_last
from ..interpolate.bench import synthetic_clip
from ..interpolate.ifnet import IFNet
from ..interpolate.sequence import Interpolator
from ..interpolate.weights import load_ifnet
from ..tail import StreamingTail
from ..video import EncodeSettings, Mp4Writer, probe_mp4
from ..yuv import rgb_to_yuv420

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TARGET_S = 5.0  # issue 11: everything but the two passes, 81 frames with RIFE, on the H200


class Clock:
    """Device-synchronised stopwatch that adds up named stages."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn, *args):
        synchronize(self.device)
        t0 = time.perf_counter()
        out = fn(*args)
        synchronize(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        return out


def build_vae(kind: str, device: torch.device, dtype: torch.dtype, channels_last: bool, seed: int):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    if kind == "tiny":
        from ..engine.tiny import VAE_CONFIG

        vae = AutoencoderKLWan(**VAE_CONFIG)
    else:
        vae = AutoencoderKLWan()  # Wan 2.1/2.2-A14B VAE shape (z_dim 16)
    from ..engine.generator import cast_for_compute

    vae = cast_for_compute(vae, dtype).to(device).eval().requires_grad_(False)
    if channels_last:
        to_channels_last(vae)
    return vae


def to_frames(video: torch.Tensor) -> torch.Tensor:
    """(1, 3, f, H, W) in [-1, 1] -> uint8 (f, H, W, 3), as TwoPassGenerator.decode_chunks does."""
    video = ((video[0].float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return video.permute(1, 2, 3, 0).contiguous()


def legacy_encode(frames, path: Path, fps: int, settings: EncodeSettings) -> None:
    """140cdeb's encode: rgb24 numpy frames, PyAV/swscale converting, libx264's PyAV defaults."""
    import av
    import numpy as np

    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"preset": settings.preset, "crf": str(settings.crf)}
        for arr in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def run(args: argparse.Namespace) -> dict:
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench.tail: --device cuda but no CUDA device is visible")
    if args.frames < 1 or (args.frames - 1) % 4:
        raise SystemExit(f"bench.tail: --frames must be 4k+1 (25, 49, 81, ...), got {args.frames}")
    if args.width % 16 or args.height % 16:
        raise SystemExit(f"bench.tail: --width and --height must be multiples of 16, got {args.width}x{args.height}")
    vae_dtype = DTYPES[args.vae_dtype] if dev.type == "cuda" else torch.float32
    vae = build_vae(args.vae, dev, vae_dtype, args.channels_last, args.seed)
    if args.compile_decoder:
        compile_decoder(vae, backend=args.compile_backend)  # compiled by the warm-up below
    fast_decode = install_fast_decode(vae) if args.fast_decode else None  # after the levers, as the render path
    warm_whole = args.compile_decoder or (fast_decode is not None and fast_decode.compiled)
    tuned = functools.partial(cudnn_benchmark, args.cudnn_benchmark and dev.type == "cuda")
    t_lat = (args.frames - 1) // 4 + 1
    z = torch.randn((1, vae.config.z_dim, t_lat, args.height // 8, args.width // 8),
                    generator=torch.Generator().manual_seed(args.seed)).to(dev, vae_dtype)
    interp = None
    if args.rife:
        if args.rife_weights:
            net = load_ifnet(args.rife_weights, "cpu", torch.float32)
        else:
            torch.manual_seed(args.seed)
            net = IFNet()
        interp = Interpolator.from_model(net, device=dev, dtype=args.rife_dtype, batch=args.rife_batch)
    fps = 32 if interp else 16
    settings = EncodeSettings(encoder=args.encoder, crf=args.crf, preset=args.preset, threads=args.threads)
    content = synthetic_clip(args.frames, args.height, args.width, dev, seed=args.seed)
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="wan22bot-tail-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"device": str(dev), "frames": args.frames, "width": args.width, "height": args.height,
                    "rife": bool(interp), "vae": args.vae, "vae_dtype": str(vae_dtype).removeprefix("torch."),
                    "channels_last": args.channels_last, "cudnn_benchmark": args.cudnn_benchmark,
                    "compile_decoder": args.compile_decoder, "fast_decode": args.fast_decode,
                    "random_weights": True}
    if dev.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(dev)

    with torch.inference_mode():
        # warm-up: kernels, cuDNN autotuning, the encoder's first open; a compiled decoder (or the
        # fast decode's compiled groups) compiles each of its variants here (the first, second and
        # later latent frames)
        synchronize(dev)
        t0 = time.perf_counter()
        with tuned():
            for _ in decode_video_chunks(vae, z if warm_whole else z[:, :, :2]):
                pass
        synchronize(dev)
        if args.compile_decoder:
            result["compile_warmup_s"] = round(time.perf_counter() - t0, 4)
            print(f"compiled decoder warmed up in {result['compile_warmup_s']:.1f} s", file=sys.stderr, flush=True)
        if fast_decode is not None:
            result["fast_decode_warmup_s"] = round(time.perf_counter() - t0, 4)
            result["fast_decode_report"] = fast_decode.as_dict()  # after the warm-up: with any compile fallback
            print(f"fast decode ({'compiled' if fast_decode.compiled else 'eager'}) warmed up in "
                  f"{result['fast_decode_warmup_s']:.1f} s: {fast_decode.describe()}", file=sys.stderr, flush=True)
        if interp:
            interp.double(content[:3])
        rgb_to_yuv420(content[:2])
        # image encode: the conditioning video (photo, then black frames), as prepare_latents does
        cond = torch.zeros((1, 3, args.frames, args.height, args.width), device=dev, dtype=vae_dtype)
        cond[:, :, 0] = content[0].permute(2, 0, 1).to(vae_dtype) / 127.5 - 1.0
        with tuned():
            vae.encode(cond[:, :, :5])  # the 1-frame and 4-frame shapes
            fast_encode(vae, cond[:, :, :9])
        synchronize(dev)

        clock = Clock(dev)
        report = EncodeReport()
        with tuned():
            stock = clock("image_encode", lambda: vae.encode(cond).latent_dist.mode())
            fast = clock("image_encode_fast", lambda: fast_encode(vae, cond, report=report).latent_dist.mode())
        result["image_encode"] = round(clock.seconds["image_encode"], 4)
        result["image_encode_fast"] = round(clock.seconds["image_encode_fast"], 4)
        result["image_encode_fast_exact"] = bool(torch.equal(stock, fast))
        result["image_encode_report"] = report.as_dict()
        del cond, stock, fast

        # serial: the old tail
        serial_mp4 = out_dir / "serial.mp4"
        if args.serial:
            clock = Clock(dev)
            t0 = time.perf_counter()
            with tuned():
                decoded = clock("vae_decode", lambda: to_frames(vae.decode(z, return_dict=False)[0]))
            n_dec = decoded.shape[0]
            del decoded
            frames = content[:n_dec]
            if interp:
                frames = clock("interpolate", interp.double, frames)
            host = clock("to_host", lambda: frames.cpu().numpy())
            clock("encode", legacy_encode, host, serial_mp4, fps, settings)
            serial = {k: round(v, 4) for k, v in clock.seconds.items()}
            serial["tail"] = round(time.perf_counter() - t0, 4)
            result["serial"] = serial
            del host, frames
        else:
            result["serial"] = None

        # overlapped: the tail as render.py runs it
        streamed_mp4 = out_dir / "overlapped.mp4"
        writer = Mp4Writer(streamed_mp4, args.width, args.height, fps, settings)
        encoder = BackgroundEncoder(writer)
        tail = StreamingTail(encoder, dev, doubler=interp.stream(total_frames=args.frames) if interp else None)
        t0 = time.perf_counter()
        decode_s = 0.0
        at = 0
        try:
            it = decode_video_chunks(vae, z)
            while True:
                synchronize(dev)
                t1 = time.perf_counter()
                with tuned():
                    chunk = next(it, None)
                if chunk is not None:
                    chunk = to_frames(chunk)
                synchronize(dev)
                decode_s += time.perf_counter() - t1
                if chunk is None:
                    break
                n = chunk.shape[0]
                tail(content[at:at + n])  # same shape as the decoded chunk; see the module docstring
                at += n
            tail.finish()
        except BaseException:
            encoder.abort()
            raise
        wall = time.perf_counter() - t0
        result["overlapped"] = {"vae_decode": round(decode_s, 4), "interpolate": round(tail.interpolate, 4),
                                "yuv": round(tail.yuv, 4), "encode": round(encoder.busy, 4), "tail": round(wall, 4)}
        result["encoder"] = writer.codec
        result["speedup"] = round(result["serial"]["tail"] / wall, 3) if wall > 0 and args.serial else None
        result["tail_plus_image_encode"] = round(wall + result["image_encode"], 4)
        result["tail_plus_fast_image_encode"] = round(wall + result["image_encode_fast"], 4)
        if dev.type == "cuda" and args.frames == 81 and interp:
            result["target_s"] = TARGET_S

        if args.psnr:
            # the reference: fp32, no lever; the levers under test decode as they did above
            ref = build_vae(args.vae, dev, torch.float32, False, args.seed)
            with tuned():
                a = vae.decode(z, return_dict=False)[0].float()
            b = ref.decode(z.float(), return_dict=False)[0].float()
            mse = ((a - b) / 2.0).pow(2).mean().item()  # [-1, 1] -> [0, 1] scale
            result["psnr_vs_fp32"] = None if mse == 0 else round(10 * math.log10(1.0 / mse), 2)  # None: identical
            result["max_abs_vs_fp32"] = round((a - b).abs().max().item(), 6)
            del ref, a, b

    o_info = probe_mp4(streamed_mp4)
    result["mp4"] = {"serial": None, "overlapped": {"frames": o_info.frames, "bytes": streamed_mp4.stat().st_size}}
    if args.serial:
        s_info = probe_mp4(serial_mp4)
        result["mp4"]["serial"] = {"frames": s_info.frames, "bytes": serial_mp4.stat().st_size}
    if dev.type == "cuda":
        result["peak_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    if not args.out:
        for path in (serial_mp4, streamed_mp4):
            path.unlink(missing_ok=True)
        out_dir.rmdir()
    return result


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m wan22bot.bench.tail", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--height", type=int, default=1216)
    p.add_argument("--vae", choices=("wan", "tiny"), default="wan", help="full-size Wan VAE, or the tiny one (smoke tests)")
    p.add_argument("--vae-dtype", choices=tuple(DTYPES), default="bf16", help="on CUDA; the CPU runs fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN autotune the VAE's 3-D convolutions")
    p.add_argument("--compile-decoder", action="store_true", help="torch.compile the VAE decoder")
    p.add_argument("--fast-decode", action="store_true",
                   help="the fused decoder of engine/vae_fast_decode.py ([model] vae_fast_decode)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend for --compile-decoder (\"eager\": only traces, for smoke tests)")
    p.add_argument("--psnr", action="store_true", help="also decode in fp32 and report the PSNR against it")
    p.add_argument("--no-serial", dest="serial", action="store_false",
                   help="skip the serial (old) tail: for lever runs, where only the decode and the streamed tail count")
    p.add_argument("--rife", dest="rife", action="store_true", default=True)
    p.add_argument("--no-rife", dest="rife", action="store_false")
    p.add_argument("--rife-weights", default=None)
    p.add_argument("--rife-dtype", default="auto")
    p.add_argument("--rife-batch", type=int, default=8)
    p.add_argument("--encoder", choices=("auto", "libx264", "nvenc"), default="auto")
    p.add_argument("--threads", type=int, default=0, help="libx264 threads, 0 = one per core")
    p.add_argument("--crf", type=int, default=18)
    p.add_argument("--preset", default="fast")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="keep the two MP4s in this folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    result = run(args)
    s, o = result["serial"], result["overlapped"]
    levers = [k for k in ("channels_last", "cudnn_benchmark", "compile_decoder", "fast_decode")
              if result[k]] or ["no lever"]
    serial = "serial tail skipped" if s is None else (
        f"tail serial {s['tail']:.2f} s (decode {s['vae_decode']:.2f}, rife {s.get('interpolate', 0):.2f}, "
        f"encode {s['encode']:.2f})")
    compiled = f" (compile warm-up {result['compile_warmup_s']:.1f} s)" if "compile_warmup_s" in result else ""
    if "fast_decode_warmup_s" in result:
        compiled += f" (fast decode warm-up {result['fast_decode_warmup_s']:.1f} s)"
    print(f"VAE {result['vae_dtype']}, {'+'.join(levers)}{compiled}: image encode {result['image_encode']:.2f} s "
          f"(shortcut {result['image_encode_fast']:.2f} s, exact: {result['image_encode_fast_exact']}); "
          f"PSNR vs fp32 {result.get('psnr_vs_fp32', 'not measured')}; {serial}; "
          f"overlapped {o['tail']:.2f} s (decode {o['vae_decode']:.2f}, rife {o['interpolate']:.2f}, "
          f"yuv {o['yuv']:.2f}, encoder busy {o['encode']:.2f}) with {result['encoder']}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
