#!/usr/bin/env bash
# The GPU benchmark runs behind docs/PERFORMANCE.md, one step per call of a lent H100/H200 machine.
#
#   benchmarks/h200.sh sage      build SageAttention 2 (sm90 kernels) from a source tree in .sage/
#   benchmarks/h200.sh levers25  per-forward levers at 25 frames (all variants)
#   benchmarks/h200.sh levers81  per-forward levers at 81 frames (the variants that matter there)
#   benchmarks/h200.sh e2e       photo -> MP4 on the default path, with the stock baseline
#   benchmarks/h200.sh swap32    the 32 GB card under a 32 GiB cap
#   benchmarks/h200.sh coldstart the first compiled call, cold and with a warm compile cache
#   benchmarks/h200.sh tail      everything after pass 2 (decode, RIFE, colour, encode), serial vs overlapped
#   benchmarks/h200.sh round3    levers at 81 frames (stock, fp8static+auto+compile, fp8static+sagewarp+compile),
#                                then the tail at bf16 with each VAE lever (and none), PSNR against fp32; ~8 min
#   benchmarks/h200.sh round3e2e the first compiled call at 81 frames (cold cache, static fp8 scales), then
#                                photo -> MP4 at 81 frames on benchmarks/default.toml (image encode shortcut on); ~5 min
#   benchmarks/h200.sh levers25r3 stock and the default path at 25 frames; ~1 min
#   benchmarks/h200.sh profile81 one 81-frame forward of the default path under torch.profiler; ~2 min
#   benchmarks/h200.sh round5    the default path at 81 and 25 frames against inductor's coordinate-descent
#                                tuning and per-warp sage-fused; ~6 min (then coldstart81: ~3 min)
#   benchmarks/h200.sh round6    sage-fused's Q/K prep alone, compiled vs Triton (bench.qk_prep), then the default
#                                path at 81 and 25 frames with the Triton prep / coordinate-descent / both; ~9 min
#   benchmarks/h200.sh round7    the default path as landed against per-thread sage-fused at 81 and 25 frames,
#                                then coldstart81; ~7 min
#   benchmarks/h200.sh round7e2e photo -> MP4 at 81 frames (default path, stock pass beside it), then under a
#                                32 GiB cap with memory = "auto"; ~9 min
#   benchmarks/h200.sh round8    the default path as landed (with the block kernels) against round 7's (without)
#                                at 81 and 25 frames, then the kernels alone (bench.block_kernels); ~7 min
#   benchmarks/h200.sh round8b   the default path with and without the block kernels alternated (bench.block_ab),
#                                then coldstart81; ~6 min
#   benchmarks/h200.sh round8e2e photo -> MP4 at 81 frames and under the 32 GiB cap, as round7e2e; ~9 min
#   benchmarks/h200.sh round9    K's int8 / V's fp8 kernels alone (bench.kv_quant), then alternated with the
#                                torch code in the default path (bench.block_ab --lever kv_quant); ~6 min
#   benchmarks/h200.sh round9c   the cold first job at 81 frames, calibrating call uncompiled vs compiled, on
#                                one machine, then a restart; ~6 min
#   benchmarks/h200.sh round10   round9's alternated forward, then coldstart81, on one machine; ~8 min
#   benchmarks/h200.sh round9e2e photo -> MP4 at 81 frames and under the 32 GiB cap, as round7e2e; ~9 min
#   benchmarks/h200.sh coldstart81 the first compiled call at 81 frames, cold, then after a "restart"
#   benchmarks/h200.sh cap32     photo -> MP4 at 81 frames under a 32 GiB cap: memory = "auto", then "swap"
#   benchmarks/h200.sh round4    sage-fused against SageAttention's own quantisers (bench.sage_fused), then
#                                stock / sage-warp / sage-fused per thread / per warp / + fp8 fast accumulation
#                                (fp8 static, compiled) at 81 and 25 frames; ~7 min
#
# Several steps can be given in one call. Wheels the image lacks (diffusers, pydantic, PyAV, ...)
# are expected under .whl*/ (see the device notes in docs/PERFORMANCE.md); results go to $OUT.
set -uo pipefail
. "$(dirname "$0")/device-env.sh"
# SNAP: a clean export to run instead of the working tree (optional), made with
#   mkdir -p .snap/head && git archive HEAD wan22bot benchmarks examples | tar -x -C .snap/head
if [ -n "${SNAP:-}" ]; then cp -r .sage "$SNAP/" 2>/dev/null; cd "$SNAP"; fi
export PYTHONPATH="$SITE:$PWD"

