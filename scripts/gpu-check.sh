#!/usr/bin/env bash
# The CUDA check in one command on a GPU machine:
#
#   bash scripts/gpu-check.sh          # logs and summary.md in $OUT (or gpu-bundle/out)
#
# It runs the binaries of gpu-bundle/ (scripts/gpu-run.sh), which scripts/gpu-bundle.sh
# builds on any Linux machine with Rust, GPU or not. Through the `device` tool: build the
# bundle here, then run this command there with `gpu-bundle` carried. Where the GPU
# machine has Rust and no bundle is present, it builds the bundle first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f gpu-bundle/run.sh ]; then
    if ! command -v cargo >/dev/null; then
        echo "gpu-check.sh: no gpu-bundle/ and no cargo here: run scripts/gpu-bundle.sh on a" \
            "machine with Rust and carry gpu-bundle/ here" >&2
        exit 2
    fi
    bash scripts/gpu-bundle.sh
fi
exec bash gpu-bundle/run.sh
