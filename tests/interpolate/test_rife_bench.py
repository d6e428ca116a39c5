"""CPU smoke run of the GPU benchmark (tiny size; the real numbers come from a CUDA machine)."""

from __future__ import annotations

import json

from wan22bot.interpolate import bench


def test_bench_runs_on_cpu_and_reports():
    res = bench.bench_rife(device="cpu", frames=3, height=64, width=96, dtype="bf16", batch=2, runs=2, warmup=1)
    assert res["frames_out"] == 5 and res["height"] == 64 and res["width"] == 96
    assert res["dtype"] == "bfloat16" and res["weights"] == "random"
    assert len(res["times_s"]) == 2 and res["median_s"] > 0
    assert res["passthrough_exact"] is True
    assert res["psnr_vs_fp32_db"] is not None and res["psnr_vs_fp32_db"] > 25.0
    json.dumps(res)  # JSON-ready


def test_bench_command_line_prints_json(capsys):
    assert bench.main(["--device", "cpu", "--frames", "2", "--height", "32", "--width", "48", "--dtype", "fp32", "--runs", "1", "--warmup", "0"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["frames_out"] == 3 and res["dtype"] == "float32"
    assert res["psnr_vs_fp32_db"] is None  # fp32 is its own reference


def test_synthetic_clip_pans():
    clip = bench.synthetic_clip(3, 32, 48, bench.torch.device("cpu"), step=3)
    assert clip.shape == (3, 32, 48, 3) and clip.dtype == bench.torch.uint8
    assert bench.torch.equal(clip[1, :, :-3], clip[0, :, 3:])
