#!/usr/bin/env bash
# Recovery time on one machine: `tessera run` of `tiny` with 2 local nodes × 1 CPU rank; one
# trainer rank is SIGKILLed mid-run, ROUNDS times. Prints, per round, the seconds from the
# failure's detection to the first training step of the resumed generation (the agents'
# own measurement), and whether the final weights equal an undisturbed run's.
# Goal: under 3 s. Usage: bash bench/recovery.sh [CORPUS] [ROUNDS]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
corpus=${1:-../shared/data/tinyshakespeare.txt}
rounds=${2:-3}
bench_setup
head -c 400000 "$corpus" > "$work/corpus.txt"
./target/release/tessera data prepare --tokenizer bytes --out "$work/data" "$work/corpus.txt" >/dev/null
cat > "$work/run.yaml" <<YAML
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata: {name: recovery}
spec:
  model: {preset: tiny}
  data: {train: data/train-*.bin, tokenizer: bytes}
  optimizer: {lr: 0.003, warmupSteps: 5, globalBatchTokens: 2048, microBatch: 4}
  training: {steps: 60, seed: 1}
  parallelism: {nodes: 2, gpusPerNode: 1}
  checkpoint: {path: checkpoints, everySteps: 10, keep: 2}
  faultTolerance: {backoffSeconds: 0, heartbeatTimeoutSeconds: 10, maxRestarts: 5}
YAML
./target/release/tessera run "$work/run.yaml" --out "$work/clean" --json 2>/dev/null > "$work/clean.json"
for round in $(seq 1 "$rounds"); do
  out="$work/round-$round"
  ./target/release/tessera run "$work/run.yaml" --out "$out" --json 2>/dev/null > "$out.json" &
  runner=$!
  until [ -f "$out/history.jsonl" ] && [ "$(wc -l < "$out/history.jsonl")" -ge 25 ]; do sleep 0.1; done
  victim=$(pgrep -f "tessera-trainer.*$work/run.yaml" | tail -1)
  kill -9 "$victim"
  wait "$runner"
  python3 - "$out.json" "$work/clean.json" "$round" <<'PY'
import json, sys
s, clean = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
f = s["failures"][0]
same = "identical" if s["weightsSha256"] == clean["weightsSha256"] else "DIFFERENT"
print(f"round {sys.argv[3]}: {f['reason']}: back to training in {f['recoverySeconds']:.2f} s; "
      f"restarts {s['restarts']}; final weights {same} to the undisturbed run")
PY
done
