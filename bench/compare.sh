#!/usr/bin/env bash
# Two builds of ax side by side in one run: a baseline revision (checked out and built
# in a scratch directory) and this tree, each through bench/run.sh, alternating, so a
# change can be shown not to slow the data path. Run as root.
#
#   bench/compare.sh REV            # e.g. bench/compare.sh main~3
#   ROUNDS=3 SECONDS_PER_RUN=5 bench/compare.sh REV
#   BASE_BIN=DIR bench/compare.sh REV   # REV already built: DIR has its ax and ax-bench
#
# Prints every row of bench/run.sh with the baseline's and this tree's ax figures (the
# mean over the rounds) and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: bench/compare.sh GIT-REVISION}
ROUNDS=${ROUNDS:-2}
[ "$(id -u)" = 0 ] || { echo "bench/compare.sh needs root (it makes network namespaces)" >&2; exit 1; }
WORK=$(mktemp -d)
BASE=$WORK/base
trap 'git worktree remove --force "$BASE" 2>/dev/null || true; rm -rf "$WORK"' EXIT
if [ -z "${BASE_BIN:-}" ]; then
  git worktree add -q --detach "$BASE" "$REV"
  BASE_TARGET=$PWD/target/bench-base
  (cd "$BASE" && CARGO_TARGET_DIR=$BASE_TARGET cargo build --release -q -p ax -p ax-bench)
  BASE_BIN=$BASE_TARGET/release
fi
cargo build --release -q -p ax -p ax-bench
for r in $(seq "$ROUNDS"); do
  AX_BIN=$BASE_BIN/ax AXB_BIN=$BASE_BIN/ax-bench bench/run.sh >"$WORK/base.$r"
  AX_BIN=$PWD/target/release/ax AXB_BIN=$PWD/target/release/ax-bench bench/run.sh >"$WORK/new.$r"
done
echo "ax $REV ($(git rev-parse --short "$REV")) vs this tree ($(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes')), $ROUNDS rounds"
# Rows of bench/run.sh are fixed-width: name (34), native (14), ax (14), ratio.
awk '
  function num(s) { gsub(/ /, "", s); return s }
  FNR == 1 { side = (FILENAME ~ /base\./) ? "base" : "new" }
  length($0) > 50 && $0 !~ /^(benchmark|---------|through a vservice)/ {
    name = substr($0, 1, 34); v = num(substr($0, 50, 15))
    if (v ~ /^[0-9.]+$/) {
      if (!(name in seen)) { seen[name] = 1; order[++n] = name }
      sum[side, name] += v; cnt[side, name]++
    }
  }
  END {
    printf "%-34s %14s %14s %10s\n", "benchmark (ax figures)", "baseline", "this tree", "this/base"
    for (i = 1; i <= n; i++) {
      k = order[i]
      if (cnt["base", k] == 0 || cnt["new", k] == 0) continue
      b = sum["base", k] / cnt["base", k]; t = sum["new", k] / cnt["new", k]
      printf "%-34s %14.2f %14.2f %10.3f\n", k, b, t, (b > 0 ? t / b : 0)
    }
  }' "$WORK"/base.* "$WORK"/new.*