step_sage() {
    if [ -d "$SITE/sageattention" ]; then echo "sageattention already in $SITE"; return; fi
    local t0=$SECONDS
    (cd .sage && SAGE_SM90_ONLY=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 EXT_PARALLEL=2 \
        python3 setup.py build_ext --inplace >"$OUT/sage-build.log" 2>&1) || { tail -30 "$OUT/sage-build.log"; return 1; }
    echo "SageAttention built in $((SECONDS - t0)) s"
    cp -r .sage/sageattention "$SITE/"
    tar -czf "$OUT/sage-built.tar.gz" -C "$SITE" sageattention
    python3 -c "import sageattention, torch; print('sageattention', sageattention.__file__)"
}

step_levers25() {
    python3 -m wan22bot.bench.levers --frames 25 --warmup 1 --repeat 3 --json "$OUT/levers25.json"
}

step_levers81() {
    python3 -m wan22bot.bench.levers --frames 81 --warmup 1 --repeat-large 2 \
        --variants "${LEVERS81:-stock,fp8lin+auto+compile,fp8static+auto+compile,fp8delayed+auto+compile,fp8static+fa3+compile}" \
        --large-variants "${LEVERS81:-stock,fp8lin+auto+compile,fp8static+auto+compile,fp8delayed+auto+compile,fp8static+fa3+compile}" \
        --json "$OUT/levers81.json"
}

step_e2e() {
    random_rife
    python3 -m wan22bot bench -c benchmarks/default.toml --random-weights --baseline --interpolate \
        --frames "${E2E_FRAMES:-25,81}" --repeat 1 --json "$OUT/e2e-default.json"
}

step_swap32() {
    random_rife
    python3 -m wan22bot bench -c benchmarks/swap32.toml --random-weights --frames 81 --repeat 1 --interpolate \
        --memory-cap-gib 32 --json "$OUT/e2e-swap32.json"
}

# the 32 GiB cap with memory = "auto" (issue: measure `auto` under the cap), then swap as before
step_cap32() {
    random_rife
    python3 -m wan22bot bench -c benchmarks/auto32.toml --random-weights --frames 81 --repeat 1 --interpolate \
        --memory-cap-gib 32 --json "$OUT/e2e-auto32.json"
    python3 -m wan22bot bench -c benchmarks/swap32.toml --random-weights --frames 81 --repeat 1 --interpolate \
        --memory-cap-gib 32 --json "$OUT/e2e-swap32.json"
}

step_coldstart() {
    local cache
    cache=$(mktemp -d)
    python3 -m wan22bot.bench.coldstart --cache "$cache" --json "$OUT/coldstart-1.json"
    python3 -m wan22bot.bench.coldstart --cache "$cache" --json "$OUT/coldstart-2.json"
}

step_tail() {
    random_rife
    for dt in bf16 fp32; do
        python3 -m wan22bot.bench.tail --device cuda --frames 81 --vae-dtype "$dt" --psnr --rife \
            --rife-weights /tmp/rife-random/flownet.pkl --out "/tmp/tail-$dt"
    done
}

# round3 runs inside one ~9-minute call: levers ~2.6 min (3 variants at 81 frames took 2 min 34 s
# on 2026-11-29), each tail run ~40 s without its serial part, and the compiled decoder last, under
# a time limit (its compile time is not known yet) so the runs before it are kept whatever happens.
step_round3() {
    python3 -m wan22bot.bench.levers --frames 81 --warmup 1 --repeat-large 2 \
        --variants "stock,fp8static+auto+compile,fp8static+sagewarp+compile" \
        --large-variants "stock,fp8static+auto+compile,fp8static+sagewarp+compile" \
        --json "$OUT/levers81-round3.json"
    random_rife
    local name flags
    for name in none channels-last cudnn-benchmark compile-decoder; do
        flags=""
        [ "$name" != none ] && flags="--$name"
        # the compile run gets what is left of the call; the others are quick
        timeout "$([ "$name" = compile-decoder ] && echo "${ROUND3_COMPILE_LIMIT:-210}" || echo 150)" \
            python3 -m wan22bot.bench.tail --device cuda --frames 81 --vae-dtype bf16 --psnr --rife --no-serial \
            --rife-weights /tmp/rife-random/flownet.pkl $flags | tail -1 | tee "$OUT/tail-round3-$name.json"
        echo "tail $name: exit ${PIPESTATUS[0]} ($(date -u +%H:%M:%S))"
    done
}

step_levers25r3() {
    python3 -m wan22bot.bench.levers --frames 25 --warmup 1 --repeat 3 \
        --variants "stock,fp8static+auto+compile" --large-variants "stock" --json "$OUT/levers25-round3.json"
}

step_profile81() {
    python3 -m wan22bot.bench.profile --frames 81 --json "$OUT/profile81.json"
}

