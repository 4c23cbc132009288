#!/bin/bash
# The optimizer_step bench's fused IVON step at an earlier commit against the working
# tree, alternated in one run: old, new, then the old binary's copy (an A/A pair that
# shows what this machine can resolve). Prints each round's medians and the ratios.
#
#   bash tools/bench_ab.sh REV [ROUNDS]
#
# Nothing else may run meanwhile. Both builds share target/: the old tree's bench is
# built first and copied out, then the working tree's is rebuilt over it.
set -euo pipefail
rev=${1:?usage: bench_ab.sh REV [ROUNDS]}
rounds=${2:-6}
root=$(git rev-parse --show-toplevel)
tmp=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$tmp/old" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
git -C "$root" worktree add -q "$tmp/old" "$rev"
build() { # the bench executable of the tree in $1, as an absolute path
  local exe
  exe=$(cd "$1" && CARGO_TARGET_DIR="$root/target" cargo bench -p varlora-speed \
    --bench optimizer_step --no-run 2>&1 | sed -n 's/.*(\(.*optimizer_step-[0-9a-f]*\)).*/\1/p')
  case "$exe" in /*) echo "$exe" ;; *) echo "$1/$exe" ;; esac
}
cp "$(build "$tmp/old")" "$tmp/old.bin"
cp "$tmp/old.bin" "$tmp/old2.bin"
# The old build overwrote the working tree's artifacts under the same names: rebuild them.
touch "$root/src/lib.rs" "$root/speed/benches/optimizer_step.rs"
cp "$(build "$root")" "$tmp/new.bin"
cmp -s "$tmp/old.bin" "$tmp/new.bin" && { echo "the two builds are the same binary"; exit 1; }
for round in $(seq "$rounds"); do
  for which in old new old2; do
    "$tmp/$which.bin" --bench --noplot --measurement-time 6 "optimizer_step/ivon_fused/" 2>/dev/null |
      awk -v r="$round" -v w="$which" '
        /ivon_fused\// { match($0, /ivon_fused\/[0-9]+/); n = substr($0, RSTART + 11, RLENGTH - 11) }
        /time:/ && n != "" {
          sub(/.*time: *\[/, ""); v = $3; u = $4
          if (u == "µs") v /= 1000; else if (u == "s") v *= 1000
          print r, w, n, v; n = "" }'
  done
done | python3 -c '
import sys, statistics as st
t = {}
for line in sys.stdin:
    r, w, n, v = line.split(); t.setdefault(int(n), {}).setdefault(w, []).append(float(v))
print("| n | median old (ms) | median new (ms) | new/old | old copy/old (A/A) | new/old per round |")
print("|---:|---:|---:|---:|---:|---|")
for n, d in sorted(t.items()):
    o, nw, o2 = (st.median(d[k]) for k in ("old", "new", "old2"))
    per = " ".join(f"{b / a:.2f}" for a, b in zip(d["old"], d["new"]))
    print(f"| {n} | {o:.3f} | {nw:.3f} | {nw / o:.3f} | {o2 / o:.3f} | {per} |")
'
