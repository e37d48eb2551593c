#!/usr/bin/env bash
# Builds what bench/gpu/device-check.sh runs on a GPU machine that has no Rust: the release
# binaries `tessera` and `tessera-trainer`, and the GPU test binary of trainer/tests/cuda.rs,
# stripped, in .gpu-bundle/ (ignored by git; name it in the device tool's `carry`).
# Usage: bash bench/gpu/bundle.sh [DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dest=${1:-$root/.gpu-bundle}
cd "$root"
cargo build --release -p tessera -p tessera-trainer --bins
tests=$(cargo test --release -p tessera-trainer --test cuda --no-run --message-format=json \
  | python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
            and msg["target"]["name"] == "cuda":
        print(msg["executable"])
')
[ -n "$tests" ] || { echo "bundle.sh: no test binary for trainer/tests/cuda.rs" >&2; exit 1; }
mkdir -p "$dest"
cp target/release/tessera target/release/tessera-trainer "$dest/"
cp "$tests" "$dest/cuda-tests"
strip "$dest/tessera" "$dest/tessera-trainer" "$dest/cuda-tests"
du -sh "$dest"/*