step_round3e2e() {
    local cache
    cache=$(mktemp -d)
    python3 -m wan22bot.bench.coldstart --cache "$cache" --frames 81 --fp8-scaling static \
        --json "$OUT/coldstart81-cold.json"
    random_rife
    python3 -m wan22bot bench -c benchmarks/default.toml --random-weights --baseline --interpolate \
        --frames 81 --repeat 1 --json "$OUT/e2e81-round3.json"
}

step_round4() {
    python3 -m wan22bot.bench.sage_fused --tokens 27664 82992 --json "$OUT/sage-fused-check.json"
    python3 -m wan22bot.bench.levers --frames 81,25 --warmup 1 --repeat 3 --repeat-large 2 \
        --variants "${ROUND4:-stock,fp8static+sagewarp+compile,fp8static+sagefused+compile,fp8static+sagefusedwarp+compile,fp8static+fastacc+sagefused+compile}" \
        --large-variants "${ROUND4:-stock,fp8static+sagewarp+compile,fp8static+sagefused+compile,fp8static+sagefusedwarp+compile,fp8static+fastacc+sagefused+compile}" \
        --json "$OUT/levers-round4.json"
}

# the default path as landed: photo -> MP4 at 81 frames with RIFE (stock pass beside it), then the
# decode alone with and without the fused decoder, PSNR against the fp32 stock decode; ~8 min
step_round4e2e() {
    random_rife
    python3 -m wan22bot bench -c benchmarks/default.toml --random-weights --baseline --interpolate \
        --frames 81 --repeat 1 --json "$OUT/e2e81-round4.json"
    local name
    for name in fast-decode channels-last; do
        timeout 150 python3 -m wan22bot.bench.tail --device cuda --frames 81 --vae-dtype bf16 --psnr --rife --no-serial \
            --rife-weights /tmp/rife-random/flownet.pkl --channels-last $([ $name = fast-decode ] && echo --fast-decode) \
            | tail -1 | tee "$OUT/tail-round4-$name.json"
    done
}

step_round5() {
    local v="stock,fp8static+fastacc+sagefused+compile,fp8static+fastacc+sagefused+compile+cdt"
    v="$v,fp8static+fastacc+sagefusedwarp+compile"
    python3 -m wan22bot.bench.levers --frames 81,25 --warmup 1 --repeat 3 --repeat-large 2 \
        --variants "${ROUND5:-$v}" --large-variants "${ROUND5:-$v}" --json "$OUT/levers-round5.json"
}

# sage-fused's Q/K preparation alone (compiled against the Triton kernels of engine/qk_prep.py), then
# the default path against it with the Triton prep, coordinate-descent tuning and both; ~9 min
step_round6() {
    python3 -m wan22bot.bench.qk_prep --frames 81 --json "$OUT/qk-prep81.json"
    local d="fp8static+fastacc+sagefused+compile"
    local v="stock,$d,$d+qkprep,$d+cdt,$d+qkprep+cdt"
    python3 -m wan22bot.bench.levers --frames 81,25 --warmup 1 --repeat 3 --repeat-large 2 \
        --variants "${ROUND6:-$v}" --large-variants "${ROUND6:-$v}" --json "$OUT/levers-round6.json"
}

# the default path as it lands (sage-fused per warp + the Triton Q/K prep) against per-thread scales,
# at 81 and 25 frames, then the first compiled call at 81 frames cold and warm; ~7 min
step_round7() {
    local d="fp8static+fastacc+sagefused+compile+qkprep"
    python3 -m wan22bot.bench.levers --frames 81,25 --warmup 1 --repeat 3 --repeat-large 2 \
        --variants "stock,$d,fp8static+fastacc+sagefusedthread+compile+qkprep" \
        --large-variants "stock,$d,fp8static+fastacc+sagefusedthread+compile+qkprep" \
        --json "$OUT/levers-round7.json"
    step_coldstart81
}

# photo -> MP4 at 81 frames with RIFE on the default path (stock pass beside it), then the same
# under a 32 GiB cap with memory = "auto" (which picks swap there); each under a time limit; ~9 min.
# $1 names the round in the output files.
e2e_and_cap32() {
    random_rife
    timeout "${E2E_LIMIT:-270}" python3 -m wan22bot bench -c benchmarks/default.toml --random-weights --baseline \
        --interpolate --frames 81 --repeat 1 --json "$OUT/e2e81-$1.json"
    echo "e2e81: exit $? ($(date -u +%H:%M:%S))"
    timeout "${CAP_LIMIT:-290}" python3 -m wan22bot bench -c benchmarks/auto32.toml --random-weights --frames 81 \
        --repeat 1 --interpolate --memory-cap-gib 32 --json "$OUT/e2e-auto32-$1.json"
    echo "auto32: exit $? ($(date -u +%H:%M:%S))"
}

step_round7e2e() {
    e2e_and_cap32 round7
}

