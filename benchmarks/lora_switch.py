"""GPU check of the LoRA applier, from the repository root: `python3 benchmarks/lora_switch.py`.

1. the tiny expert in bf16 on CUDA: fuse / take out / fuse, three times, must be bit-exact;
2. the tiny generator on CUDA in swap and resident mode: fast, quality, fast; the quality video must
   equal one from a generator that never had the LoRA, the second fast video the first;
3. one Wan 2.2 A14B expert (random weights, bf16, "timing only") with a rank-64 LoRA on every
   linear layer of the blocks (LightX2V's shape): the time of each switch, the host copy kept for
   the originals, peak host and GPU memory.
"""
import os, sys, time, tempfile, pathlib, resource
import torch
sys.path.insert(0, os.getcwd())
from tests.lora.writers import lightx2v_like, params_of
from wan22bot.engine.lora import FusedLora, read_lora, _patches
from wan22bot.engine.tiny import TRANSFORMER_CONFIG
from diffusers import WanTransformer3DModel

dev = torch.device("cuda")
print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
tmp = pathlib.Path(tempfile.mkdtemp())

# 1. bf16 tiny expert on CUDA: fuse, out, in: bit exact
torch.manual_seed(2)
m = WanTransformer3DModel(**TRANSFORMER_CONFIG).to(dev, torch.bfloat16)
fresh = {k: v.clone() for k, v in m.state_dict().items()}
fl = FusedLora(m, read_lora(lightx2v_like(seed=1).write(tmp / "a.safetensors")), 1.0, device=dev)
fl.set(True); fused = {k: v.clone() for k, v in m.state_dict().items()}
bad = 0
for _ in range(3):
    fl.set(False); bad += sum(not torch.equal(v, fresh[k]) for k, v in m.state_dict().items())
    fl.set(True); bad += sum(not torch.equal(v, fused[k]) for k, v in m.state_dict().items())
print("1. cuda bf16 out/in mismatches:", bad, flush=True)

# 2. generator on CUDA, swap mode: fast, quality, fast vs fresh loads
import numpy as np
from PIL import Image
from wan22bot.config import ModelConfig
from wan22bot.engine.generator import GenerationRequest, TwoPassGenerator
img = Image.fromarray((np.random.RandomState(1).rand(96, 64, 3) * 255).astype("uint8"))
def req(lora): return GenerationRequest(image=img, width=64, height=96, frames=5, prompt="a cat", seed=4, steps=2, switch_step=1, lora=lora)
hi = lightx2v_like(seed=7).write(tmp / "hi.safetensors"); lo = lightx2v_like(seed=8).write(tmp / "lo.safetensors")
for mode in ("swap", "resident"):
    g = TwoPassGenerator(ModelConfig(device="cuda", memory=mode, lora_high=hi, lora_low=lo))
    f1 = g.generate(req(True)).frames; q = g.generate(req(False)).frames; f2 = g.generate(req(True)).frames
    never = TwoPassGenerator(ModelConfig(device="cuda", memory=mode)).generate(req(False)).frames
    print(f"2. {mode}: quality==never-LoRA {torch.equal(q, never)}, fast again==fast {torch.equal(f1, f2)}, fast!=quality {not torch.equal(f1, q)}", flush=True)
    del g

# 3. one A14B expert (random weights, bf16) + a rank-64 LightX2V-shaped LoRA: timings and host memory
from wan22bot.engine.random_weights import random_expert
e = random_expert(dev, torch.bfloat16, 1)
shapes = {n: tuple(p.shape) for n, p in e.named_parameters()}
gg = torch.Generator().manual_seed(0); sd = {}
for i in range(40):
    for wan, mod in [("self_attn.q","attn1.to_q"),("self_attn.k","attn1.to_k"),("self_attn.v","attn1.to_v"),("self_attn.o","attn1.to_out.0"),
                     ("cross_attn.q","attn2.to_q"),("cross_attn.k","attn2.to_k"),("cross_attn.v","attn2.to_v"),("cross_attn.o","attn2.to_out.0"),
                     ("ffn.0","ffn.net.0.proj"),("ffn.2","ffn.net.2")]:
        o, n_in = shapes[f"blocks.{i}.{mod}.weight"]
        sd[f"diffusion_model.blocks.{i}.{wan}.lora_down.weight"] = (torch.randn(64, n_in, generator=gg) * 0.01).bfloat16()
        sd[f"diffusion_model.blocks.{i}.{wan}.lora_up.weight"] = (torch.randn(o, 64, generator=gg) * 0.01).bfloat16()
        sd[f"diffusion_model.blocks.{i}.{wan}.alpha"] = torch.tensor(8.0)
        sd[f"diffusion_model.blocks.{i}.{wan}.diff_b"] = torch.zeros(o).bfloat16()
    sd[f"diffusion_model.blocks.{i}.diff_m"] = torch.zeros(1, 6, 5120).bfloat16()
from wan22bot.engine.lora import LoraFile
lora = LoraFile(pathlib.Path("a14b_synthetic.safetensors"), _patches(pathlib.Path("a14b_synthetic.safetensors"), sd))
probe = e.blocks[7].ffn.net[0].proj.weight.detach().clone()
fl = FusedLora(e, lora, 1.0, device=dev)
for label, on in (("fuse (first: keeps host copy)", True), ("take out", False), ("fuse again", True), ("take out again", False)):
    torch.cuda.synchronize(); t0 = time.perf_counter(); fl.set(on); torch.cuda.synchronize()
    print(f"3. A14B {label}: {time.perf_counter() - t0:.2f} s", flush=True)
print("3. exact after out:", torch.equal(e.blocks[7].ffn.net[0].proj.weight, probe), "; host copy GiB:", round(fl.kept_bytes / 2**30, 2),
      "; patched:", fl.report.render(), "; peak RSS GiB:", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 1), flush=True)
print("3. peak GPU GiB:", round(torch.cuda.max_memory_allocated() / 2**30, 1))
