"""Memory modes run the same computation: swap and offload must give resident's frames exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from wan22bot.config import ModelConfig
from wan22bot.engine.generator import GenerationRequest, TwoPassGenerator
from wan22bot.engine.memory import GiB, PinnedSwap, activation_bytes, choose_mode


def _request(seed: int = 3) -> GenerationRequest:
    rng = np.random.RandomState(0)
    img = Image.fromarray((rng.rand(96, 64, 3) * 255).astype("uint8"))
    return GenerationRequest(image=img, width=64, height=96, frames=5, prompt="a cat", seed=seed)


@pytest.fixture(scope="module")
def resident_frames():
    g = TwoPassGenerator(ModelConfig(memory="resident"))
    out = g.generate(_request())
    assert g.memory_mode == "resident"
    return out.frames


@pytest.mark.parametrize("mode", ["swap", "offload"])
def test_mode_matches_resident(mode, resident_frames):
    g = TwoPassGenerator(ModelConfig(memory=mode))
    out = g.generate(_request())
    assert g.memory_mode == mode
    assert torch.equal(out.frames, resident_frames)
    if mode == "swap":
        # nothing big is left on the device after a video: the decoder's working memory must not
        # sit on top of an expert (a 32 GB card overflowed there), the text encoder left after the prompt
        assert set(g.swaps) == {"text_encoder", "transformer", "transformer_2"}
        assert not any(sw.on_device for sw in g.swaps.values())
        assert "swap" in out.timings
        again = g.generate(_request())  # the second video swaps the high-noise expert back in
        assert torch.equal(again.frames, resident_frames)


def test_pinned_swap_restores_weights_exactly():
    lin = torch.nn.Linear(8, 4)
    ref = {k: v.clone() for k, v in lin.state_dict().items()}
    sw = PinnedSwap(lin, torch.device("cpu"))
    assert not sw.on_device
    sw.load()
    assert sw.on_device
    for k, v in lin.state_dict().items():
        assert torch.equal(v, ref[k])
    sw.evict()
    sw.load()
    for k, v in lin.state_dict().items():
        assert torch.equal(v, ref[k])


def test_auto_mode_choice_by_free_memory():
    experts, text, work = 14 * GiB, 12 * GiB, 8 * GiB
    assert choose_mode("auto", 80 * GiB, 4, experts, text, work) == "resident"  # 28+12+8 = 48 <= 76
    assert choose_mode("auto", 32 * GiB, 4, experts, text, work) == "swap"  # 14+8 = 22 <= 28
    assert choose_mode("auto", 20 * GiB, 4, experts, text, work) == "offload"
    assert choose_mode("swap", 200 * GiB, 4, experts, text, work) == "swap"  # explicit wins
    # the reserve counts: 48 GiB needed, 52 free, reserve 4 -> fits; reserve 5 -> does not
    assert choose_mode("auto", 52 * GiB, 4, experts, text, work) == "resident"
    assert choose_mode("auto", 52 * GiB, 5, experts, text, work) == "swap"


def test_activation_estimate_grows_with_frames_and_size():
    assert activation_bytes(832, 1216, 81) > activation_bytes(832, 1216, 25) > activation_bytes(416, 608, 25)


def test_swap_holds_one_module_at_a_time_and_none_while_decoding():
    """The memory bookkeeping behind the 32 GB configuration, checked at each stage of a render."""
    g = TwoPassGenerator(ModelConfig(memory="swap"))
    seen: dict[str, set[str]] = {}

    def progress(p):
        seen.setdefault(p.stage, set()).update(k for k, sw in g.swaps.items() if sw.on_device)

    g.generate(_request(), progress=progress)
    assert seen["text_encode"] == {"text_encoder"}
    assert seen["image_encode"] == set()
    assert seen["pass1"] == {"transformer"}
    assert seen["pass2"] == {"transformer_2"}
    assert seen["vae_decode"] == set()


def test_pinned_swap_keeps_state_a_layer_wrote_while_on_the_device():
    """fp8 calibration (amax history) lives in a buffer: a swap must not roll it back to zeros,
    which would make every later activation scale 0 and the video garbage."""
    from wan22bot.engine.fp8_linear import FP8Linear

    torch.manual_seed(0)
    layer = FP8Linear(torch.nn.Linear(16, 8).to(torch.bfloat16), use_scaled_mm=True, scaling="static")
    model = torch.nn.Sequential(layer)
    sw = PinnedSwap(model, torch.device("cpu"))
    sw.load()
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    first = model(x)
    calibrated = layer.amax_history.clone()
    assert calibrated[0] > 0
    sw.evict()
    sw.load()
    assert torch.equal(layer.amax_history, calibrated)
    assert torch.equal(model(x), first)


def test_auto_sees_a_per_process_cap_as_a_smaller_card():
    """`bench --memory-cap-gib 32` on a 141 GiB H200: the driver says ~140 GiB free, but the process
    may only hold 32; `auto` must choose as it would on a 32 GB card, not resident (which overflows)."""
    from wan22bot.engine.memory import usable_free

    total = 141 * GiB
    assert usable_free(140 * GiB, total, 1.0, 0) == 140 * GiB  # no cap: the driver's figure
    capped = usable_free(140 * GiB, total, 32 * GiB / total, 2 * GiB)
    assert capped == 30 * GiB  # the cap minus what this process's allocator already holds
    experts, text, work = 14 * GiB, 11 * GiB, 8 * GiB
    assert choose_mode("auto", 140 * GiB, 0, experts, text, work) == "resident"
    assert choose_mode("auto", capped, 0, experts, text, work) == "swap"
    assert usable_free(3 * GiB, total, 32 * GiB / total, 0) == 3 * GiB  # other processes took the rest
    assert usable_free(140 * GiB, total, 0.1, 20 * GiB) == 0  # already past the cap


@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_free_bytes_of_a_device_named_without_an_index(monkeypatch, name):
    """`model.device = "cuda"` (the default on a GPU box) has no index. torch's
    get_per_process_memory_fraction refuses such a device (ValueError), which stopped every model
    load on a GPU; the queries must get the allocator's index. The stand-ins check their argument
    with torch's own device-index rule, as the real functions do."""
    from torch.cuda._utils import _get_device_index

    from wan22bot.engine import memory

    seen = []

    def strict(value):
        def fn(device=None):
            seen.append(_get_device_index(device, optional=False))
            return value
        return fn

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", strict((100 * GiB, 141 * GiB)))
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", strict(32 / 141))
    monkeypatch.setattr(torch.cuda, "memory_reserved", strict(2 * GiB))
    assert memory.device_free_bytes(torch.device(name)) == 30 * GiB
    assert seen == [torch.device(name).index or 0] * 3
