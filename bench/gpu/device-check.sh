#!/usr/bin/env bash
# Every check of the CUDA backend that needs a GPU, in one command, for a machine with an
# NVIDIA GPU, Python with torch and the nvidia-* wheels, and no Rust:
#   1. trainer/tests/cuda.rs (built by bench/gpu/bundle.sh): per-kernel parity with the CPU
#      backend, a whole model step, run-to-run bit identity, bit-exact resume through the
#      trainer binary, and one rank through NCCL equal to the host path for every sharding
#      stage (NCCL from the nvidia-nccl wheel torch brings) — with TESSERA_REQUIRE_GPU=1, so
#      no test can skip;
#   2. bench/gpu/run.sh: tessera-trainer against the PyTorch reference (tokens/s, MFU, peak
#      memory, parity of loss and gradient norm).
# Logs go to $OUT (default: a new temporary directory). Exits non-zero when either failed;
# the benchmark runs even when a test failed, so one visit to the GPU yields both.
# Usage: bash bench/gpu/device-check.sh BUNDLE [STEPS]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bundle=$(cd "${1:?usage: device-check.sh BUNDLE [STEPS]}" && pwd)
steps=${2:-30}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
libs=$(python3 - <<'PY' 2>/dev/null
import os
try:
    import nvidia
except ImportError:
    raise SystemExit(0)
dirs = set()
for top in nvidia.__path__:
    for d, _, files in os.walk(top):
        if any(f.startswith("lib") and ".so" in f for f in files):
            dirs.add(d)
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH=${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true

echo "== GPU tests ==" | tee "$out/summary.txt"
TESSERA_REQUIRE_GPU=1 TESSERA_TRAINER_BIN="$bundle/tessera-trainer" RUST_BACKTRACE=1 \
  timeout 900 "$bundle/cuda-tests" --test-threads=1 --nocapture > "$out/gpu-tests.log" 2>&1
tests=$?
grep -E "^test |test result|panicked|loss cpu" "$out/gpu-tests.log" | tee -a "$out/summary.txt"

echo "== benchmark ==" | tee -a "$out/summary.txt"
OUT="$out/bench" bash "$here/run.sh" "$bundle" "$steps" > "$out/bench.log" 2>&1
bench=$?
cat "$out/bench.log" | tee -a "$out/summary.txt" | tail -n 30
echo "tests exit $tests, benchmark exit $bench" | tee -a "$out/summary.txt"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
