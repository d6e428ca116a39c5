"""`block_kernels = "triton"`: the inputs of the blocks' fp8 matmuls made by our Triton kernels
(engine/block_kernels.py) inside a mirrored block forward (engine/fused_block.py).

Without a GPU the kernels run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET)
and the fp8 matmuls are torch's CPU `_scaled_mm`, so these check arithmetic and wiring, not speed.
"""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton", reason="the Triton kernels need triton (installed with the test extra)")
tl = triton.language

from diffusers import WanTransformer3DModel  # noqa: E402

from wan22bot.engine import block_kernels as bk  # noqa: E402
from wan22bot.engine import fused_block  # noqa: E402
from wan22bot.engine.custom_attention import CoreAttnProcessor, install_core, sdpa_core  # noqa: E402
from wan22bot.engine.fp8_linear import FP8Linear, convert_to_fp8  # noqa: E402
from wan22bot.engine.tiny import TRANSFORMER_CONFIG  # noqa: E402
from wan22bot.errors import ModelError  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEV = torch.device("cpu" if INTERPRETED else "cuda")


def _steps_apart(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """How many e4m3 values lie between each pair (0: equal), through the bit patterns."""
    def ordinal(t):
        b = t.view(torch.uint8).int()
        mag = b & 0x7F
        return torch.where(b & 0x80 != 0, -mag, mag)

    return (ordinal(got) - ordinal(want)).abs()


def _assert_fp8_close(got, want, share=0.001):
    """Equal but for a value near a rounding boundary here and there (the sums run in another
    order than torch's): at most `share` of the values, one e4m3 step apart."""
    assert got.dtype == want.dtype == torch.float8_e4m3fn and got.shape == want.shape
    steps = _steps_apart(got, want)
    assert int(steps.max()) <= 1
    assert float((steps > 0).float().mean()) <= share


def _stream(b=1, s=37, c=320, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(b, s, c, generator=g) * 4 * (1 + 3 * torch.rand(c, generator=g))).to(torch.bfloat16)
    a = torch.randn(b, s, c, generator=g).to(torch.bfloat16)
    gate = torch.randn(b, 1, c, generator=g)
    m, c_ = 1 + 0.2 * torch.randn(b, 1, c, generator=g), 0.2 * torch.randn(b, 1, c, generator=g)
    return [t.to(DEV) for t in (x, a, gate, m, c_)]


INV = 448.0 / 2.5  # a static scale that clips the largest normalised values, as calibration may not


@pytest.mark.parametrize("c", [320, 5120, 24, 256, 200])  # 200: the second tile is partly masked
def test_norm_matches_layer_norm_modulation_and_fp8_linears_cast(c):
    x, _, _, m, sh = _stream(c=c, s=13 if c == 5120 else 37)
    inv = torch.tensor(INV, device=DEV)
    got = bk.norm_fp8(x, m, sh, inv, 1e-6)
    _assert_fp8_close(got, bk.eager_residual_norm(x, None, None, m, sh, inv, 1e-6)[1])
    # the same as the block and FP8Linear compute it, written out once more
    y = torch.nn.functional.layer_norm(x.float(), (c,), eps=1e-6) * m + sh
    want = (y.to(torch.bfloat16).float() * inv).clamp(-448, 448).to(torch.float8_e4m3fn)
    _assert_fp8_close(got, want)
    assert float((got.float().abs() == 448).float().mean()) > 0  # the clamp was exercised


@pytest.mark.parametrize("gated", [False, True])
def test_residual_add_is_rounded_written_and_normalised(gated):
    x, a, gate, m, sh = _stream(b=2, s=13)
    inv = torch.tensor(INV, device=DEV)
    new, q = bk.residual_norm_fp8(x, a, gate if gated else None, m, sh, inv, 1e-6)
    want_new = (x.float() + (a * gate if gated else a.float())).to(torch.bfloat16)
    if INTERPRETED:
        assert torch.equal(new, want_new)
    else:  # the GPU may fuse the multiply-add: one bf16 step at most
        torch.testing.assert_close(new, want_new, rtol=2 ** -7, atol=0)
    _assert_fp8_close(q, bk.eager_residual_norm(new, None, None, m, sh, inv, 1e-6)[1])
    # and the batch's second row of vectors was the one used for its second element
    swapped = bk.residual_norm_fp8(x, a, gate.flip(0) if gated else None, m.flip(0), sh, inv, 1e-6)[1]
    assert _steps_apart(swapped[1], q[1]).float().mean() > 0.2


def test_every_tiling_and_prefetching_gives_the_same_values():
    """The benchmark's choices of rows per step, steps per program and prefetching (13 rows: no
    choice divides them; a batch of 2) all compute the same thing."""
    x, a, gate, m, sh = _stream(b=2, s=13)
    inv = torch.tensor(INV, device=DEV)
    want_new, want_q = bk.launch_norm(x, a, gate, m, sh, inv, 1e-6, "1x1x4")
    want_plain = bk.launch_norm(x, None, None, m, sh, inv, 1e-6, "1x1x4")[1].view(torch.uint8)
    for choice in sorted({*bk.NORM_CHOICE.values(), "1x8x4", "1x4x4p", "2x3x4p", "4x1x2"}):
        new, q = bk.launch_norm(x, a, gate, m, sh, inv, 1e-6, choice)
        assert torch.equal(new, want_new) and torch.equal(q.view(torch.uint8), want_q.view(torch.uint8)), choice
        assert bk.launch_norm(x, None, None, m, sh, inv, 1e-6, choice)[1].view(torch.uint8).equal(want_plain), choice


def test_per_channel_weight_and_bias_as_norm2_passes_them():
    x, a, gate, _, _ = _stream()
    w, bias = (1 + 0.3 * torch.randn(320)).to(DEV), (0.1 * torch.randn(320)).to(DEV)
    inv = torch.tensor(INV, device=DEV)
    new, q = bk.residual_norm_fp8(x, a, gate, w, bias, inv, 1e-6)
    ln = torch.nn.functional.layer_norm(new.float(), (320,), w, bias, 1e-6)
    _assert_fp8_close(q, bk.quantize_static(ln.to(torch.bfloat16), inv))


def test_gelu_matches_torchs_tanh_gelu_and_the_cast():
    g = torch.Generator().manual_seed(1)
    h = (torch.randn(3, 41, 96, generator=g) * 3).to(torch.bfloat16).to(DEV)
    h.view(-1)[:4] = torch.tensor([-30.0, 30.0, 0.0, -0.0])  # exp overflow and the far tails
    inv = torch.tensor(448.0 / 4.0, device=DEV)
    got = bk.gelu_fp8(h, inv)
    want = (torch.nn.functional.gelu(h, approximate="tanh").float() * inv).clamp(-448, 448).to(torch.float8_e4m3fn)
    _assert_fp8_close(got, want)
    assert got.float().view(-1)[:4].tolist() == [0.0, 448.0, 0.0, 0.0]
    # the exact GELU (erf) is another function: the kernel does not compute it
    erf = bk.quantize_static(torch.nn.functional.gelu(h), inv)
    assert float((_steps_apart(got, erf) > 0).float().mean()) > 0.01


def test_e4m3_rounding_is_half_to_even_down_to_subnormals():
    """The written-out rounding the interpreter uses, on exact ties and both sides of them: normal
    binades (quantum 2**(e-3)), subnormals (2**-9) and the largest value."""

    @triton.jit
    def round_kernel(x_ptr, o_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        tl.store(o_ptr + i, bk.e4m3_round(tl.load(x_ptr + i)))

    ties = [1.0625, 1.1875, 3.25, -1.0625, 2 ** -10, 3 * 2 ** -10, -(2 ** -10), 2 ** -6 + 2 ** -10, 440.0, 424.0]
    near = [1.0625 + 2 ** -20, 1.1875 - 2 ** -20, 447.9, 448.0, 0.0, -0.0, 2 ** -12, 1e-9, 17.0, -300.0, 0.3]
    x = torch.tensor(ties + near + [0.0] * (32 - len(ties) - len(near)), dtype=torch.float32, device=DEV)
    out = torch.empty_like(x)
    round_kernel[(1,)](x, out, N=32)
    assert torch.equal(out, x.to(torch.float8_e4m3fn).float())
    assert out[:4].tolist() == [1.0, 1.25, 3.25, -1.0]  # ties go to the even mantissa


def test_tiles_cover_the_row_without_waste():
    assert bk._tiles(5120) == (4096, 1024)
    assert bk._tiles(3072) == (2048, 1024)
    assert bk._tiles(256) == (128, 128)
    assert bk._tiles(24) == (16, 8)
    assert bk._tiles(320) == (256, 64)
    assert bk._tiles(1000) == (512, 512)  # 488 left over: masked in the second tile


def test_bad_input_is_refused_and_a_strided_view_is_read_by_value():
    x, a, _, m, sh = _stream()
    inv = torch.tensor(INV, device=DEV)
    with pytest.raises(ValueError, match="bf16"):
        bk.norm_fp8(x.float(), m, sh, inv, 1e-6)
    # a strided view (what a model that skipped diffusers' .contiguous() would hand the first block)
    # is read as its values, not as its memory
    t = x.transpose(1, 2).contiguous().transpose(1, 2)
    assert not t.is_contiguous() and torch.equal(t, x)
    assert bk.norm_fp8(t, m, sh, inv, 1e-6).view(torch.uint8).equal(bk.norm_fp8(x, m, sh, inv, 1e-6).view(torch.uint8))
    assert bk.gelu_fp8(t, inv).view(torch.uint8).equal(bk.gelu_fp8(x, inv).view(torch.uint8))
    new, q = bk.residual_norm_fp8(t, a, None, m, sh, inv, 1e-6)
    assert new.is_contiguous() and torch.equal(new, bk.residual_norm_fp8(x, a, None, m, sh, inv, 1e-6)[0])
    with pytest.raises(ValueError, match="addend"):
        bk.residual_norm_fp8(x, a[:, :5], None, m, sh, inv, 1e-6)
    with pytest.raises(ValueError, match="batch"):
        bk.norm_fp8(x, torch.ones(3, 1, 320, device=DEV), sh, inv, 1e-6)


# --- the block ---

@pytest.fixture
def one_row_programs(monkeypatch):
    """Under the interpreter every step of a program costs the same, masked or not, and the default
    tilings run 8-33 steps over a handful of rows; the block tests take one row per program, which
    the tiling test above shows computes the same bytes as the defaults."""
    if INTERPRETED:
        monkeypatch.setattr(bk, "NORM_CHOICE", dict.fromkeys(bk.NORM_CHOICE, "1x1x4"))


def _expert(seed=0, scaling="static"):
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**TRANSFORMER_CONFIG).eval()
    with torch.no_grad():  # norm2 starts as weight 1, bias 0: a forward that dropped either would pass
        for block in model.blocks:
            block.norm2.weight.normal_(1.0, 0.3)
            block.norm2.bias.normal_(0.0, 0.3)
    model = model.to(DEV, torch.bfloat16)
    convert_to_fp8(model, use_scaled_mm=True, scaling=scaling)
    install_core(model, sdpa_core)
    return model


def _inputs(seed=0, frames=2, h=6, w=8):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(1, 36, frames, h, w, generator=g).to(DEV, torch.bfloat16)
    text = torch.randn(1, 7, 32, generator=g).to(DEV, torch.bfloat16)
    return lat, text, torch.tensor([700.0], device=DEV)


@torch.no_grad()
def _run(model, inputs):
    lat, text, t = inputs
    return model(hidden_states=lat, timestep=t, encoder_hidden_states=text, return_dict=False)[0].float()


def _counting(monkeypatch):
    calls = []
    real_norm, real_gelu = bk.launch_norm, bk.launch_gelu
    monkeypatch.setattr(bk, "launch_norm", lambda *a: calls.append("norm") or real_norm(*a))
    monkeypatch.setattr(bk, "launch_gelu", lambda *a: calls.append("gelu") or real_gelu(*a))
    return calls


def test_fused_block_matches_diffusers_block_once_calibrated(monkeypatch, one_row_programs):
    calls = _counting(monkeypatch)
    model = _expert()
    assert fused_block.install(model) == len(model.blocks) == 2
    first = _run(model, _inputs(seed=5))  # calibrates every layer through diffusers' own forward
    assert calls == []
    assert all(m.calibrated for m in model.modules() if isinstance(m, FP8Linear))
    fused = _run(model, _inputs())
    assert calls == ["norm", "norm", "norm", "gelu"] * 2
    assert fused_block.uninstall(model) == 2
    stock = _run(model, _inputs())
    err = float((fused - stock).norm() / stock.norm())
    assert err < 0.01, err
    assert _run(model, _inputs(seed=5)).allclose(first)  # uninstalled: diffusers' forward, same layers
    # a block forward that drops the gate of the attention's residual is caught by the comparison
    fused_block.install(model)
    real = bk.residual_norm_fp8
    monkeypatch.setattr(bk, "residual_norm_fp8",
                        lambda x, a, g, *r: real(x, a, None if g is not None else g, *r))
    broken = _run(model, _inputs())
    assert float((broken - stock).norm() / stock.norm()) > 5 * max(err, 1e-3)


def test_uncalibrated_rowwise_or_delayed_layers_keep_diffusers_forward(monkeypatch, one_row_programs):
    calls = _counting(monkeypatch)
    for scaling in ("rowwise", "delayed"):  # delayed scales move with every call: never frozen
        model = _expert(scaling=scaling)
        fused_block.install(model)
        for _ in range(3):
            _run(model, _inputs())
        assert calls == [], scaling
    model = _expert()
    fused_block.install(model)
    _run(model, _inputs())
    model.blocks[1].attn2.to_q.reset_calibration()  # a LoRA change resets what it patched
    _run(model, _inputs())
    assert calls == ["norm", "norm", "norm", "gelu"]  # block 0 fused, block 1 calibrating again


def test_fused_block_traces_as_one_graph(one_row_programs):
    """`compile_repeated_blocks(fullgraph=True)` must see the kernels as opaque ops: no graph break
    (aot_eager runs the ops' fake shapes through the trace, as inductor would)."""
    torch._dynamo.reset()
    model, eager = _expert(), _expert()
    fused_block.install(model)
    fused_block.install(eager)
    for block in model.blocks:  # compiled before the calibrating call, as the generator does
        block.compile(fullgraph=True, backend="aot_eager")
    for inputs in (_inputs(seed=5), _inputs()):  # diffusers' forward calibrating, then the fused one
        torch.testing.assert_close(_run(model, inputs), _run(eager, inputs), rtol=0, atol=0)
    torch._dynamo.reset()


def test_forward_quantized_is_the_layers_own_static_step():
    model = _expert()
    lin = model.blocks[0].ffn.net[2]
    x = torch.randn(2, 9, lin.in_features).to(DEV, torch.bfloat16) * 3
    want = lin(x)  # calibrates
    assert lin.static_input_scale_ready()
    s = lin.input_scale()
    got = lin.forward_quantized(bk.quantize_static(x, 1.0 / s), s, torch.bfloat16)
    assert torch.equal(got, lin(x)) and torch.equal(got, want)


def test_wanted_says_why_not(monkeypatch):
    monkeypatch.setattr(bk, "_CHECKS", {})
    model = _expert()
    cuda = torch.device("cuda")
    import wan22bot.engine.fp8_linear as fl

    monkeypatch.setattr(fl, "fp8_matmul_supported", lambda device: device.type == "cuda")
    ok = lambda device: 0.0  # noqa: E731
    assert fused_block.wanted("compiled", model, cuda, "static", "fp8", checker=ok) == (False, "block_kernels = compiled")
    use, why = fused_block.wanted("auto", model, cuda, "rowwise", "fp8", checker=ok)
    assert not use and "static" in why
    use, why = fused_block.wanted("auto", model, cuda, "static", "bf16", checker=ok)
    assert not use and "weights bf16" in why
    use, why = fused_block.wanted("auto", model, torch.device("cpu"), "static", "fp8", checker=ok)
    assert not use and "CUDA" in why
    use, why = fused_block.wanted("auto", model, cuda, "static", "fp8", dtype=torch.float16, checker=ok)
    assert not use and "float16" in why
    use, why = fused_block.wanted("auto", model, cuda, "static", "fp8", checker=ok)
    assert use and "self-check error 0.0000" in why
    monkeypatch.setattr(fused_block, "MIRRORED", "0" * 64)
    use, why = fused_block.wanted("auto", model, cuda, "static", "fp8", checker=ok)
    assert not use and "mirrors" in why
    with pytest.raises(ModelError, match="block_kernels = \"triton\" cannot run here"):
        fused_block.wanted("triton", model, cuda, "static", "fp8", checker=ok)


def test_a_failing_self_check_is_remembered_and_keeps_the_compiled_path(monkeypatch):
    monkeypatch.setattr(bk, "_CHECKS", {})
    import wan22bot.engine.fp8_linear as fl

    monkeypatch.setattr(fl, "fp8_matmul_supported", lambda device: True)
    model = _expert()
    runs = []

    def bad(device):
        runs.append(device)
        raise RuntimeError("no kernel image")

    for _ in range(2):
        use, why = fused_block.wanted("auto", model, torch.device("cuda"), "static", "fp8", checker=bad)
        assert not use and "no kernel image" in why
    assert len(runs) == 1
    monkeypatch.setattr(bk, "_CHECKS", {})
    use, why = fused_block.wanted("auto", model, torch.device("cuda"), "static", "fp8", checker=lambda d: 0.02)
    assert not use and "0.0200 > 0.01" in why


def test_the_self_check_passes_and_catches_a_wrong_kernel(monkeypatch):
    assert bk.self_check(DEV, channels=320, rows=9) <= bk.SELF_CHECK_MAX_ERROR
    real = bk.launch_gelu
    monkeypatch.setattr(bk, "launch_gelu", lambda h, inv, *r: real(h, inv * 1.2, *r))
    assert bk.self_check(DEV, channels=320, rows=9) > bk.SELF_CHECK_MAX_ERROR


def test_blocks_it_does_not_mirror_are_left_alone():
    model = _expert()
    model.blocks[0].ffn.net[0].approximate = "none"
    model.blocks[1].norm2 = torch.nn.Identity()
    assert "tanh GELU" in fused_block.unfit(model.blocks[0])
    assert "affine LayerNorm" in fused_block.unfit(model.blocks[1])
    assert fused_block.install(model) == 0
    model = _expert()
    hooked = model.blocks[0]
    hooked.forward = lambda *a, **k: None  # what a group-offload hook does to a block
    assert "hook" in fused_block.unfit(hooked)
    assert fused_block.install(model) == 1 and fused_block.uninstall(model) == 1
    assert "forward" in vars(hooked)  # the hook stays
    # and diffusers' own block-level group offload, as `memory = "offload"` sets it up
    offloaded = WanTransformer3DModel(**TRANSFORMER_CONFIG)
    offloaded.enable_group_offload(onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                                   offload_type="block_level", num_blocks_per_group=1)
    assert all("hook" in fused_block.unfit(b) for b in offloaded.blocks)
    assert fused_block.install(offloaded) == 0


def test_the_mirrored_source_is_the_installed_one():
    """The pin matches the diffusers this project installs; a release that changes the block fails
    here first (update the mirror and the pin together)."""
    assert fused_block.installed_digest() == fused_block.MIRRORED


def test_processors_attend_equals_their_call():
    """fused_block calls `attend` with projections it computed; it must be the rest of `__call__`."""
    model = _expert()
    attn = model.blocks[0].attn1
    proc = CoreAttnProcessor(sdpa_core)
    x = torch.randn(1, 12, attn.to_q.in_features).to(DEV, torch.bfloat16)
    cos = torch.ones(1, 12, 1, attn.to_q.out_features // attn.heads, device=DEV)
    sin = torch.zeros_like(cos)
    with torch.no_grad():
        want = proc(attn, x, rotary_emb=(cos, sin))
        got = proc.attend(attn, attn.to_q(x), attn.to_k(x), attn.to_v(x), (cos, sin))
    assert torch.equal(got, want)


def test_a_batch_of_two_timesteps_reads_its_own_modulation(monkeypatch, one_row_programs):
    """Batched inputs (CFG's two prompts, or two timesteps) each take their own modulation rows: the
    fused block against diffusers' block, and an element batched against the same element alone."""
    calls = _counting(monkeypatch)
    model = _expert()
    fused_block.install(model)
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(2, 36, 1, 4, 6, generator=g).to(DEV, torch.bfloat16)
    text = torch.randn(2, 7, 32, generator=g).to(DEV, torch.bfloat16)

    @torch.no_grad()
    def run(lat, text, t):
        return model(hidden_states=lat, timestep=torch.tensor(t, device=DEV), encoder_hidden_states=text,
                     return_dict=False)[0].float()

    run(lat, text, [900.0, 50.0])  # calibrates
    fused = run(lat, text, [700.0, 100.0])
    assert calls
    fused_block.uninstall(model)
    stock = run(lat, text, [700.0, 100.0])
    for i in range(2):
        assert float((fused[i] - stock[i]).norm() / stock[i].norm()) < 0.01, i
    fused_block.install(model)
    alone = run(lat[1:], text[1:], [100.0])
    assert float((fused[1] - alone[0]).norm() / alone[0].norm()) < 0.01
    swapped = run(lat, text, [100.0, 700.0])  # the other element's timestep: another result
    assert float((swapped[1] - fused[1]).norm() / fused[1].norm()) > 0.05
