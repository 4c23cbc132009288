#!/usr/bin/env bash
# Builds the CUDA check here, on a machine with no GPU and no CUDA toolkit, for a GPU
# machine with no Rust:
#
#   bash scripts/gpu-bundle.sh        # writes gpu-bundle/ (git-ignored, under 64 MiB)
#   bash gpu-bundle/run.sh            # there: logs and summary.md in $OUT (or gpu-bundle/out)
#
# The bundle holds, stripped and built with `--features cuda` against the CUDA 13.0 wheels
# of scripts/cuda-toolkit.sh: the CUDA test suite (tests/ivon_cuda.rs) with the fused and
# API suites, the optimizer_step bench, the quickstart example, the decoder's training step
# on random weights of SmolLM2's shape (speed/examples/decoder_step.rs), the NCCL backend's
# test (built with `--features nccl`), plus the runner (scripts/gpu-run.sh). The binaries
# link cuBLAS, cuRAND and NVRTC (and libnccl) dynamically; the runner finds them in the
# GPU machine's Python install (PyTorch's nvidia wheels), and the driver supplies libcuda.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/cuda-toolkit.sh)"
export CARGO_TARGET_DIR=target/cuda
out=gpu-bundle
rm -rf "$out"
mkdir -p "$out/bin"

# The executables cargo reports for one build command, one path a line.
executables() {
    cargo "$@" --message-format=json-render-diagnostics |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])'
}

{
    executables test --release --features cuda --no-run \
        --test ivon_cuda --test ivon_fused --test ivon_api
    # The bench lives in the speed/ member, whose cuda feature turns on the crate's.
    executables bench -p varlora-speed --features cuda --no-run --bench optimizer_step
    executables build --release --features cuda --example quickstart
    # The decoder's LoRA step and forward; the 98 MB model cannot travel, so --random.
    executables build --release -p varlora-speed --features cuda --example decoder_step
    # The NCCL backend in a world of one GPU (needs libnccl there).
    executables test --release --features nccl --no-run --test collective_nccl
} >"$out/executables.txt"

while read -r exe; do
    name=$(basename "$exe")
    name=${name%-*} # cargo's hash suffix
    # Stripped, each is about 46 MB, most of it candle's PTX; xz brings it to about 5.
    strip -o "$out/bin/$name" "$exe"
    xz -T0 -6 "$out/bin/$name"
done <"$out/executables.txt"
rm "$out/executables.txt"
cp scripts/gpu-run.sh "$out/run.sh"
cp tools/gpu_summary.py "$out/summary.py"
cp tools/gpu_torch_peer.py "$out/torch_peer.py"
# The official IVON, timed beside ours on the GPU; a pure-Python wheel (18 KB).
python3 -m pip download -q --no-deps --only-binary=:all: -d "$out/wheels" ivon-opt==0.1.3 ||
    echo "gpu-bundle.sh: ivon-opt not fetched; the GPU run times torch alone" >&2
du -sh "$out"
size=$(du -sm "$out" | cut -f1)
if [ "$size" -ge 64 ]; then
    echo "gpu-bundle.sh: $out is $size MiB, over the device tool's 64 MiB" >&2
    exit 1
fi
ls -l "$out/bin"
