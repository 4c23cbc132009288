#!/usr/bin/env bash
# Unpacks a CUDA 13.0 toolkit from PyPI wheels into .cuda/ (git-ignored) for building
# `--features cuda` on a machine without one, and prints the environment to use.
#
#   eval "$(bash scripts/cuda-toolkit.sh)"
#   cargo build --release --features cuda --lib
#
# 13.0 because the lent GPU machine's driver (580) supports CUDA 13.0: binaries and PTX
# built by a newer toolkit may be refused there. Besides nvcc and NVRTC it unpacks cuBLAS
# and cuRAND, and writes a link stub for the driver library (libcuda.so.1, every entry
# point returning CUDA_ERROR_STUB_LIBRARY), so that test, bench and example binaries link
# here. At run time the real driver's libcuda.so.1 takes the stub's place; with the stub
# on the library path a binary starts and fails at `Device::new_cuda` with a CUDA error.
set -euo pipefail
cd "$(dirname "$0")/.."
root=.cuda
cuda="$root/nvidia/cu13"
if [ ! -x "$cuda/bin/nvcc" ] || [ ! -e "$cuda/lib/libcublas.so" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download --no-deps --only-binary=:all: -q --find-links "${CUDA_WHEELS:-$tmp}" -d "$tmp" \
        nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 \
        nvidia-nvvm==13.0.88 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cccl==13.0.85 \
        nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 >&2
    rm -rf "$root"
    mkdir -p "$root"
    for w in "$tmp"/*.whl; do unzip -q -o "$w" -d "$root"; done
    ln -sfn lib "$cuda/lib64"
    (cd "$cuda/lib" && for f in *.so.*; do b=${f%%.so.*}.so; [ -e "$b" ] || ln -s "$f" "$b"; done)
fi
if [ ! -e "$cuda/lib/stubs/libcuda.so" ]; then
    # The driver API's entry points, as cudarc (candle's binding) declares them.
    sys=$(cargo metadata --format-version 1 --features cuda | python3 -c '
import json, sys, os
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "cudarc":
        print(os.path.join(os.path.dirname(p["manifest_path"]), "src/driver/sys/mod.rs"))
        break')
    [ -f "$sys" ] || { echo "cuda-toolkit.sh: cudarc's sources not found (cargo fetch first)" >&2; exit 1; }
    mkdir -p "$cuda/lib/stubs"
    grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+' "$sys" | awk '{print $4}' | sort -u |
        sed 's/.*/int &(void) { return 34; }/' >"$cuda/lib/stubs/libcuda.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda/lib/stubs/libcuda.so.1" \
        "$cuda/lib/stubs/libcuda.c"
    ln -sfn libcuda.so.1 "$cuda/lib/stubs/libcuda.so"
fi
if [ ! -e "$cuda/lib/stubs/libnccl.so" ]; then
    # NCCL's entry points, as cudarc declares them: a link stub for the nccl feature's
    # binaries, whose real libnccl.so.2 (about 200 MB) the GPU machine's Python install
    # brings (PyTorch's nvidia wheels).
    sys=$(cargo metadata --format-version 1 --features nccl | python3 -c '
import json, sys, os
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "cudarc":
        print(os.path.join(os.path.dirname(p["manifest_path"]), "src/nccl/sys/mod.rs"))
        break')
    [ -f "$sys" ] || { echo "cuda-toolkit.sh: cudarc's NCCL sources not found" >&2; exit 1; }
    mkdir -p "$cuda/lib/stubs"
    grep -oE 'pub (unsafe )?fn nccl[A-Za-z0-9_]+' "$sys" | awk '{print $NF}' | sort -u |
        sed 's/.*/int &(void) { return 1; }/' >"$cuda/lib/stubs/libnccl.c"
    cc -shared -fPIC -Wl,-soname,libnccl.so.2 -o "$cuda/lib/stubs/libnccl.so.2" \
        "$cuda/lib/stubs/libnccl.c"
    ln -sfn libnccl.so.2 "$cuda/lib/stubs/libnccl.so"
fi
cuda=$(cd "$cuda" && pwd)
echo "export CUDA_ROOT=$cuda CUDA_PATH=$cuda CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000 PATH=$cuda/bin:\$PATH"
