#!/usr/bin/env bash
# Several GPUs, measured (README "Several GPUs"; issue 12). One step per call of a lent 2- or 4-GPU
# machine (each step stays well under 10 minutes); results go to $OUT as JSON.
#
#   benchmarks/multigpu.sh one       one GPU (cuda:0) through a worker process: the same-run baseline
#   benchmarks/multigpu.sh per2      per-device on cuda:0,cuda:1: videos/hour over $JOBS jobs
#   benchmarks/multigpu.sh split2    split over cuda:0,cuda:1: per-pass seconds
#   benchmarks/multigpu.sh split2d   the same through diffusers' enable_parallelism (split_engine = "diffusers")
#   benchmarks/multigpu.sh per4      per-device on 4 GPUs (4-GPU machine)
#   benchmarks/multigpu.sh split4    split over 4 GPUs (4-GPU machine); split4d through diffusers
#   benchmarks/multigpu.sh report    speed-ups against `one`: throughput x (goal >= 1.9 on 2 GPUs),
#                                    per-pass x (goals >= 1.8 on 2, >= 3.3 on 4)
#
# e.g. on 2 GPUs: benchmarks/multigpu.sh one per2 split2 split2d report
# Settings: 832x1216, 81 frames, the fast configuration (benchmarks/default.toml), the A14B
# architecture with random weights (timing only). JOBS (default 8) timed jobs per per-device run,
# SPLIT_JOBS (default 3) per split run, after one warm-up job per worker process.
set -uo pipefail
. "$(dirname "$0")/device-env.sh"
export PYTHONPATH="$SITE:$PWD"
JOBS=${JOBS:-8}
SPLIT_JOBS=${SPLIT_JOBS:-3}


run() {  # run NAME DEVICES MODE JOBS [bench options]
    random_rife
    nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader > "$OUT/$1.gpus.txt" 2>&1
    python3 -m wan22bot.gpus.bench -c benchmarks/default.toml --random-weights --devices "$2" --mode "$3" \
        --jobs "$4" "${@:5}" --frames 81 --width 832 --height 1216 --out "$OUT/multigpu-$1.json" --keep "$OUT/multigpu-$1.mp4" 2> "$OUT/multigpu-$1.log" \
        || { tail -40 "$OUT/multigpu-$1.log"; return 1; }
}

step_one()    { run one cuda:0 per-device "$JOBS"; }
step_per2()   { run per2 cuda:0,cuda:1 per-device "$JOBS"; }
step_split2() { run split2 cuda:0,cuda:1 split "$SPLIT_JOBS"; }
step_split2d() { run split2d cuda:0,cuda:1 split "$SPLIT_JOBS" --split-engine diffusers; }
step_split4d() { run split4d cuda:0,cuda:1,cuda:2,cuda:3 split "$SPLIT_JOBS" --split-engine diffusers; }
step_per4()   { run per4 cuda:0,cuda:1,cuda:2,cuda:3 per-device "$((JOBS * 2))"; }
step_split4() { run split4 cuda:0,cuda:1,cuda:2,cuda:3 split "$SPLIT_JOBS"; }

step_report() {
    python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {p.stem.removeprefix("multigpu-"): json.loads(p.read_text()) for p in out.glob("multigpu-*.json")}
one = runs.get("one")
if one is None:
    sys.exit("no one-GPU baseline (run the `one` step in the same session first)")
print(f"one GPU: {one['videos_per_hour']} videos/hour, per pass {one['per_pass_average']} s")
for name, r in sorted(runs.items()):
    if name == "one":
        continue
    if r["mode"] == "per-device":
        print(f"{name}: {r['videos_per_hour']} videos/hour = {r['videos_per_hour'] / one['videos_per_hour']:.2f}x one GPU")
    else:
        print(f"{name}: per pass {r['per_pass_average']} s = {one['per_pass_average'] / r['per_pass_average']:.2f}x; "
              f"pass 1 {r['median']['pass1']} s, pass 2 {r['median']['pass2']} s")
        a, b = out / "multigpu-one.mp4", out / f"multigpu-{name}.mp4"
        if a.is_file() and b.is_file():  # same photo, same seed: split against one device
            import av
            import numpy as np

            def frames(p):
                with av.open(str(p)) as c:
                    return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.int16)

            fa, fb = frames(a), frames(b)
            d = np.abs(fa - fb)
            print(f"{name} vs one GPU, same seed: max abs difference {int(d.max())} code values, "
                  f"mean {float(d.mean()):.3f} over {d.size} samples")
PY
}

for step in "$@"; do
    echo "== $step"
    "step_$step" || exit 1
done
