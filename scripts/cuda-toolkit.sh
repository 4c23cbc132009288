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
# stub NAME SONAME FEATURE SYS PATTERN RET: a link stub lib$NAME.so (soname SONAME) whose
# entry points, the functions of cudarc's SYS (under --features FEATURE) that PATTERN
# matches, each return RET (an error code), unless the stub is already there.
stub() {
    local name=$1 soname=$2 feature=$3 path=$4 pattern=$5 ret=$6 dir="$cuda/lib/stubs" sys
    [ -e "$dir/lib$name.so" ] && return
    sys=$(cargo metadata --format-version 1 --features "$feature" | python3 -c '
import json, sys, os
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "cudarc":
        print(os.path.join(os.path.dirname(p["manifest_path"]), sys.argv[1]))
        break' "$path")
    [ -f "$sys" ] || { echo "cuda-toolkit.sh: cudarc's $path not found (cargo fetch first)" >&2; exit 1; }
    mkdir -p "$dir"
    grep -oE "$pattern" "$sys" | awk '{print $NF}' | sort -u |
        sed "s/.*/int &(void) { return $ret; }/" >"$dir/lib$name.c"
    cc -shared -fPIC -Wl,-soname,"$soname" -o "$dir/$soname" "$dir/lib$name.c"
    ln -sfn "$soname" "$dir/lib$name.so"
}
# The driver API (CUDA_ERROR_STUB_LIBRARY, 34): the real libcuda.so.1 comes with the driver.
stub cuda libcuda.so.1 cuda src/driver/sys/mod.rs 'pub unsafe fn cu[A-Za-z0-9_]+' 34
# NCCL (ncclUnhandledCudaError, 1): the real libnccl.so.2 (about 200 MB) comes with the GPU
# machine's Python install (PyTorch's nvidia wheels).
stub nccl libnccl.so.2 nccl src/nccl/sys/mod.rs 'pub (unsafe )?fn nccl[A-Za-z0-9_]+' 1
cuda=$(cd "$cuda" && pwd)
echo "export CUDA_ROOT=$cuda CUDA_PATH=$cuda CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000 PATH=$cuda/bin:\$PATH"
