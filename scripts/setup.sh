#!/usr/bin/env bash
# Set-up on a fresh Debian (or Ubuntu) machine: the system packages Tessera's build and tests
# need, the Helm SDK the chart tests render with, NVRTC and the CUDA headers the kernel compile
# test uses, then a build of the whole workspace. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every package named: --no-install-recommends skips what a package only recommends (a
# fresh machine once lacked libprotobuf-dev, which protobuf-compiler merely recommends).
packages=(
  protobuf-compiler   # protoc, for the agent's and the store's gRPC protocols and etcd-client's
  libprotobuf-dev     # protobuf's well-known .proto files (google/protobuf/descriptor.proto)
                      # that etcd-client's protocol imports
  gcc                 # the linker driver rustc uses, and the C compiler of -sys crates
  libc6-dev           # the C library's headers and start files for linking
  ca-certificates     # TLS to the package registries
  prometheus          # prometheus and promtool, for the chart's alert and dashboard tests
  python3-venv        # the virtual environment holding the Helm SDK (below)
  iproute2            # `ip netns`, for the tests' hosts as network namespaces (tests/common/hosts.rs)
)

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

# Helm's own template engine and linter for the chart tests (tests/chart.rs), with no helm
# binary: the helm-python-sdk wheel bundles Helm's Go SDK. Kept in .venv-helm (git-ignored);
# the tests look there, or at $TESSERA_HELM_PYTHON.
helm_sdk=helm-python-sdk==0.2.2
if ! .venv-helm/bin/python -c 'import helm_python' 2>/dev/null; then
  python3 -m venv .venv-helm
  .venv-helm/bin/pip install --quiet --disable-pip-version-check "$helm_sdk"
fi

# NVRTC and the CUDA headers for the kernel compile test (trainer/tests/kernels_compile.rs),
# and NCCL for the NCCL set-up tests (trainer/src/backend/cuda/nccl.rs; loading NCCL and
# making a communicator id need no GPU), with no CUDA toolkit and no GPU: NVIDIA's PyPI wheels
# for CUDA 13, pinned. Kept in .venv-cuda (git-ignored); the trainer finds it from the
# workspace root, or TESSERA_NVRTC_LIB, TESSERA_CUDA_INCLUDE and TESSERA_NCCL_LIB name other
# copies.
cuda_wheels=(nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-nccl-cu13==2.32.3)
cuda_installed=$(.venv-cuda/bin/python -c 'import importlib.metadata as m
print(m.version("nvidia-cuda-nvrtc"), m.version("nvidia-cuda-runtime"), m.version("nvidia-nccl-cu13"))' 2>/dev/null || true)
if [ "$cuda_installed" != "13.0.88 13.0.96 2.32.3" ]; then
  python3 -m venv .venv-cuda
  .venv-cuda/bin/pip install --quiet --disable-pip-version-check "${cuda_wheels[@]}"
fi

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (1.89 or newer) with rustup first" >&2; exit 1; }
cargo build --workspace --locked
