#!/usr/bin/env bash
# GPU benchmark: tessera-trainer against a PyTorch reference of the same GPT-2 124M (context
# 1024, bf16), same micro-batch and optimizer, on one NVIDIA GPU. Prints tokens/s, MFU and peak
# GPU memory of both and their ratio, then a parity check (same initial weights and batch give
# the same loss and gradient norm within bf16 tolerance). See bench/gpu/README.md.
#
# Usage: bash bench/gpu/run.sh BIN_DIR [STEPS]      e.g. bash bench/gpu/run.sh target/release 50
#
# BIN_DIR holds the release binaries `tessera` and `tessera-trainer`. Logs, manifests, the
# report and every JSON output go to $OUT (default: a new temporary directory).
# Environment (defaults in brackets):
#   CORPUS        text to tokenise [../shared/data/tinyshakespeare.txt from the repository root]
#   PYTHON        the Python with torch [python3]
#   MICRO         sequences per step of the throughput runs [16]
#   PARITY_MICRO  sequences of the parity batch [4]
#   WARMUP        first steps left out of the mean tokens/s [2]
#   PEAK_TFLOPS   the MFU denominator [989.4, H100/H200 SXM dense bf16]
#   DEVICE        --device for both [cuda]; `cpu` only to smoke-test this script
#   LAYERS HEADS WIDTH CONTEXT  a smaller model instead of the gpt2 preset (all four, for tests)
#   REF_FLAGS     extra flags for reference.py (e.g. --no-compile)
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: bash bench/gpu/run.sh BIN_DIR [STEPS]" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=$(cd "$1" && pwd)
steps=${2:-50}
py=${PYTHON:-python3}
micro=${MICRO:-16}
parity_micro=${PARITY_MICRO:-4}
warmup=${WARMUP:-2}
peak_tflops=${PEAK_TFLOPS:-989.4}
device=${DEVICE:-cuda}
read -r -a ref_flags <<< "${REF_FLAGS:-}"
for tool in tessera tessera-trainer; do
  [ -x "$bin/$tool" ] || { echo "run.sh: $bin/$tool is missing; build it with cargo build --release" >&2; exit 2; }
done
if [ "$steps" -le "$warmup" ]; then
  echo "run.sh: STEPS ($steps) must exceed WARMUP ($warmup)" >&2
  exit 2
fi
work=${OUT:-$(mktemp -d)}
mkdir -p "$work"
work=$(cd "$work" && pwd)

if [ -n "${CORPUS:-}" ]; then
  corpus=$CORPUS
elif [ -f "$root/../shared/data/tinyshakespeare.txt" ]; then
  corpus=$root/../shared/data/tinyshakespeare.txt
else
  corpus=$root/shared/data/tinyshakespeare.txt
fi
[ -f "$corpus" ] || { echo "run.sh: corpus $corpus not found; set CORPUS" >&2; exit 2; }

# The model: the gpt2 preset, or (for smoke tests) explicit dimensions.
if [ -n "${LAYERS:-}${HEADS:-}${WIDTH:-}${CONTEXT:-}" ]; then
  : "${LAYERS:?set all of LAYERS HEADS WIDTH CONTEXT}" "${HEADS:?}" "${WIDTH:?}" "${CONTEXT:?}"
  context=$CONTEXT
  model="{layers: $LAYERS, heads: $HEADS, width: $WIDTH, context: $CONTEXT}"
  ref_model=(--layers "$LAYERS" --heads "$HEADS" --width "$WIDTH" --context "$CONTEXT")
  layers=$LAYERS width=$WIDTH
else
  context=1024
  model="{preset: gpt2}"
  ref_model=()
  layers=12 width=768
fi
ref_device=(--device "$device")
[ "$device" = cuda ] || ref_device+=(--no-compile)

