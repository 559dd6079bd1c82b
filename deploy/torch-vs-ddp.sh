#!/usr/bin/env bash
# torch-vs-ddp.sh -- the Fashion-MNIST MLP (784-256-128-10, Adam) in
# PyTorch three ways on this machine, one after the other, with the same
# data, initial values, batch per worker, epochs and learning rate, 4
# worker processes each, one torch thread per process:
#   psd-server  psd.torch.ServerOptimizer, 2 psd shards running Adam (sync)
#   psd-dist    psd.torch.DistributedOptimizer, 2 shards averaging (sync)
#   ddp         torch.nn.parallel.DistributedDataParallel over gloo
# The psd runs go through deploy/run-local.sh --trainer torch / torch-dist.
#
# Writes deploy/results/torch-vs-ddp.csv (config,epoch,elapsed,test_acc,loss)
# and deploy/results/torch-vs-ddp.png (test accuracy against wall time),
# and prints a markdown table: time to 0.88 test accuracy, final accuracy.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=$ROOT/deploy/results
BUILD_DIR=${PSD_BUILD_DIR:-$ROOT/build}
WORKERS=4
SHARDS=2
TARGET=0.88
ARGS=(--epochs 12 --batch 64 --lr 0.001)
EXTRA=()
NO_BUILD=0

usage() {
  cat <<EOF
usage: deploy/torch-vs-ddp.sh [options]

  --epochs N --batch N --lr X   the budget every trainer gets (12, 64 per worker, 0.001)
  --train-limit N --test-limit N  fewer images (a quick run)
  --out DIR                     where the csv and png go ($OUT_DIR)
  --build-dir DIR               ($BUILD_DIR; env PSD_BUILD_DIR)
  --no-build                    use the build and the venv already there
                                (the venv: PSD_VENV, else BUILD_DIR/python-venv)
  -h, --help
EOF
}

say() { printf 'torch-vs-ddp: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --epochs|--batch|--lr|--train-limit|--test-limit)
      [[ $# -ge 2 ]] || die "$1 needs a value"; EXTRA+=("$1" "$2"); shift 2 ;;
    --out) [[ $# -ge 2 ]] || die "$1 needs a value"; OUT_DIR=$2; shift 2 ;;
    --build-dir) [[ $# -ge 2 ]] || die "$1 needs a value"; BUILD_DIR=$2; shift 2 ;;
    --no-build) NO_BUILD=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
ARGS+=("${EXTRA[@]}") # later flags win in argparse

command -v gnuplot >/dev/null || die "gnuplot is missing (apt-get install gnuplot-nox)"
mkdir -p "$OUT_DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/psd-torch-vs-ddp.XXXXXX")
DDP_PIDS=()
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in "${DDP_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${DDP_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ $rc -eq 0 ]]; then rm -rf "$WORK"; else say "logs kept in $WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

CSV=$OUT_DIR/torch-vs-ddp.csv
echo "config,epoch,elapsed,test_acc,loss" >"$CSV"
build=(--build-dir "$BUILD_DIR")
[[ $NO_BUILD -eq 1 ]] && build+=(--no-build)
for t in torch:psd-server torch-dist:psd-dist; do
  trainer=${t%%:*} name=${t#*:}
  say "$name: run-local.sh --trainer $trainer, $WORKERS workers, $SHARDS shards"
  "$ROOT/deploy/run-local.sh" "${build[@]}" --trainer "$trainer" --shards "$SHARDS" \
    --workers "$WORKERS" --log-dir "$WORK/$name" -- "${ARGS[@]}" \
    --csv "$WORK/$name.csv" --config "$name" || die "$name failed (logs in $WORK/$name)"
  cat "$WORK/$name.csv" >>"$CSV"
  build=(--build-dir "$BUILD_DIR" --no-build) # built once
done

# DDP: the same trainer, gloo on a free loopback port, no psd.
PY=${PSD_VENV:-$BUILD_DIR/python-venv}/bin/python
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
say "ddp: $WORKERS processes, gloo on 127.0.0.1:$PORT"
mkdir -p "$WORK/ddp"
for ((r = 0; r < WORKERS; r++)); do
  OMP_NUM_THREADS=1 "$PY" "$ROOT/deploy/torch_train.py" --trainer ddp --rank "$r" \
    --workers "$WORKERS" --ddp-port "$PORT" "${ARGS[@]}" --csv "$WORK/ddp.csv" \
    --config ddp >"$WORK/ddp/worker$r.log" 2>&1 &
  DDP_PIDS+=("$!")
done
tail -s 0.2 -n +1 -F --pid="${DDP_PIDS[0]}" "$WORK/ddp/worker0.log" 2>/dev/null &
TAIL=$!
for p in "${DDP_PIDS[@]}"; do wait "$p" || die "a ddp worker failed (logs in $WORK/ddp)"; done
wait "$TAIL" 2>/dev/null || true
DDP_PIDS=()
cat "$WORK/ddp.csv" >>"$CSV"

names=(psd-server psd-dist ddp)
for n in "${names[@]}"; do
  awk -F, -v c="$n" '$1 == c { print $3, $4 }' "$CSV" >"$WORK/$n.dat"
done
if gnuplot -e 'set terminal' 2>&1 | grep -qw pngcairo; then
  TERM_LINE='set terminal pngcairo size 900,520 font ",10"'
else
  TERM_LINE='set terminal png size 900,520'
fi
{
  echo "$TERM_LINE"
  echo "set output '$OUT_DIR/torch-vs-ddp.png'"
  echo "set title 'Fashion-MNIST MLP in PyTorch, $WORKERS workers: psd (2 shards, sync) vs DDP (gloo)'"
  echo "set grid; set key bottom right; set xlabel 'wall time (s)'; set ylabel 'test accuracy'"
  echo "set arrow from graph 0, first $TARGET to graph 1, first $TARGET nohead dashtype 2"
  plot="plot"
  for n in "${names[@]}"; do plot+=" '$WORK/$n.dat' using 1:2 with linespoints title '$n',"; done
  echo "${plot%,}"
} >"$WORK/plot.gp"
gnuplot "$WORK/plot.gp" || die "gnuplot failed"

echo
echo "| trainer | time to $TARGET (s) | epochs to $TARGET | final test acc | wall time (s) |"
echo "|---|---|---|---|---|"
for n in "${names[@]}"; do
  awk -F, -v c="$n" -v t="$TARGET" '
    $1 == c { e = $2; w = $3; a = $4; if (a >= t && hit == "") { hit = $3; he = $2 } }
    END { printf "| %s | %s | %s | %.4f | %.1f |\n", c, hit == "" ? "not reached" : hit,
          he == "" ? "-" : he, a, w }
  ' "$CSV"
done
echo
say "wrote $CSV and $OUT_DIR/torch-vs-ddp.png"
