#!/usr/bin/env bash
# train_small.sh BUILD_DIR -- integration test: two real psd shards on free
# loopback ports and two psd-train workers, one epoch on 4000 Fashion-MNIST
# images. Asserts that the workers succeed, that rank 0's logged loss falls
# from the first window of steps to the last, and that the test accuracy on
# 1000 images is at least 0.60 (chance is 0.10).
#
# Exits 0 on success, 1 on failure, 77 (CTest's conventional skip code) when
# the dataset is not installed. Only processes it started are stopped.
set -euo pipefail

BUILD=${1:?usage: tests/train_small.sh BUILD_DIR}
PSD=$BUILD/server/psd
PSCTL=$BUILD/client/psctl
TRAIN=$BUILD/client/psd-train
DATA=${PSD_DATA_DIR:-/usr/share/datasets/fashion-mnist}
LIMIT_S=240 # per worker; the whole run takes seconds when healthy

fail() { echo "train_small: FAIL: $*" >&2; exit 1; }

for b in "$PSD" "$PSCTL" "$TRAIN"; do
  [[ -x $b ]] || fail "$b is missing"
done
if [[ ! -e $DATA/train-images-idx3-ubyte.gz && ! -e $DATA/train-images-idx3-ubyte ]]; then
  echo "train_small: SKIP: no Fashion-MNIST in $DATA (install dataset-fashion-mnist)"
  exit 77
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/train_small.XXXXXX")
PIDS=()
cleanup() {
  local rc=$? p
  trap - EXIT
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ $rc -ne 0 ]]; then
    for f in "$TMP"/*.log; do
      echo "---- $(basename "$f")" >&2
      tail -n 20 "$f" >&2
    done
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT

# Ports from a random base so that concurrent test runs rarely meet; a port
# found busy is skipped, and a shard that still fails to bind fails the test
# with its log.
port=$((20000 + RANDOM % 20000))
SERVERS=()
for i in 0 1; do
  while ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; do port=$((port + 1)); done
  "$PSD" --listen "127.0.0.1:$port" >"$TMP/shard$i.log" 2>&1 &
  PIDS+=("$!")
  SERVERS+=("127.0.0.1:$port")
  port=$((port + 1))
done
for i in 0 1; do
  up=0
  for _ in $(seq 1 100); do
    kill -0 "${PIDS[$i]}" 2>/dev/null || fail "shard $i exited at start"
    if "$PSCTL" -s "${SERVERS[$i]}" ping >/dev/null 2>&1; then up=1; break; fi
    sleep 0.1
  done
  [[ $up -eq 1 ]] || fail "shard $i at ${SERVERS[$i]} did not answer ping"
done
LIST=$(IFS=,; echo "${SERVERS[*]}")

WORKER_PIDS=()
for r in 0 1; do
  OPENBLAS_NUM_THREADS=1 timeout "$LIMIT_S" "$TRAIN" --servers "$LIST" \
    --rank "$r" --workers 2 --mode sync --data "$DATA" \
    --train-limit 4000 --test-limit 1000 --epochs 1 --batch 32 \
    --log-every 10 >"$TMP/worker$r.log" 2>&1 &
  WORKER_PIDS+=("$!")
  PIDS+=("$!")
done
for r in 0 1; do
  rc=0
  wait "${WORKER_PIDS[$r]}" || rc=$?
  [[ $rc -ne 124 ]] || fail "worker $r still running after ${LIMIT_S}s"
  [[ $rc -eq 0 ]] || fail "worker $r exited with status $rc"
done

LOG=$TMP/worker0.log
mapfile -t losses < <(awk '$1 == "step" { print $NF }' "$LOG")
[[ ${#losses[@]} -ge 3 ]] || fail "expected 3 or more loss lines, got ${#losses[@]}"
first=${losses[0]}
last=${losses[${#losses[@]}-1]}
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }' ||
  fail "loss did not fall: first window $first, last $last"

acc=$(awk '/^final test accuracy:/ { print $4 }' "$LOG")
[[ -n $acc ]] || fail "rank 0 printed no final test accuracy"
awk -v a="$acc" 'BEGIN { exit !(a >= 0.60) }' ||
  fail "test accuracy $acc is below 0.60"

echo "train_small: ok: loss $first -> $last, test accuracy $acc"
