#!/usr/bin/env bash
# Builds, tests and benchmarks the CUDA path in one go, on a machine with an NVIDIA GPU,
# its driver and a Rust toolchain:
#
#   bash scripts/gpu-check.sh            # results in target/gpu-check/
#
# Without an nvcc on PATH it unpacks one from PyPI wheels (scripts/cuda-toolkit.sh);
# linking then needs cuBLAS and cuRAND libraries on the library path (a CUDA toolkit, or
# the nvidia-cublas / nvidia-curand wheels that PyTorch installs).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/gpu-check
mkdir -p "$out"
if ! command -v nvcc >/dev/null; then
    eval "$(bash scripts/cuda-toolkit.sh)"
fi
if [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
    CUDA_COMPUTE_CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d .)
    export CUDA_COMPUTE_CAP
fi
nvidia-smi | tee "$out/nvidia-smi.txt"

# The fused CUDA kernel against the fused CPU kernel (bit for bit), and the CPU suites
# with the feature on.
cargo test --release --features cuda --test ivon_cuda --test ivon_fused --test ivon_api \
    2>&1 | tee "$out/test.txt"
# A binary built with the feature still runs the CPU examples.
cargo run --release --features cuda --example quickstart 2>&1 | tee "$out/quickstart.txt"
# Fused IVON, tensor-op IVON and AdamW against a device-to-device copy of the same size.
cargo bench --features cuda --bench optimizer_step -- optimizer_step_cuda \
    2>&1 | tee "$out/bench.txt"
echo "results in $out"