# the default path with the block kernels (residual + LayerNorm + modulation + fp8, GELU + fp8 in
# our Triton kernels) against the round-7 default without them, at 81 and 25 frames, then the
# kernels alone against torch.compile's; each under a time limit so one call holds both
step_round8() {
    local d="fp8static+fastacc+sagefused+compile+qkprep"
    timeout "${LEVERS_LIMIT:-400}" python3 -m wan22bot.bench.levers --frames 81,25 --warmup 1 --repeat 3 \
        --repeat-large 2 --variants "stock,$d,$d+fusedblock" --large-variants "stock,$d,$d+fusedblock" \
        --json "$OUT/levers-round8.json"
    echo "levers: exit $? ($(date -u +%H:%M:%S))"
    timeout "${MICRO_LIMIT:-120}" python3 -m wan22bot.bench.block_kernels --frames 81 --json "$OUT/block-kernels81.json"
    echo "block kernels: exit $? ($(date -u +%H:%M:%S))"
}

# the default path with and without the block kernels alternated in one process against stock
# (bench.block_ab), then the first compiled call at 81 frames cold and after a restart; ~6 min
step_round8b() {
    timeout "${AB_LIMIT:-330}" python3 -m wan22bot.bench.block_ab --frames 81,25 --json "$OUT/block-ab.json"
    echo "block_ab: exit $? ($(date -u +%H:%M:%S))"
    step_coldstart81
}

step_round8e2e() {
    e2e_and_cap32 round8
}

# the forward record and the cold first job on one machine, at one commit: the default path with and
# without the K/V kernels alternated against stock, then an empty cache and a restart; ~8 min.
# Follow it at once (the machine stays warm for 30 s) with round9e2e for the rest of the targets.
step_round10() {
    local cache
    cache=$(mktemp -d)
    timeout "${AB_LIMIT:-330}" python3 -m wan22bot.bench.block_ab --lever kv_quant --frames 81,25 \
        --json "$OUT/kv-ab-round10.json"
    echo "block_ab: exit $? ($(date -u +%H:%M:%S))"
    python3 -m wan22bot.bench.coldstart --cache "$cache" --frames 81 --json "$OUT/coldstart81-cold-round10.json"
    python3 -m wan22bot.bench.coldstart --cache "$cache" --frames 81 --json "$OUT/coldstart81-warm-round10.json"
}

step_round9e2e() {
    e2e_and_cap32 round9
}

# K's int8 and V's fp8 kernels alone (bench.kv_quant), then the default path with and without
# them alternated (bench.block_ab --lever kv_quant); ~6 min
step_round9() {
    python3 -m wan22bot.bench.kv_quant --frames 81 --json "$OUT/kv-quant81.json"
    timeout "${AB_LIMIT:-420}" python3 -m wan22bot.bench.block_ab --lever kv_quant --frames 81,25 \
        --json "$OUT/kv-ab.json"
    echo "block_ab: exit $? ($(date -u +%H:%M:%S))"
}

# K's and V's kernels at their defaults against eager torch, then
# the cold first job at 81 frames on one machine: the calibrating call uncompiled (the generator's
# way from round 7 on), then compiled as before, each on an empty cache; then a "restart" on the
# first cache; ~6 min
step_round9c() {
    local eager compiled
    eager=$(mktemp -d)
    compiled=$(mktemp -d)
    python3 -m wan22bot.bench.kv_quant --frames 81 --k-warps 4 --v-choices 128x8x1024x4/4 \
        --json "$OUT/kv-quant81.json"
    python3 -m wan22bot.bench.coldstart --cache "$eager" --frames 81 --json "$OUT/coldstart81-cold-eager.json"
    python3 -m wan22bot.bench.coldstart --cache "$compiled" --frames 81 --compiled-calibration \
        --json "$OUT/coldstart81-cold-compiled.json"
    python3 -m wan22bot.bench.coldstart --cache "$eager" --frames 81 --json "$OUT/coldstart81-warm.json"
}

# the first compiled call at 81 frames on the default path: an empty compile cache, then a second
# process on the cache the first one filled (what a daemon restart pays); ~3 min
step_coldstart81() {
    local cache
    cache=$(mktemp -d)
    python3 -m wan22bot.bench.coldstart --cache "$cache" --frames 81 --json "$OUT/coldstart81-cold.json"
    python3 -m wan22bot.bench.coldstart --cache "$cache" --frames 81 --json "$OUT/coldstart81-warm.json"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/card.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'cudnn', torch.backends.cudnn.version())" | tee -a "$OUT/card.txt"
for s in "$@"; do
    echo "=== $s ($(date -u +%H:%M:%S))"
    "step_$s" 2>&1 | tee "$OUT/$s.log"
done
