#!/usr/bin/env bash
# GPU benchmark of a Llama-shaped model: tessera-trainer fine-tuning a ~1.2B-parameter
# Llama-architecture model (Llama 3.2 1B's shape: 16 layers, width 2048, 32 query heads over 8
# key/value heads, MLP 8192, vocabulary 128256, tied head) from a Hugging Face directory,
# against the same model in transformers trained the usual PyTorch way (bf16 autocast, fused
# AdamW). Both start from one random directory made by llama_reference.py. Prints tokens/s,
# MFU and peak GPU memory of both, and the first step's loss and gradient norm of both (the
# same weights and batch: they must agree within bf16 tolerance, as in run.sh).
#
# Usage: bash bench/gpu/llama.sh BIN_DIR [STEPS]      e.g. bash bench/gpu/llama.sh target/release 20
#
# Environment (defaults in brackets): PYTHON [python3] with torch and transformers; CORPUS
# [../shared/data/tinyshakespeare.txt]; MICRO [4] sequences of CONTEXT [2048] tokens a step;
# WARMUP [2]; PEAK_TFLOPS [989.4]; DEVICE [cuda] (`cpu` with a small SHAPE only to smoke-test
# this script); SHAPE: llama_reference.py init flags for another shape, e.g.
#   SHAPE="--layers 2 --heads 4 --kv-heads 2 --width 64 --ffn-width 160 --vocab 512 --context 64"
# Output under $OUT (default: a new temporary directory).
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: bash bench/gpu/llama.sh BIN_DIR [STEPS]" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=$(cd "$1" && pwd)
steps=${2:-20}
py=${PYTHON:-python3}
micro=${MICRO:-4}
context=${CONTEXT:-2048}
warmup=${WARMUP:-2}
peak_tflops=${PEAK_TFLOPS:-989.4}
device=${DEVICE:-cuda}
read -r -a shape <<< "${SHAPE:---tied}"
work=${OUT:-$(mktemp -d)}
mkdir -p "$work"
work=$(cd "$work" && pwd)
corpus=${CORPUS:-$root/../shared/data/tinyshakespeare.txt}
[ -f "$corpus" ] || { echo "llama.sh: corpus $corpus not found; set CORPUS" >&2; exit 2; }
echo "llama.sh: writing to $work" >&2

# The model directory both sides start from, with a tokenizer-free vocabulary: the corpus is
# tokenized as bytes (ids below 256 fit any vocabulary), which measures the same compute.
"$py" "$here/llama_reference.py" init --out "$work/model" --context "$context" "${shape[@]}" \
  > "$work/init.json"
"$bin/tessera" data prepare --tokenizer bytes --val-fraction 0 --out "$work/data" "$corpus" \
  > "$work/prepare.log"

# Parity data: a shard of exactly CONTEXT + 1 tokens, so every row of every batch is the one
# window on both sides.
mkdir -p "$work/parity"
"$py" - "$here" "$work/parity/train-000000.bin" "$((context + 1))" <<'PY'
import random, sys
sys.path.insert(0, sys.argv[1])
from reference import write_shard
rng = random.Random(20240601)
write_shard(sys.argv[2], [rng.randrange(256) for _ in range(int(sys.argv[3]))], 256)
PY

# tessera-trainer on $work/NAME.yaml (DATA, STEPS): summary NAME.json, history NAME-history.jsonl.
run_tessera() {
  local name=$1 data=$2 run_steps=$3
  cat > "$work/$name.yaml" <<YAML
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata: {name: $name}
spec:
  model: {from: model, context: $context}
  data: {train: $data}
  optimizer: {globalBatchTokens: $((micro * context)), microBatch: $micro, warmupSteps: 0, schedule: constant, lr: 0.0003}
  training: {steps: $run_steps, evalInterval: 0}
  checkpoint: {path: ckpt-$name, everySteps: 1000000}
YAML
  rm -rf "$work/ckpt-$name" "$work/$name-history.jsonl"
  echo "llama.sh: tessera-trainer ($name)" >&2
  "$bin/tessera-trainer" --config "$work/$name.yaml" --base-dir "$work" --device "$device" \
    --log-every 1 --history "$work/$name-history.jsonl" > "$work/$name.json" 2> "$work/$name.log" \
    || { echo "llama.sh: tessera-trainer failed; the end of $work/$name.log:" >&2; tail -n 20 "$work/$name.log" >&2; exit 1; }
}

# llama_reference.py train on DATA for STEPS: its JSON line in NAME.json.
run_reference() {
  local name=$1 data=$2 run_steps=$3
  echo "llama.sh: transformers ($name)" >&2
  "$py" "$here/llama_reference.py" train --model "$work/model" --data "$work/$data" \
    --steps "$run_steps" --micro-batch "$micro" --seq-len "$context" --warmup-steps "$warmup" \
    --device "$device" > "$work/$name.json" 2> "$work/$name.log" \
    || { echo "llama.sh: llama_reference.py failed; the end of $work/$name.log:" >&2; tail -n 20 "$work/$name.log" >&2; exit 1; }
}

run_tessera tessera "data/train-*.bin" "$steps"
run_reference reference "data/train-*.bin" "$steps"
run_tessera parity-tessera "parity/train-*.bin" 1
WARMUP_SAVED=$warmup; warmup=0
run_reference parity-reference "parity/train-*.bin" 1
warmup=$WARMUP_SAVED

"$py" - "$work" "$peak_tflops" "$warmup" <<'PY' | tee "$work/report.md"
import json, sys
work, peak, warmup = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
t = json.load(open(f"{work}/tessera.json"))
r = json.load(open(f"{work}/reference.json"))
history = [json.loads(l) for l in open(f"{work}/tessera-history.jsonl")]
timed = history[warmup:] or history
t_tps = sum(h["tokensPerSecond"] for h in timed) / len(timed)
first = json.loads(open(f"{work}/parity-tessera-history.jsonl").readline())
r_first = json.load(open(f"{work}/parity-reference.json"))
mfu_of = lambda tps: t["mfu"] * tps / t["tokensPerSecond"] if t.get("tokensPerSecond") else float("nan")
gib = lambda b: f"{b / 2**30:.2f} GiB" if b else "-"
print(f"| Llama {r['parameters'] / 1e9:.2f}B | tokens/s | MFU | peak memory |")
print("|---|---|---|---|")
print(f"| tessera | {t_tps:.0f} | {mfu_of(t_tps):.3f} | {gib(t.get('peakDeviceMemoryBytes'))} |")
print(f"| transformers | {r['tokensPerSecond']:.0f} | {mfu_of(r['tokensPerSecond']):.3f} | {gib(r['peakMemoryBytes'])} |")
print(f"| tessera/transformers | {t_tps / r['tokensPerSecond']:.2f} | | |")
dl = abs(first["loss"] - r_first["firstLoss"]) / r_first["firstLoss"]
dn = abs(first["gradNorm"] - r_first["firstGradNorm"]) / r_first["firstGradNorm"]
print(f"\nparity, one step on one window: loss {first['loss']:.4f} vs {r_first['firstLoss']:.4f} "
      f"(rel {dl:.2e}), grad norm {first['gradNorm']:.4f} vs {r_first['firstGradNorm']:.4f} (rel {dn:.2e})")
ok = dl <= 1e-2 and dn <= 5e-2
print("parity:", "ok" if ok else "FAILED (tolerances 1e-2 loss, 5e-2 grad norm)")
sys.exit(0 if ok else 1)
PY
