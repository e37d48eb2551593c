#!/usr/bin/env bash
# CPU throughput: tokens/s and MFU of a few training steps of `tiny` and `gpt2` (124M).
# Usage: bash bench/cpu-throughput.sh [CORPUS] [GPT2_STEPS]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
corpus=${1:-../shared/data/tinyshakespeare.txt}
gpt2_steps=${2:-3}
bench_setup
./target/release/tessera data prepare --tokenizer bytes --out "$work/bytes" "$corpus" >/dev/null
./target/release/tessera data prepare --tokenizer gpt2 --out "$work/gpt2" "$corpus" >/dev/null
bench() { # name preset data micro steps
  local name=$1 preset=$2 data=$3 micro=$4 steps=$5 context
  context=$([ "$preset" = tiny ] && echo 128 || echo 1024)
  cat > "$work/$name.yaml" <<YAML
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata: {name: $name}
spec:
  model: {preset: $preset}
  data: {train: $data/train-*.bin, tokenizer: $([ "$data" = bytes ] && echo bytes || echo gpt2)}
  optimizer: {globalBatchTokens: $((micro * context)), microBatch: $micro}
  training: {steps: $steps}
  checkpoint: {path: ckpt-$name, everySteps: 1000000}
YAML
  ./target/release/tessera-trainer --config "$work/$name.yaml" --base-dir "$work" --log-every 1 \
    > "$work/$name.json" 2> "$work/$name.log"
  # Skip the first step (allocation, page faults): mean of the rest from the step lines.
  python3 - "$work/$name.log" "$name" <<'PY'
import re, sys
rows = [l for l in open(sys.argv[1]) if " step " in l and "tokens_per_second=" in l][1:]
tps = [float(re.search(r"tokens_per_second=(\S+)", l).group(1)) for l in rows]
mfu = [float(re.search(r"mfu=(\S+)", l).group(1)) for l in rows]
print(f"{sys.argv[2]:>5}: {sum(tps)/len(tps):9.0f} tokens/s  MFU {sum(mfu)/len(mfu):.3f}  ({len(rows)} steps after warm-up)")
PY
}
bench tiny tiny bytes 16 12
bench gpt2 gpt2 gpt2 1 $((gpt2_steps + 1))
