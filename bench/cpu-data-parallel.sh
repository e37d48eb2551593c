#!/usr/bin/env bash
# Data parallelism on CPU ranks: step time and communication wait per step of `tiny` for 1, 2
# and 4 ranks (separate tessera-trainer processes meeting at --master-addr on loopback), for
# each sharding stage. The cores are split evenly between the ranks (RAYON_NUM_THREADS), so
# the global batch's compute is the same in every row; what changes is the communication.
# Usage: bash bench/cpu-data-parallel.sh [CORPUS] [STEPS]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
corpus=${1:-../shared/data/tinyshakespeare.txt}
steps=${2:-12}
bench_setup
./target/release/tessera data prepare --tokenizer bytes --out "$work/bytes" "$corpus" >/dev/null
cat > "$work/run.yaml" <<YAML
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata: {name: dp-bench}
spec:
  model: {preset: tiny}
  data: {train: bytes/train-*.bin, tokenizer: bytes}
  optimizer: {globalBatchTokens: 8192, microBatch: 4}
  training: {steps: $steps}
  checkpoint: {path: ckpt, everySteps: 1000000}
YAML
cores=$(nproc)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
printf '%-10s %5s %12s %12s %10s\n' stage ranks "step ms" "comm ms" "comm %"
for stage in none optimizer gradients; do
  for world in 1 2 4; do
    threads=$(( cores / world )); [ "$threads" -ge 1 ] || threads=1
    rm -rf "$work/ckpt"
    port=$(free_port)
    pids=()
    for rank in $(seq 0 $((world - 1))); do
      RAYON_NUM_THREADS=$threads ./target/release/tessera-trainer --config "$work/run.yaml" \
        --base-dir "$work" --rank "$rank" --world-size "$world" \
        --master-addr "127.0.0.1:$port" --set "parallelism.sharding=$stage" \
        > "$work/$stage-$world-$rank.json" 2> "$work/$stage-$world-$rank.log" &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    python3 - "$work/$stage-$world-0.json" "$stage" "$world" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
step, comm = s["stepSeconds"] * 1e3, s["commSecondsPerStep"] * 1e3
print(f"{sys.argv[2]:<10} {sys.argv[3]:>5} {step:12.1f} {comm:12.1f} {100 * comm / step:9.1f}%")
PY
  done
done
