"""`qk_prep = "triton"`: sage-fused's Q and K prepared by our Triton kernels (engine/qk_prep.py).

Without a GPU the kernels run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET),
so these check their arithmetic and memory layout, not their speed: against the torch path that the
compiled blocks run (RMSNorm -> interleaved RoPE -> sage_prequant's quantisers).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton", reason="the Triton kernels need triton (installed with the test extra)")
tl = triton.language

from diffusers.models.transformers.transformer_wan import WanAttention, WanRotaryPosEmbed  # noqa: E402

from wan22bot.engine import qk_prep, sage_prequant  # noqa: E402
from wan22bot.engine.custom_attention import CoreAttnProcessor, rotary, sdpa_core  # noqa: E402
from wan22bot.engine.sage_prequant import quantize_k, quantize_q  # noqa: E402
from wan22bot.errors import ModelError  # noqa: E402

HEADS = 3
# Under the interpreter the kernels take CPU tensors; with a GPU they run for real on it, where eager
# PyTorch's own kernels may round a value differently by one bf16 step.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEV = torch.device("cpu" if INTERPRETED else "cuda")


def _inputs(frames=2, h=10, w=14, seed=0):
    """A q/k projection output with channel outliers, the RMSNorm, and Wan's rotary tables for a
    (frames, h/2, w/2) token grid: 70 tokens by default, not a multiple of any tile."""
    g = torch.Generator().manual_seed(seed)
    c = HEADS * 128
    cos, sin = WanRotaryPosEmbed(128, (1, 2, 2), 1024)(torch.zeros(1, 16, frames, h, w))
    s = cos.shape[1]
    x = (torch.randn(1, s, c, generator=g) * (1 + 3 * torch.rand(c, generator=g)) + 0.5).to(torch.bfloat16)
    norm = torch.nn.RMSNorm(c, eps=1e-6)
    norm.weight.data = 1 + 0.3 * torch.randn(c, generator=g)
    return x.to(DEV), norm.to(DEV, torch.bfloat16), cos.to(DEV), sin.to(DEV)


@torch.no_grad()
def _reference(x, norm, cos, sin):
    return rotary(norm(x).unflatten(2, (HEADS, -1)), cos, sin)


@pytest.mark.parametrize("per_thread", [True, False])
def test_q_matches_the_compiled_paths_quantisation(per_thread):
    x, norm, cos, sin = _inputs()
    q8, qs = qk_prep.q_int8(x, norm.weight, 1e-6, cos, sin, HEADS, per_thread)
    r8, rs = quantize_q(_reference(x, norm, cos, sin), per_thread)
    assert q8.shape == r8.shape == (1, 128, HEADS, 128) and q8.dtype == torch.int8
    assert qs.shape == rs.shape
    # (on a GPU eager PyTorch may round a group's largest value one bf16 step apart: 2**-8)
    torch.testing.assert_close(qs, rs, rtol=1e-6 if INTERPRETED else 2 ** -7, atol=0)
    diff = (q8.int() - r8.int()).abs()
    # the kernel divides by the scale where eager PyTorch multiplies by its reciprocal: values within
    # an ulp of a .5 tie may round either way; nothing else differs
    assert int(diff.max()) <= 1
    assert float((diff > 0).float().mean()) < (1e-3 if INTERPRETED else 1e-2)
    assert not q8[:, 70:].any(), "the rows padding Q to 64 must be zeros"


def test_q_scales_group_the_rows_the_kernel_expects():
    # one huge value in row 9 of head 1 (after the norm, nearly all of that row's weight sits in it):
    # per thread it raises the scale shared by rows 1 and 9, and no other
    x, norm, cos, sin = _inputs()
    x[0, 9, 128 + 5] = 2000.0
    _, qs = qk_prep.q_int8(x, norm.weight, 1e-6, cos, sin, HEADS, True)
    top2 = qs[0, 1].topk(2)
    assert top2.indices[0].item() == sage_prequant.scale_index(16, "q", True)[9].item() == 1
    assert top2.values[0] > 2 * top2.values[1]


def test_k_is_normed_and_rotated_exactly_and_its_mean_is_the_sequence_mean():
    x, norm, cos, sin = _inputs()
    kr, km = qk_prep.k_roped(x, norm.weight, 1e-6, cos, sin, HEADS)
    ref = _reference(x, norm, cos, sin)
    assert kr.dtype == torch.bfloat16 and kr.shape == ref.shape
    if INTERPRETED:
        assert torch.equal(kr, ref)
        assert torch.equal(km, ref.mean(dim=1, keepdim=True))
    else:
        torch.testing.assert_close(kr, ref, rtol=2 ** -7, atol=0)
        torch.testing.assert_close(km, ref.mean(dim=1, keepdim=True), rtol=2 ** -7, atol=1e-3)
    # the smoothing mean handed over gives the same int8 K as quantize_k taking it itself
    if INTERPRETED:
        a = quantize_k(kr, True, mean=km)
        b = quantize_k(ref, True)
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_a_batch_of_two_is_two_independent_rows_of_programs():
    x1, norm, cos, sin = _inputs(seed=1)
    x2, _, _, _ = _inputs(seed=2)
    x = torch.cat([x1, x2])
    q8, qs = qk_prep.q_int8(x, norm.weight, 1e-6, cos, sin, HEADS, False)
    kr, km = qk_prep.k_roped(x, norm.weight, 1e-6, cos, sin, HEADS)
    for i, xi in enumerate((x1, x2)):
        qi, si = qk_prep.q_int8(xi, norm.weight, 1e-6, cos, sin, HEADS, False)
        ki, mi = qk_prep.k_roped(xi, norm.weight, 1e-6, cos, sin, HEADS)
        assert torch.equal(q8[i:i + 1], qi) and torch.equal(qs[i:i + 1], si)
        assert torch.equal(kr[i:i + 1], ki) and torch.equal(km[i:i + 1], mi)
    assert not torch.equal(q8[0], q8[1])


@torch.no_grad()
def test_k_mean_covers_every_block_of_rows():
    # 3 frames of 5x7: 105 tokens, four K programs of ROWS_K = 32 rows, the last partly masked
    x, norm, cos, sin = _inputs(frames=3)
    assert x.shape[1] == 105 and qk_prep.ROWS_K == 32
    _, km = qk_prep.k_roped(x, norm.weight, 1e-6, cos, sin, HEADS)
    ref = _reference(x, norm, cos, sin).float().mean(dim=1, keepdim=True)
    torch.testing.assert_close(km.float(), ref, rtol=1e-2, atol=1e-2)
    n = qk_prep.ROWS_K
    one = _reference(x[:, :n], norm, cos[:, :n], sin[:, :n]).float().mean(dim=1, keepdim=True)
    assert float((km.float() - one).abs().max()) > 0.05, "a mean over the first program's rows only would pass"
    full = _reference(x[:, :96], norm, cos[:, :96], sin[:, :96]).float().mean(dim=1, keepdim=True)
    assert float((km.float() - full).abs().max()) > 0.01, "a mean that drops the partly masked program would pass"


def _cpu_sage(q8, k8, v8, q_scale, k_scale, v_scale, seq_len, sm_scale, per_thread):
    """What the sm90 kernel computes, on the CPU: attention over the dequantised inputs."""
    q, k, v = sage_prequant.dequantize(q8, q_scale, k8, k_scale, v8, v_scale, seq_len, per_thread)
    out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), scale=sm_scale)
    return out.transpose(1, 2).to(torch.bfloat16)


@torch.no_grad()
def test_processor_matches_stock_attention(monkeypatch):
    monkeypatch.setattr(sage_prequant, "sage_sm90_prequant", _cpu_sage)
    torch.manual_seed(0)
    attn = WanAttention(dim=HEADS * 128, heads=HEADS, dim_head=128, eps=1e-6).to(DEV, torch.bfloat16)
    for p in attn.parameters():
        p.data.normal_(0, 0.05)
    attn.norm_q.weight.data.fill_(1.0)
    attn.norm_k.weight.data.fill_(1.0)
    x, _, cos, sin = _inputs()
    x = x * 0.1
    ref_proc = CoreAttnProcessor(sdpa_core)
    ref = ref_proc(attn, x, rotary_emb=(cos, sin)).float()
    out = qk_prep.TritonPrepSageProcessor(per_thread=True)(attn, x, rotary_emb=(cos, sin)).float()
    err = float((out - ref).norm() / ref.norm())
    assert err < 0.05, err
    # the check can fail: K rotated with the wrong sign of sin is far off
    no_rope = qk_prep.TritonPrepSageProcessor(per_thread=True)(attn, x, rotary_emb=(cos, -sin)).float()
    assert float((no_rope - ref).norm() / ref.norm()) > 5 * err
    # cross attention goes to the plain processor (SDPA over the text tokens)
    ctx = torch.randn(1, 7, HEADS * 128, dtype=torch.bfloat16, device=DEV)
    cross = qk_prep.TritonPrepSageProcessor()(attn, x, encoder_hidden_states=ctx)
    assert torch.equal(cross, ref_proc(attn, x, encoder_hidden_states=ctx))


@torch.no_grad()
def test_per_warp_processor_hands_the_kernel_what_the_torch_quantisers_give(monkeypatch):
    """With per-warp scales (sage-fused's default) K's int8 and V's fp8 steps are
    engine/kv_quant.py's kernels; switched off, torch code computes them: the attention kernel
    receives the same bytes, so the output is the same, and close to stock attention."""
    seen = []

    def spy(*args):
        seen.append([a.clone() if isinstance(a, torch.Tensor) else a for a in args])
        return _cpu_sage(*args)

    monkeypatch.setattr(sage_prequant, "sage_sm90_prequant", spy)
    torch.manual_seed(1)
    attn = WanAttention(dim=HEADS * 128, heads=HEADS, dim_head=128, eps=1e-6).to(DEV, torch.bfloat16)
    for p in attn.parameters():
        p.data.normal_(0, 0.05)
    x, _, cos, sin = _inputs()
    proc = qk_prep.TritonPrepSageProcessor(per_thread=False)
    assert proc.kv_kernels
    fast = proc(attn, x * 0.1, rotary_emb=(cos, sin))
    proc.kv_kernels = False
    torch_steps = proc(attn, x * 0.1, rotary_emb=(cos, sin))
    assert torch.equal(fast, torch_steps)
    for a, b in zip(*seen, strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a.view(torch.uint8) if a.dtype == torch.float8_e4m3fn else a,
                               b.view(torch.uint8) if b.dtype == torch.float8_e4m3fn else b)
    ref = CoreAttnProcessor(sdpa_core)(attn, x * 0.1, rotary_emb=(cos, sin)).float()
    assert float((fast.float() - ref).norm() / ref.norm()) < 0.05


def test_kv_kernels_are_used_only_where_they_match_the_torch_quantisers(monkeypatch):
    from wan22bot.engine import kv_quant

    monkeypatch.setattr(kv_quant, "_CHECKS", {})
    assert kv_quant.checked(DEV) is None and kv_quant._CHECKS[str(DEV)] == 0.0
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([torch.nn.Module()])
    for name in ("attn1", "attn2"):
        setattr(model.blocks[0], name, WanAttention(dim=256, heads=2, dim_head=128).to(DEV))
    qk_prep.install(model)
    assert all(b.processor.kv_kernels for b in (model.blocks[0].attn1, model.blocks[0].attn2))
    # a V step one scale off differs from the torch quantiser: the check says so, and install keeps torch code
    real = kv_quant.v_fp8
    monkeypatch.setattr(kv_quant, "v_fp8", lambda v, heads: (lambda out: (out[0], out[1] * 1.001))(real(v, heads)))
    monkeypatch.setattr(kv_quant, "_CHECKS", {})
    why = kv_quant.checked(DEV)
    assert why and "self-check error" in why
    qk_prep.install(model)
    assert not model.blocks[0].attn1.processor.kv_kernels
    # the verdict is the one for the device the model will run on, not where it is parked
    monkeypatch.setattr(kv_quant, "_CHECKS", {"cuda:0": 0.0, str(DEV): "the self-check raised RuntimeError: no driver"})
    qk_prep.install(model, device=torch.device("cuda:0"))
    assert model.blocks[0].attn1.processor.kv_kernels
    qk_prep.install(model)
    assert not model.blocks[0].attn1.processor.kv_kernels
    # the verdict is in what the load logs
    monkeypatch.setattr(qk_prep, "_CHECKS", {})
    monkeypatch.setattr(kv_quant, "_CHECKS", {"cuda": 0.25})
    use, why = qk_prep.wanted("auto", "sage-fused", torch.device("cuda"), lambda device: 0.001)
    assert use and why.endswith("K's int8 and V's fp8 steps compiled (the self-check error 0.2500 > 0.0)")
    monkeypatch.setattr(kv_quant, "_CHECKS", {"cuda": 0.0})
    assert qk_prep.wanted("auto", "sage-fused", torch.device("cuda"), lambda device: 0.001)[1].endswith(
        "K's int8 and V's fp8 steps too, bit-exact")


def test_rejects_what_it_was_not_built_for():
    x, norm, cos, sin = _inputs()
    with pytest.raises(ValueError, match="bf16"):
        qk_prep.q_int8(x.float(), norm.weight, 1e-6, cos, sin, HEADS, True)
    with pytest.raises(ValueError, match="head size 128"):
        qk_prep.k_roped(x[..., :320], norm.weight, 1e-6, cos, sin, 5)


def test_setting(monkeypatch):
    monkeypatch.setattr(qk_prep, "_CHECKS", {})
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    passes = lambda device: 0.002  # noqa: E731
    assert qk_prep.wanted("compiled", "sage-fused", cuda, passes) == (False, "qk_prep = compiled")
    use, why = qk_prep.wanted("auto", "sage-fused", cuda, passes)
    assert use is True and "self-check error 0.0020" in why
    use, why = qk_prep.wanted("auto", "sage-warp", cuda, passes)
    assert not use and "sage-warp" in why
    assert qk_prep.wanted("auto", "sage-fused", cpu, passes)[0] is False
    with pytest.raises(ModelError, match="qk_prep = \"triton\" cannot run here: it needs a CUDA device"):
        qk_prep.wanted("triton", "sage-fused", cpu, passes)


def test_a_kernel_that_fails_its_self_check_is_not_used(monkeypatch):
    cuda = torch.device("cuda")

    def broken(device):
        raise RuntimeError("PTX for this GPU could not be built")

    monkeypatch.setattr(qk_prep, "_CHECKS", {})
    use, why = qk_prep.wanted("auto", "sage-fused", cuda, broken)
    assert not use and "self-check raised RuntimeError: PTX" in why
    # the second expert gets the same verdict without running the check again
    assert qk_prep.wanted("auto", "sage-fused", cuda, lambda device: 0.0) == (False, why)
    monkeypatch.setattr(qk_prep, "_CHECKS", {})
    use, why = qk_prep.wanted("auto", "sage-fused", cuda, lambda device: 0.3)
    assert not use and "self-check error 0.3000 > 0.01" in why
    with pytest.raises(ModelError, match="self-check error 0.3000"):
        qk_prep.wanted("triton", "sage-fused", cuda, lambda device: 0.3)  # cached: the same verdict


def test_self_check_passes_the_kernels_and_catches_a_wrong_one(monkeypatch):
    """The check itself, on the CPU (interpreter): small for a correct kernel, large when the
    kernel's Q scales are read as the other granularity would lay them out."""
    err = qk_prep.self_check(DEV, heads=2, frames=2)
    assert err <= qk_prep.SELF_CHECK_MAX_ERROR
    real = qk_prep.q_int8

    def swapped(x, weight, eps, cos, sin, heads, per_thread):
        q8, qs = real(x, weight, eps, cos, sin, heads, per_thread)
        return q8, qs.flip(-1)  # scales in the wrong order

    monkeypatch.setattr(qk_prep, "q_int8", swapped)
    assert qk_prep.self_check(DEV, heads=2, frames=2) > 10 * qk_prep.SELF_CHECK_MAX_ERROR


def test_the_benchmarks_default_path_is_the_generators(monkeypatch):
    """bench.coldstart and bench.profile build a bare expert and apply the default path through
    bench/default_path.py: fp8 layers with ModelConfig's scaling and fast accumulation, auto
    attention, qk_prep asked with the chosen backend, compiled blocks."""
    from diffusers import WanTransformer3DModel

    from wan22bot.bench.default_path import apply_default_path
    from wan22bot.config import ModelConfig
    from wan22bot.engine.fp8_linear import FP8Linear
    from wan22bot.engine.tiny import TRANSFORMER_CONFIG

    asked = []
    monkeypatch.setattr(qk_prep, "wanted", lambda setting, backend, device: (asked.append((setting, backend)) or
                                                                              (False, "asked")))
    from wan22bot.engine import fused_block

    fused_asked = []
    monkeypatch.setattr(fused_block, "wanted", lambda setting, model, device, scaling, weights:
                        (fused_asked.append((setting, scaling, weights)) or (False, "asked too")))
    model = WanTransformer3DModel(**TRANSFORMER_CONFIG)
    compiled = []
    monkeypatch.setattr(model, "compile_repeated_blocks", lambda **kw: compiled.append(kw))
    path = apply_default_path(model, torch.device("cpu"))
    cfg = ModelConfig()
    layers = [m for m in model.blocks.modules() if isinstance(m, FP8Linear)]
    assert layers and all(m.scaling == cfg.fp8_scaling and m.fast_accum == cfg.fp8_fast_accum for m in layers)
    assert asked == [(cfg.qk_prep, "sdpa")] and compiled == [{"fullgraph": True}]
    assert fused_asked == [(cfg.block_kernels, cfg.fp8_scaling, "fp8")]
    assert path == {"attention": "sdpa (auto)", "fp8_scaling": cfg.fp8_scaling, "fp8_fast_accum": "True",
                    "qk_prep": "compiled (asked)", "block_kernels": "compiled (asked too)"}


def test_offsets_past_32_bits_take_the_eager_path(monkeypatch):
    """The kernels' int32 offsets would wrap past 2**31 elements (161 frames at 2048x1536); those
    inputs go through eager PyTorch instead, with the same results. Here the limit is lowered so a
    small input crosses it."""
    x, norm, cos, sin = _inputs()
    q_kernel = qk_prep.q_int8(x, norm.weight, 1e-6, cos, sin, HEADS, False)
    k_kernel = qk_prep.k_roped(x, norm.weight, 1e-6, cos, sin, HEADS)
    launched = []
    real_q, real_k = qk_prep.launch_q, qk_prep.launch_k
    monkeypatch.setattr(qk_prep, "launch_q", lambda *a: launched.append("q") or real_q(*a))
    monkeypatch.setattr(qk_prep, "launch_k", lambda *a: launched.append("k") or real_k(*a))
    monkeypatch.setattr(qk_prep, "INT32_MAX", x.numel() - 2)  # the last element of x is past it
    q_eager = qk_prep.q_int8(x, norm.weight, 1e-6, cos, sin, HEADS, False)
    k_eager = qk_prep.k_roped(x, norm.weight, 1e-6, cos, sin, HEADS)
    assert launched == []
    torch.testing.assert_close(q_eager[1], q_kernel[1], rtol=1e-6 if INTERPRETED else 2 ** -7, atol=0)
    assert int((q_eager[0].int() - q_kernel[0].int()).abs().max()) <= 1
    torch.testing.assert_close(k_eager[0], k_kernel[0], rtol=0 if INTERPRETED else 2 ** -7, atol=0)
    # and a size inside the limit still launches the kernels
    monkeypatch.setattr(qk_prep, "INT32_MAX", 2**31 - 1)
    qk_prep.q_int8(x, norm.weight, 1e-6, cos, sin, HEADS, False)
    qk_prep.k_roped(x, norm.weight, 1e-6, cos, sin, HEADS)
    assert launched == ["q", "k"]


def test_tables_with_other_strides_are_read_right():
    x, norm, cos, sin = _inputs()
    wide = torch.cat([sin, torch.zeros_like(sin)], dim=-1)[..., :128]  # same values, row stride 256
    assert wide.stride() != cos.stride()
    kr, _ = qk_prep.k_roped(x, norm.weight, 1e-6, cos, wide, HEADS)
    ref = _reference(x, norm, cos, sin)
    torch.testing.assert_close(kr, ref, rtol=0 if INTERPRETED else 2 ** -7, atol=0)


def test_not_bf16_means_no_triton_prep(monkeypatch):
    """fp16 or fp32 models run sage-fused too; the kernels take bf16 only, so `auto` leaves the
    compiled prep in place and the processor hands anything else to the plain path."""
    monkeypatch.setattr(qk_prep, "_CHECKS", {})
    cuda = torch.device("cuda")
    use, why = qk_prep.wanted("auto", "sage-fused", cuda, lambda device: 0.0, dtype=torch.float16)
    assert not use and "bf16" in why and "float16" in why
    seen = []

    class Plain:
        def __call__(self, attn, hidden_states, *args):
            seen.append(hidden_states.dtype)
            return hidden_states

    proc = qk_prep.TritonPrepSageProcessor(fallback=Plain())
    x = torch.zeros(1, 4, 256, dtype=torch.float16)
    assert proc(None, x, rotary_emb=(None, None)) is x and seen == [torch.float16]


def test_split_mode_keeps_the_sage_fused_core(caplog):
    """Split mode (gpus/split.py) wraps each block's attention core for the head exchange; with the
    Triton prep installed it must still get sage-fused's core, not fall back to SDPA."""
    import logging

    from diffusers import WanTransformer3DModel

    from wan22bot.engine.sage_prequant import sage_fused_core, sage_fused_thread_core
    from wan22bot.engine.tiny import TRANSFORMER_CONFIG
    from wan22bot.gpus.split import make_sequence_parallel

    assert qk_prep.TritonPrepSageProcessor().core is sage_fused_core
    assert qk_prep.TritonPrepSageProcessor(per_thread=True).core is sage_fused_thread_core
    model = WanTransformer3DModel(**TRANSFORMER_CONFIG)
    qk_prep.install(model)
    with caplog.at_level(logging.INFO, logger="wan22bot.gpus.split"):
        assert make_sequence_parallel(model, rank=0, n=1) == len(model.blocks)
    assert f"(core: {sage_fused_core.__name__})" in caplog.text

def test_int8_rounding_is_half_to_even_as_torch_round():
    """The kernels round x.5 ties to even, as torch.round (and so quantize_q) does; the Q test above
    tolerates one-step differences near ties, so the rule is pinned here on exact ties."""

    @triton.jit
    def rne_kernel(x_ptr, o_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        tl.store(o_ptr + i, qk_prep.rne(tl.load(x_ptr + i)))

    x = torch.tensor([-127.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 126.5, 0.49999997, -3.2, 7.7, 0.0, 100.0, -0.0,
                      64.5], device=DEV)
    out = torch.empty_like(x)
    rne_kernel[(1,)](x, out, N=16)
    assert torch.equal(out, torch.round(x))
