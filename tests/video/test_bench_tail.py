"""The tail benchmark runs end to end on the CPU at a tiny size and prints one JSON line."""

from __future__ import annotations

import json

import pytest

from wan22bot.bench.tail import main


def test_tail_bench_smoke(capsys, tmp_path):
    assert main(["--device", "cpu", "--vae", "tiny", "--frames", "5", "--width", "32", "--height", "32",
                 "--rife-batch", "4", "--encoder", "libx264", "--threads", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    r = json.loads(out[-1])
    assert (r["device"], r["frames"], r["width"], r["height"], r["rife"], r["encoder"]) == ("cpu", 5, 32, 32, True,
                                                                                           "libx264")
    for part in ("serial", "overlapped"):
        for key in ("vae_decode", "interpolate", "encode", "tail"):
            assert r[part][key] > 0, (part, key)
    assert r["overlapped"]["yuv"] > 0 and r["image_encode"] > 0
    # the streamed path decodes, doubles and encodes everything: 5 frames in, 9 out
    assert r["mp4"]["serial"]["frames"] == r["mp4"]["overlapped"]["frames"] == 9
    assert (tmp_path / "overlapped.mp4").is_file() and (tmp_path / "serial.mp4").is_file()


def test_tail_bench_refuses_bad_sizes():
    with pytest.raises(SystemExit, match="4k\\+1"):
        main(["--device", "cpu", "--vae", "tiny", "--frames", "6"])
    with pytest.raises(SystemExit, match="multiples of 16"):
        main(["--device", "cpu", "--vae", "tiny", "--frames", "5", "--width", "70"])
