#!/usr/bin/env bash
# compare.sh -- train the same model four ways on the same budget (the same
# number of epochs) and compare: 1 worker, then 4 workers in sync, async and
# SSP (staleness 2) modes, each on fresh shards started by run-local.sh.
#
# Writes deploy/results/compare.csv (config,epoch,elapsed,test_acc,loss),
# deploy/results/compare.png (test accuracy against epoch and against wall
# time) and prints a markdown table of the outcome.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=$ROOT/deploy/results
SHARDS=2
RUN_ARGS=()
TRAIN_EXTRA=()
NO_BUILD=0
# name:workers:mode
CONFIGS=(1w-sync:1:sync 4w-sync:4:sync 4w-async:4:async 4w-ssp2:4:ssp:2)

usage() {
  cat <<EOF
usage: deploy/compare.sh [options] [-- psd-train options]

  --epochs N        the budget every configuration gets (psd-train's default)
  --batch N         minibatch per worker
  --lr X, --optimizer NAME, --schedule NAME, --train-limit N, --test-limit N
  --shards N        server shards for every run (2)
  --out DIR         where compare.csv and compare.png go ($OUT_DIR)
  --no-build        use the binaries already built
  -h, --help
EOF
}

say() { printf 'compare: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --epochs|--batch|--lr|--optimizer|--schedule|--train-limit|--test-limit)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      RUN_ARGS+=("$1" "$2"); shift 2 ;;
    --shards) [[ $# -ge 2 ]] || die "$1 needs a value"; SHARDS=$2; shift 2 ;;
    --out) [[ $# -ge 2 ]] || die "$1 needs a value"; OUT_DIR=$2; shift 2 ;;
    --no-build) NO_BUILD=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; TRAIN_EXTRA+=("$@"); break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

command -v gnuplot >/dev/null || die "gnuplot is missing (apt-get install gnuplot-nox)"
mkdir -p "$OUT_DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/psd-compare.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

CSV=$OUT_DIR/compare.csv
echo "config,epoch,elapsed,test_acc,loss" >"$CSV"
for spec in "${CONFIGS[@]}"; do
  name=${spec%%:*}
  rest=${spec#*:}
  workers=${rest%%:*}
  mode=${rest#*:}
  build=()
  [[ $NO_BUILD -eq 1 ]] && build=(--no-build)
  say "$name: $workers worker(s), $mode"
  # The first run builds (a no-op when up to date); the rest reuse it.
  "$ROOT/deploy/run-local.sh" "${build[@]}" --shards "$SHARDS" \
    --workers "$workers" --mode "$mode" --log-dir "$WORK/$name" \
    "${RUN_ARGS[@]}" -- --csv "$WORK/$name.csv" "${TRAIN_EXTRA[@]}" ||
    die "$name failed (logs were in $WORK/$name)"
  NO_BUILD=1
  # psd-train's columns: mode,workers,epoch,loss,train_acc,test_acc,
  # samples_per_s,elapsed.
  awk -F, -v c="$name" 'NR > 1 { printf "%s,%s,%s,%s,%s\n", c, $3, $8, $6, $4 }' \
    "$WORK/$name.csv" >>"$CSV"
done

# One data file per configuration keeps the gnuplot script plain.
names=()
for spec in "${CONFIGS[@]}"; do
  name=${spec%%:*}
  names+=("$name")
  awk -F, -v c="$name" '$1 == c { print $2, $3, $4 }' "$CSV" >"$WORK/$name.dat"
done

if gnuplot -e 'set terminal' 2>&1 | grep -qw pngcairo; then
  TERM_LINE='set terminal pngcairo size 1200,480 font ",10"'
else
  TERM_LINE='set terminal png size 1200,480'
fi
{
  echo "$TERM_LINE"
  echo "set output '$OUT_DIR/compare.png'"
  echo "set multiplot layout 1,2 title 'psd: Fashion-MNIST MLP, $SHARDS shards'"
  echo "set grid; set key bottom right; set ylabel 'test accuracy'"
  echo "set xlabel 'epoch'"
  plot="plot"
  for n in "${names[@]}"; do
    plot+=" '$WORK/$n.dat' using 1:3 with linespoints title '$n',"
  done
  echo "${plot%,}"
  echo "set xlabel 'wall time (s)'"
  plot="plot"
  for n in "${names[@]}"; do
    plot+=" '$WORK/$n.dat' using 2:3 with linespoints title '$n',"
  done
  echo "${plot%,}"
  echo "unset multiplot"
} >"$WORK/plot.gp"
gnuplot "$WORK/plot.gp" || die "gnuplot failed"

echo
echo "| config | epochs | final test acc | best test acc | wall time (s) | final loss |"
echo "|---|---|---|---|---|---|"
for n in "${names[@]}"; do
  awk -F, -v c="$n" '
    $1 == c { e = $2; t = $3; a = $4; l = $5; if (a > best) best = a }
    END { printf "| %s | %d | %.4f | %.4f | %.1f | %.4f |\n", c, e, a, best, t, l }
  ' "$CSV"
done
echo
say "wrote $CSV and $OUT_DIR/compare.png"
