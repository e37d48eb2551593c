#!/usr/bin/env bash
# Trains `tiny` on tinyshakespeare (bytes) with the CPU backend and reports the validation
# loss reached and the wall time. Target: validation loss < 2.0 nats/byte within 5 minutes
# on a 2-core machine. Usage: bash bench/cpu-tiny-shakespeare.sh [CORPUS]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
corpus=${1:-../shared/data/tinyshakespeare.txt}
bench_setup
./target/release/tessera data prepare --tokenizer bytes --out "$work" "$corpus"
start=$(date +%s.%N)
./target/release/tessera-trainer --config bench/tiny-shakespeare.yaml --base-dir "$work" --log-every 100 \
  > "$work/summary.json"
end=$(date +%s.%N)
python3 - "$work/summary.json" "$start" "$end" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
wall = float(sys.argv[3]) - float(sys.argv[2])
print(f"tiny on tinyshakespeare: val loss {s['finalValLoss']:.4f} nats/byte after {s['steps']} steps, "
      f"{wall:.0f} s wall, {s['tokensPerSecond']:.0f} tokens/s, MFU {s['mfu']:.3f}")
print("target (< 2.0 within 300 s):", "met" if s['finalValLoss'] < 2.0 and wall <= 300 else "NOT met")
PY
