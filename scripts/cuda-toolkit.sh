#!/usr/bin/env bash
# Unpacks a CUDA 13.5 toolkit from PyPI wheels into .cuda/ (git-ignored) for building
# `--features cuda` on a machine without one, and prints the environment to use.
#
#   eval "$(bash scripts/cuda-toolkit.sh)"
#   cargo build --release --features cuda --lib
#
# What was verified on a CPU-only machine: the library builds (candle-kernels' PTX is
# compiled by this nvcc; 10 to 25 minutes on 2 cores), and
#   CARGO_TARGET_DIR=target/cuda cargo clippy --release --features cuda --all-targets
# is clean, so the CUDA kernel's Rust side, tests and benches type-check. cudarc 0.19.10
# knows CUDA up to 13.4, hence CUDARC_CUDA_VERSION=13040. Linking test or example
# binaries additionally needs libcuda (the driver, or the toolkit's stub), libcublas,
# libcublasLt and libcurand, which these wheels do not provide.
set -euo pipefail
cd "$(dirname "$0")/.."
root=.cuda
if [ ! -x "$root/nvidia/cu13/bin/nvcc" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download --no-deps --only-binary=:all: -q -d "$tmp" \
        nvidia-cuda-nvcc==13.5.37 nvidia-cuda-runtime==13.5.37 nvidia-cuda-crt==13.5.37 \
        nvidia-nvvm==13.5.37 nvidia-cuda-nvrtc==13.5.37 nvidia-cuda-cccl==13.3.5.0.6 >&2
    mkdir -p "$root"
    for w in "$tmp"/*.whl; do unzip -q -o "$w" -d "$root"; done
    ln -sfn lib "$root/nvidia/cu13/lib64"
    (cd "$root/nvidia/cu13/lib" && for f in *.so.*; do b=${f%%.so.*}.so; [ -e "$b" ] || ln -s "$f" "$b"; done)
fi
cuda=$(cd "$root/nvidia/cu13" && pwd)
echo "export CUDA_ROOT=$cuda CUDA_PATH=$cuda CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13040 PATH=$cuda/bin:\$PATH"
