#!/usr/bin/env bash
# The CUDA check on a GPU machine with no Rust: runs the binaries that
# scripts/gpu-bundle.sh put beside this file (as gpu-bundle/run.sh) and writes the logs and
# summary.md into $OUT (default: out/ beside this file).
#
#   bash gpu-bundle/run.sh
#
# The CUDA runtime, cuBLAS, cuRAND and NVRTC are looked up, in order, in $VARLORA_CUDA_LIBS (folders
# separated by ':'), lib/ beside this file, the nvidia wheels of $PYTHON's (default
# python3's) site-packages, and the system's library cache; libcuda.so.1 comes from the
# driver. VARLORA_BENCH_FILTER narrows the bench (a criterion regex, default
# optimizer_step_cuda). Each step has its own time limit, so the whole run stays under about 6 minutes.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
rm -f "$out"/*.txt "$out"/summary.md
# The bundle's executables travel xz-compressed; Python's lzma unpacks them anywhere.
bin=$(mktemp -d)
for f in "$here"/bin/*.xz; do
    exe=$bin/$(basename "${f%.xz}")
    python3 -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)' "$f" "$exe" && chmod +x "$exe"
done
py=${PYTHON:-python3}

# The first folder holding $1, from the candidates on standard input.
find_lib() {
    while read -r d; do
        if [ -e "$d/$1" ]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

candidates() {
    tr ':' '\n' <<<"${VARLORA_CUDA_LIBS:-}"
    echo "$here/lib"
    "$py" - <<'EOF' 2>/dev/null
import glob, os, site
dirs = site.getsitepackages() + [site.getusersitepackages()]
for d in dirs:
    for lib in sorted(glob.glob(os.path.join(d, "nvidia", "*", "lib"))):
        print(lib)
EOF
    ldconfig -p 2>/dev/null | awk -F'=> ' '/=>/ {print $2}' | xargs -r -n1 dirname 2>/dev/null | sort -u
}

{
    echo "# Libraries"
    paths=()
    missing=0
    for lib in libcuda.so.1 libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
        if [ "$lib" = libcuda.so.1 ]; then
            dir=$( (tr ':' '\n' <<<"${LD_LIBRARY_PATH:-}"; echo /usr/local/nvidia/lib64
                ldconfig -p 2>/dev/null | awk -F'=> ' '/libcuda.so.1/ {print $2}' | xargs -r -n1 dirname 2>/dev/null) |
                find_lib "$lib")
        else
            dir=$(candidates | find_lib "$lib")
        fi
        if [ -n "$dir" ]; then
            echo "$lib: $(readlink -f "$dir/$lib")"
            paths+=("$dir")
        else
            echo "$lib: NOT FOUND"
            missing=1
        fi
    done
} >"$out/env.txt" 2>&1
cat "$out/env.txt"
if [ "$missing" = 1 ]; then
    echo "gpu-run.sh: a CUDA library is missing (see above): no NVIDIA driver here, or set" \
        "VARLORA_CUDA_LIBS to the folders holding cuBLAS, cuRAND and NVRTC for CUDA 13" >&2
    exit 2
fi
LD_LIBRARY_PATH=$(printf '%s\n' "${paths[@]}" | awk '!seen[$0]++' | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH

nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >>"$out/nvidia-smi.txt"
head -n 12 "$out/nvidia-smi.txt"

# Each step: a time limit in seconds, a log, a command. A failed step does not stop the rest.
step() {
    local limit=$1 log=$2
    shift 2
    echo "== $* (limit ${limit}s)" | tee -a "$out/$log"
    local start=$SECONDS
    timeout "$limit" "$@" >>"$out/$log" 2>&1
    local rc=$?
    echo "== exit $rc after $((SECONDS - start)) s" | tee -a "$out/$log"
    tail -n 3 "$out/$log"
}

# The fused CUDA kernel against the fused CPU kernel, bit for bit; then the CPU suites
# built with the feature.
step 150 test.txt "$bin/ivon_cuda"
step 60 test.txt "$bin/ivon_fused"
step 60 test.txt "$bin/ivon_api"
# The NCCL backend, world size 1, if the machine has libnccl (PyTorch's nvidia wheels do).
nccl=$(candidates | find_lib libnccl.so.2)
if [ -n "$nccl" ]; then
    LD_LIBRARY_PATH=$nccl:$LD_LIBRARY_PATH step 90 test.txt "$bin/collective_nccl"
else
    echo "== collective_nccl skipped: libnccl.so.2 not found" | tee -a "$out/test.txt"
fi
# A binary built with the feature still runs the CPU example.
step 60 quickstart.txt "$bin/quickstart"
# The decoder's LoRA training step and forward on GPU 0, random weights of SmolLM2's shape.
step 120 decoder.txt "$bin/decoder_step" 5 --random
# Fused IVON, tensor-op IVON and AdamW against a device-to-device copy, 1e5 to 1e8.
CRITERION_HOME=${CRITERION_HOME:-/tmp/varlora-criterion}
export CRITERION_HOME
step 240 bench.txt "$bin/optimizer_step" --bench "${VARLORA_BENCH_FILTER:-optimizer_step_cuda}" --noplot \
    --sample-size 10 --warm-up-time 1 --measurement-time 3

# The same sizes through torch on the same GPU: its copy, fused AdamW and ivon-opt.
if compgen -G "$here/wheels/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/varlora-site \
        "$here"/wheels/*.whl && export PYTHONPATH=/tmp/varlora-site
fi
step 120 torch_peer.txt "$py" "$here/torch_peer.py" 1e5 1e6 1e7 1e8

"$py" "$here/summary.py" "$CRITERION_HOME" "$out/test.txt" "$out/torch_peer.txt" >"$out/summary.md" 2>&1
cat "$out/summary.md"