# tessera-trainer opens NVRTC and the CUDA libraries; point the loader at the pip wheels
# (nvidia-*-cu13, which torch brings) when python's `nvidia` package exists, and name their
# cuda_bf16.h folder (the trainer looks there itself, but through the default python3 only).
nvidia_paths=$("$py" - <<'PY' 2>/dev/null || true
import os
try:
    import nvidia
except ImportError:
    raise SystemExit(0)
libs, include = set(), ""
for top in list(nvidia.__path__):
    for d, _, files in os.walk(top):
        if any(f.startswith("lib") and ".so" in f for f in files):
            libs.add(d)
        if "cuda_bf16.h" in files and not include:
            include = d
print(":".join(sorted(libs)))
print(include)
PY
)
cuda_libs=$(sed -n 1p <<< "$nvidia_paths")
cuda_include=$(sed -n 2p <<< "$nvidia_paths")
trainer_ld=${cuda_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
trainer_ld=${trainer_ld#:}
if [ -z "${TESSERA_CUDA_INCLUDE:-}" ] && [ -n "$cuda_include" ]; then
  export TESSERA_CUDA_INCLUDE=$cuda_include
fi

echo "run.sh: writing to $work" >&2
{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "gpu: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo unknown)"
  echo "torch: $("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo missing)"
  echo "steps: $steps, micro-batch: $micro, context: $context, warm-up steps excluded: $warmup"
  echo "LD_LIBRARY_PATH for tessera-trainer: $trainer_ld"
  echo "TESSERA_CUDA_INCLUDE: ${TESSERA_CUDA_INCLUDE:-}"
} > "$work/environment.txt"

# Runs tessera-trainer on $work/NAME.yaml: summary in NAME.json, step log in NAME.log, step
# history in NAME-history.jsonl. A checkpoint left by an earlier run would be resumed: remove it.
run_tessera() {
  local name=$1
  rm -rf "$work/ckpt-$name" "$work/$name-history.jsonl"
  echo "run.sh: tessera-trainer ($name)" >&2
  if ! LD_LIBRARY_PATH=$trainer_ld "$bin/tessera-trainer" --config "$work/$name.yaml" \
    --base-dir "$work" --device "$device" --log-every 1 --history "$work/$name-history.jsonl" \
    > "$work/$name.json" 2> "$work/$name.log"; then
    echo "run.sh: tessera-trainer failed ($name); the end of $work/$name.log:" >&2
    tail -n 20 "$work/$name.log" >&2
    exit 1
  fi
}

# Runs reference.py with ARGS...; its JSON line goes to $work/NAME.json, its log to NAME.log.
run_reference() {
  local name=$1
  shift
  echo "run.sh: reference.py ($name)" >&2
  if ! "$py" "$here/reference.py" "${ref_model[@]}" "${ref_device[@]}" "${ref_flags[@]}" "$@" \
    > "$work/$name.json" 2> "$work/$name.log"; then
    echo "run.sh: reference.py failed ($name); the end of $work/$name.log:" >&2
    tail -n 20 "$work/$name.log" >&2
    exit 1
  fi
}

# === a. throughput data ===
"$bin/tessera" data prepare --tokenizer gpt2 --out "$work/gpt2" "$corpus" > "$work/prepare.log"

# === b. tessera ===
# A constant learning rate, as the reference (the schedule does not change the cost of a step).
cat > "$work/tessera.yaml" <<YAML
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata: {name: gpu-bench}
spec:
  model: $model
  data: {train: gpt2/train-*.bin, tokenizer: gpt2}
  optimizer: {globalBatchTokens: $((micro * context)), microBatch: $micro, warmupSteps: 0, schedule: constant}
  training: {steps: $steps}
  checkpoint: {path: ckpt-tessera, everySteps: 1000000}
YAML
run_tessera tessera

# === c. the PyTorch reference ===
run_reference reference --data "$work/gpt2/train-*.bin" --steps "$steps" --micro-batch "$micro" \
  --seq-len "$context" --warmup-steps "$warmup" --peak-tflops "$peak_tflops"

# === d. parity: the same initial weights and batch on both ===
# A shard of exactly T+1 pseudo-random tokens: every row of every batch is the one window.
mkdir -p "$work/parity"
"$py" - "$here" "$work/parity/train-000000.bin" "$((context + 1))" <<'PY'
import random, sys
sys.path.insert(0, sys.argv[1])
from reference import write_shard
rng = random.Random(20240601)
write_shard(sys.argv[2], [rng.randrange(50257) for _ in range(int(sys.argv[3]))], 50257)
PY
run_reference parity-reference --data "$work/parity/train-000000.bin" --micro-batch "$parity_micro" \
  --seq-len "$context" --parity --init-out "$work/init.safetensors"
cat > "$work/parity-tessera.yaml" <<YAML
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata: {name: gpu-bench-parity}
spec:
  model: $model
  data: {train: parity/train-*.bin, tokenizer: gpt2}
  optimizer: {globalBatchTokens: $((parity_micro * context)), microBatch: $parity_micro, warmupSteps: 0}
  training: {steps: 1, initFrom: init.safetensors}
  checkpoint: {path: ckpt-parity-tessera, everySteps: 1000000}
YAML
run_tessera parity-tessera

# === e. the report ===
# Tolerances (relative): bf16 keeps 8 significant bits (about 4e-3 per rounding); two correct
# implementations that round and sum in different orders agree on the mean loss to ~1e-3 and
# on the global gradient norm (a sum of squares of bf16-rounded gradients) to a few 1e-2.
# Pass: |Δloss|/loss ≤ 1e-2 and |ΔgradNorm|/gradNorm ≤ 5e-2.
status=0
"$py" - "$work" "$here" "$warmup" "$peak_tflops" "$layers" "$width" "$context" "$micro" \
  "$parity_micro" > "$work/report.md" <<'PY' || status=$?
import json, math, re, sys

work, here, warmup, peak_tflops = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
layers, width, context, micro, parity_micro = map(int, sys.argv[5:10])
LOSS_TOL, GRAD_NORM_TOL = 1e-2, 5e-2


def flops_per_token(layers, width, vocab, seq_len):
    # The trainer's ModelConfig::flops_per_token, as reference.py's (unpadded vocabulary).
    n = vocab * width + layers * (12 * width * width + 13 * width) + 2 * width
    return 6.0 * n + 12.0 * layers * width * seq_len


def last_json(path):
    lines = [l for l in open(path) if l.lstrip().startswith("{")]
    if not lines:
        sys.exit(f"run.sh: no JSON line in {path}")
    return json.loads(lines[-1])


def history(name):
    rows = [json.loads(l) for l in open(f"{work}/{name}-history.jsonl") if l.strip()]
    if not rows:
        sys.exit(f"run.sh: {work}/{name}-history.jsonl is empty")
    return rows


def gib(n):
    return "n/a" if n is None else f"{n / 2**30:.2f}"


def ratio(a, b):
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.3f}×"


