#!/usr/bin/env bash
# Set-up on a fresh Debian (or Ubuntu) machine: the system packages Tessera's build and tests
# need, then a build of the whole workspace. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(protobuf-compiler)   # protoc, for the agent's gRPC protocol (api/proto)

missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# etcd, which the coordination store's tests start (store/tests); Debian's etcd-server.
[ -x /usr/bin/etcd ] || missing+=(etcd-server)
if ((${#missing[@]})); then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (1.89 or newer) with rustup first" >&2; exit 1; }
cargo build --workspace --locked
