# Shared set-up of the CPU benchmarks (source it): runs from the repository root, builds the
# release binaries, and makes a scratch directory $work that is removed on exit.
bench_setup() {
  cd "$(dirname "$0")/.."
  cargo build --release --locked -q -p tessera -p tessera-trainer
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
}
