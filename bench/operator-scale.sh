#!/usr/bin/env bash
# Operator scale: time and peak RSS to reconcile RUNS TrainingRuns of PODS pods each to Running
# against the in-process test API server (goal: 1,000 x 8 in under 60 s and 200 MB).
# Usage: bash bench/operator-scale.sh [RUNS] [PODS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1000}
pods=${2:-8}
cargo bench -q -p tessera-operator --bench scale -- --runs "$runs" --pods "$pods"
