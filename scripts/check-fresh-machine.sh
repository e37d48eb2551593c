#!/usr/bin/env bash
# The fresh-machine check: follows README.md on a new Debian 12 root, as a newcomer would.
#
#   bash scripts/check-fresh-machine.sh [WORK_DIR]
#
# 1. debootstrap a minimal Debian 12 (bookworm) root in WORK_DIR (default: a new temporary
#    directory), with nothing else installed: no protoc, no compiler, no Python.
# 2. Give it what every new machine of this workplace is given, as the environment and not
#    as a project step: this machine's Rust toolchain (mounted read-only), its extra CA
#    certificates and pip/apt configuration (the registries are reached through a proxy),
#    and name resolution.
# 3. Put a clean clone of this repository's HEAD at /work/main inside it, with ../shared
#    beside it (the test corpus).
# 4. Inside: the README's set-up command (`bash scripts/setup.sh`), then the README's main
#    command with a short override (`--set training.steps=20`), then `cargo test -p tessera-api`.
#
# Exits non-zero with the failing step's output. Needs root (debootstrap and chroot) and
# the Debian mirror; takes about as long as a first build of the workspace. Run it whenever
# the set-up, the build or the README's commands change. Nothing is left mounted; the root is
# removed at the end unless KEEP=1.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
shared=$(cd "$repo/../shared" 2>/dev/null && pwd || true)
[ "$(id -u)" -eq 0 ] || { echo "check-fresh-machine: run as root (debootstrap, chroot)" >&2; exit 1; }
[ -n "$shared" ] || { echo "check-fresh-machine: $repo/../shared is missing (the test corpus)" >&2; exit 1; }
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
[ -d "$rustup_home/toolchains" ] || { echo "check-fresh-machine: no Rust toolchain at $rustup_home" >&2; exit 1; }

work=${1:-$(mktemp -d /tmp/tessera-fresh.XXXXXX)}
root="$work/root"
logs="$work/logs"
mkdir -p "$logs"
started=$(date +%s)
elapsed() { echo "$(( $(date +%s) - started ))s"; }
step() { echo "=== [$(elapsed)] $*"; }

mounts=()
cleanup() {
  local i
  for (( i=${#mounts[@]}-1; i>=0; i-- )); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
  if [ "${KEEP:-0}" != 1 ] && [ -d "$root" ]; then rm -rf --one-file-system "$root"; fi
}
trap cleanup EXIT
bind() { # bind SRC DEST [ro]
  mkdir -p "$2"
  mount --bind "$1" "$2"
  mounts+=("$2")
  if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2"; fi
}
# run_logged NAME CMD...: runs a step, its output in logs/NAME.log; on failure prints its end.
run_logged() {
  local name=$1; shift
  if "$@" >"$logs/$name.log" 2>&1; then
    return 0
  fi
  local rc=$?
  echo "!!! step '$name' failed (exit $rc) after $(elapsed); the end of its output:" >&2
  tail -n 60 "$logs/$name.log" >&2
  exit "$rc"
}

step "debootstrap Debian 12 (minbase) into $root"
if ! command -v debootstrap >/dev/null; then
  run_logged install-debootstrap bash -c \
    'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap'
fi
if [ ! -x "$root/usr/bin/apt-get" ]; then
  run_logged debootstrap debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian
fi

step "the machine's environment: toolchain, CA certificates, pip and apt configuration, DNS"
cp /etc/resolv.conf "$root/etc/resolv.conf"
mkdir -p "$root/usr/local/share/ca-certificates" "$root/etc/ssl/certs" "$root/etc/apt/apt.conf.d"
cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
for f in /etc/apt/apt.conf.d/99artifact-registry; do [ -f "$f" ] && cp "$f" "$root$f"; done
mkdir -p "$root/root/.cargo"
cp -a "$cargo_home/bin" "$root/root/.cargo/bin"
bind "$rustup_home" "$root/root/.rustup" ro
bind /proc "$root/proc"
bind /sys "$root/sys"
bind /dev "$root/dev"
bind /dev/pts "$root/dev/pts"
mkdir -p "$root/tmp" && chmod 1777 "$root/tmp"

step "a clean clone of $(git -C "$repo" rev-parse --short HEAD) at /work/main, ../shared beside it"
rm -rf "$root/work"
mkdir -p "$root/work"
git clone --quiet --no-hardlinks "$repo" "$root/work/main"
cp -a "$shared" "$root/work/shared"

inside() { # inside NAME COMMAND: runs COMMAND in the new root as a login shell would
  run_logged "$1" chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RUSTUP_HOME=/root/.rustup CARGO_HOME=/root/.cargo \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    /bin/bash -c "cd /work/main && $2"
}

step "README set-up: bash scripts/setup.sh"
inside setup 'bash scripts/setup.sh'
tail -n 3 "$logs/setup.log"

step "README main command: target/debug/tessera run examples/local.yaml --set training.steps=20"
inside main-command 'target/debug/tessera run examples/local.yaml --set training.steps=20'
tail -n 8 "$logs/main-command.log"

step "cargo test -p tessera-api"
inside test-api 'cargo test -p tessera-api --locked'
grep -E '^test result' "$logs/test-api.log" | tail -n 5

step "passed in $(elapsed) (logs: $logs)"