fpt = flops_per_token(layers, width, 50257, context)
peak = peak_tflops * 1e12

# Throughput: tessera's mean over its history's steps after the warm-up, as the reference's.
tessera_summary = last_json(f"{work}/tessera.json")
timed = [r["tokensPerSecond"] for r in history("tessera") if r["step"] > warmup]
if not timed:
    sys.exit("run.sh: tessera's history has no step after the warm-up")
t_tps = sum(timed) / len(timed)
t_mem = tessera_summary.get("peakDeviceMemoryBytes")
ref = last_json(f"{work}/reference.json")
r_tps, r_mem = ref["tokensPerSecond"], ref.get("peakMemoryBytes")
t_mfu, r_mfu = t_tps * fpt / peak, r_tps * fpt / peak
compiled = "torch.compile" if ref.get("compile") else "eager"

precision = "fp32" if ref.get("device") == "cpu" else "bf16"
print(f"GPT-2 ({layers} layers, width {width}), B={micro}, T={context}, {precision}, "
      f"{ref['steps']} steps (mean of the {len(timed)} after {warmup} warm-up steps)")
print(f"GPU: {ref.get('device')}, torch {ref.get('torch')}; MFU = tokens/s × {fpt:.4g} FLOP/token "
      f"/ {peak_tflops:g} TFLOP/s\n")
print("| | tokens/s | MFU | peak GPU memory (GiB) |")
print("|---|---:|---:|---:|")
print(f"| tessera | {t_tps:,.0f} | {t_mfu:.1%} | {gib(t_mem)} |")
print(f"| PyTorch ({compiled}) | {r_tps:,.0f} | {r_mfu:.1%} | {gib(r_mem)} |")
print(f"| tessera/PyTorch | {ratio(t_tps, r_tps)} | {ratio(t_mfu, r_mfu)} | {ratio(t_mem, r_mem)} |")
if ref.get("peakReservedBytes") is not None:
    print(f"\nPyTorch's peak is torch.cuda.max_memory_allocated; its caching allocator reserved "
          f"at most {gib(ref['peakReservedBytes'])} GiB.")
print()
print(f"final loss: tessera {tessera_summary.get('finalLoss')}, PyTorch {ref.get('finalLoss')} "
      "(different batch order; not compared)")
if "mfu" in tessera_summary:
    print(f"tessera's own summary: mean tokens/s {tessera_summary.get('tokensPerSecond'):,.0f}, "
          f"MFU {tessera_summary['mfu']:.1%} (all steps, its backend's peak)")

# Parity: loss and gradient norm of step 1 (before any update).
p_ref = last_json(f"{work}/parity-reference.json")
step1 = next((r for r in history("parity-tessera") if r["step"] == 1), None)
if step1 is None:
    sys.exit("run.sh: tessera's parity history has no step 1")
t_loss, t_norm = step1["loss"], step1.get("gradNorm")
note = ""
if t_norm is None:  # older trainers: the step line's grad_norm (3 decimals)
    log = open(f"{work}/parity-tessera.log").read()
    m = re.search(r"step=1 .*?grad_norm=([0-9.eE+-]+)", log)
    t_norm = float(m.group(1)) if m else float("nan")
    note = " (from the step log: the history has no gradNorm)"
d_loss = abs(t_loss - p_ref["loss"]) / abs(p_ref["loss"])
d_norm = abs(t_norm - p_ref["gradNorm"]) / abs(p_ref["gradNorm"])
loss_ok, norm_ok = d_loss <= LOSS_TOL, d_norm <= GRAD_NORM_TOL
print()
print(f"parity (same initial weights, B={parity_micro}, T={context}, one window in every row):")
print(f"  loss      tessera {t_loss:.6f}  PyTorch {p_ref['loss']:.6f}  "
      f"relative difference {d_loss:.2e} (≤ {LOSS_TOL:g}) {'ok' if loss_ok else 'FAIL'}")
print(f"  gradNorm  tessera {t_norm:.6f}  PyTorch {p_ref['gradNorm']:.6f}  "
      f"relative difference {d_norm:.2e} (≤ {GRAD_NORM_TOL:g}) {'ok' if norm_ok else 'FAIL'}{note}")
print(f"  parity: {'PASS' if loss_ok and norm_ok else 'FAIL'}")
sys.exit(0 if loss_ok and norm_ok else 1)
PY
cat "$work/report.md"
echo "run.sh: logs, manifests and JSON outputs are in $work" >&2
exit "$status"
