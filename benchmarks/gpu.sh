#!/usr/bin/env bash
# The speed goals on a GPU, in one table: the paper-shape UNet training step (eager and compiled,
# its share of the card's bf16 matmul peak measured in the same run: the MFU) and guided sampling
# at paper shapes against the reference loop (fp32 / bf16 classifier, compiled, guidance interval).
# Sized to finish in under 8 minutes on one recent card; every part has its own time limit, and a
# part that fails or runs out of time leaves its row empty instead of stopping the others.
#
#   bash benchmarks/gpu.sh            # on a machine with a CUDA GPU (run from the repository root)
#   bash benchmarks/gpu.sh --dry-run  # CPU, tiny shapes, no compiling: checks the Python parts only
#
# Results (JSON per part, the logs, the table) go to ${GPU_OUT:-gpu-results}/.
set -euo pipefail

DRY=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "gpu.sh: unknown argument $arg (use --dry-run or nothing)" >&2; exit 2 ;;
    esac
done

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${GPU_OUT:-gpu-results}
mkdir -p "$OUT"

if [ "$DRY" = 1 ]; then
    export CUDA_VISIBLE_DEVICES=""                    # the CPU, whatever the machine has
    PRESET=tiny
    TRAIN_ARGS=(--only pretrain --steps 1)
    SAMPLE_ARGS=(--num 8 --steps 2 --rounds 1 --threads 1 --no-compile --interval 300,700)
    TRAIN_LIMIT=900; SAMPLE_LIMIT=600
else
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu.sh: no CUDA device (use --dry-run on CPU)')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        | tee "$OUT/card.txt"
    PRESET=paper
    # paper shapes: the UNet at 64x64x3 latents, batch 4 per step as the preset (the reference's per-GPU batch)
    TRAIN_ARGS=(--only pretrain --steps 10)
    # 50 DDIM steps as the paper; 40 images = 4 reference batches of 10; the interval arms guide t in [41, 597]
    SAMPLE_ARGS=(--num 40 --steps 50 --rounds 3 --batch 20 --interval 41,597)
    TRAIN_LIMIT=240; SAMPLE_LIMIT=210
fi

run_part() {   # name, time limit, command...: its log and exit status, never stopping the script
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
        echo "$name: done in $((SECONDS - start)) s"
    else
        echo "$name: FAILED or over ${limit} s (exit $?); see $OUT/$name.log" >&2
    fi
}

run_part train_step "$TRAIN_LIMIT" "$PY" -m benchmarks.train_step --preset "$PRESET" "${TRAIN_ARGS[@]}" \
    --json "$OUT/train_step.json"
run_part guided_sampling "$SAMPLE_LIMIT" "$PY" -m benchmarks.guided_sampling --preset "$PRESET" "${SAMPLE_ARGS[@]}" \
    --json "$OUT/guided_sampling.json"

"$PY" - "$OUT" <<'EOF' | tee "$OUT/table.md"
"""One table from the parts' JSON: measure, value, goal (issue 27)."""
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
rows, device = [], None

def read(name):
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None

train = read("train_step")
if train:
    device = train["device"]
    mfu = train.get("mfu", {})
    row = train["rows"][0]
    rows += [("UNet training step, compiled: share of the bf16 matmul peak (MFU)",
              f"{mfu.get('compiled_share_of_peak', float('nan')):.1%} of {mfu.get('matmul_peak_gflops', 0):,.0f} GFLOP/s",
              ">= 50 %"),
             ("UNet training step, eager: share of the peak", f"{mfu.get('eager_share_of_peak', float('nan')):.1%}", ""),
             ("UNet training step, compiled vs eager", f"{row['speed-up']:.2f}x ({row['compiled img/s']:.1f} img/s)", ""),
             ("compiling (first call), break-even steps", f"{row['compile s (first call)']:.0f} s, {row['break-even steps']}", "")]
sample = read("guided_sampling")
if sample:
    device = device or sample["device"]
    r, labels = sample["ratios"], sample["labels"]
    for key, goal in (("guided", ""), ("c_guided", ">= 4x"), ("c_guided16", ">= 4x"), ("interval", ""),
                      ("c_interval16", "")):
        if key in r:
            rows.append((f"guided sampling vs reference: {labels[key]}",
                         f"{r[key]['vs_reference']:.2f}x; guided/unguided {r[key]['over_unguided']:.2f}x",
                         f"{goal}, <= 1.2x" if goal else "<= 1.2x"))
print(f"device: {device}\n")
print("| measure | this run | goal |\n|---|---|---|")
for measure, value, goal in rows or [("no part finished", "see the logs", "")]:
    print(f"| {measure} | {value} | {goal} |")
EOF
