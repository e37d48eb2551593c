#!/usr/bin/env bash
# Memory of LoRA against a full fine-tune of the same model on the CPU: a random Llama-shaped
# model (8 layers, width 512, 8 query heads over 4 key/value heads, MLP 1408, the llama-gqa
# fixture's 384-token tokenizer; about 22M parameters) is made by Tessera itself (1 step from
# scratch, then `tessera ckpt export --hf`), then fine-tuned for a few steps on a chat JSONL
# twice, with every weight training and with rank-16 LoRA on the seven projections. Prints
# each run's trained parameters, optimizer-state bytes (the trainer's summary) and the
# trainer process's peak resident memory (GNU time's maximum RSS).
# Usage: bash bench/lora-memory.sh [STEPS]
# BIN_DIR=target/debug uses already built binaries instead of building release ones.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
steps=${1:-4}
if [ -n "${BIN_DIR:-}" ]; then
  bin=$(realpath "$BIN_DIR")
  cd "$(dirname "$0")/.."
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
else
  bench_setup
  bin=$(realpath target/release)
fi
fixture=$(realpath trainer/tests/fixtures/hf/llama-gqa)
[ -x /usr/bin/time ] || { echo "lora-memory: needs GNU time (Debian package time)" >&2; exit 1; }

python3 - "$work/chat.jsonl" <<'PY'
import json, sys
things = ["king", "house", "lord", "night", "crown", "sword", "river", "tower"]
with open(sys.argv[1], "w") as f:
    for i in range(400):
        t = things[i % len(things)]
        f.write(json.dumps({"messages": [
            {"role": "user", "content": f"What is the {t} number {i}?"},
            {"role": "assistant", "content": f"The {t} number {i} is {i % 7}."}]}) + "\n")
PY

common="
  data: {train: $work/chat.jsonl, tokenizer: $fixture, format: chat}
  optimizer: {lr: 0.001, warmupSteps: 1, globalBatchTokens: 2032, microBatch: 16}
  parallelism: {nodes: 1, gpusPerNode: 1}"

# The base model: one step from scratch, exported as a Hugging Face directory.
cat > "$work/scratch.yaml" <<EOF
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata: {name: lora-memory-base}
spec:
  model: {architecture: llama, layers: 8, heads: 8, kvHeads: 4, width: 512, ffnWidth: 1408, context: 127, vocab: 384}
$common
  training: {steps: 1, evalInterval: 0}
  checkpoint: {path: $work/scratch, everySteps: 1}
EOF
"$bin/tessera-trainer" --config "$work/scratch.yaml" --base-dir "$work" > /dev/null 2>&1
"$bin/tessera" ckpt export "$work/scratch" --hf --out "$work/base" > /dev/null

run() {
  local name=$1 training=$2
  cat > "$work/$name.yaml" <<EOF
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata: {name: lora-memory-$name}
spec:
  model: {from: $work/base, context: 127}
$common
  training: $training
  checkpoint: {path: $work/$name, everySteps: 1000}
EOF
  /usr/bin/time -f "%M" -o "$work/$name.rss" \
    "$bin/tessera-trainer" --config "$work/$name.yaml" --base-dir "$work" > "$work/$name.json" 2> "$work/$name.log"
  python3 - "$name" "$work/$name.json" "$work/$name.rss" <<'PY'
import json, sys
name, summary, rss = sys.argv[1], json.load(open(sys.argv[2])), int(open(sys.argv[3]).read().split()[-1])
trainable, total = summary["trainableParameters"], summary["totalParameters"]
opt = summary["optimizerStateBytes"]
print(f"{name:5}  trained {trainable:>10,} of {total:,} parameters ({100 * trainable / total:5.2f}%)  "
      f"optimizer state {opt / 2**20:7.2f} MiB ({opt / total:5.2f} B per model parameter)  "
      f"peak RSS {rss / 1024:7.1f} MiB  loss {summary['finalLoss']:.4f}")
PY
}

echo "lora-memory: $steps steps of 16 rows × 127 tokens, 1 CPU rank"
run full "{steps: $steps, evalInterval: 0}"
run lora "{steps: $steps, evalInterval: 0, lora: {rank: 16, alpha: 32, targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}}"
