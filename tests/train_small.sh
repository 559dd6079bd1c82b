#!/usr/bin/env bash
# train_small.sh BUILD_DIR -- integration test: two real psd shards on free
# loopback ports and two psd-train workers, one epoch on 4000 Fashion-MNIST
# images. The workers take their rank and the job's size from the
# environment as launchers set it: rank 1 from torchrun's RANK and
# WORLD_SIZE alone, rank 0 from PS_WORKER_RANK and PS_NUM_WORKERS, which win
# over a RANK and WORLD_SIZE naming another job (the sync job finishes only
# if both read theirs right). Asserts that the workers succeed, that rank
# 0's logged loss falls from the first window of steps to the last, and
# that the test accuracy on 1000 images is at least 0.60 (chance is 0.10). The job is sync mode with a
# fixed seed, so every figure is the same on every run and machine.
#
# Exits 0 on success, 1 on failure, 77 (CTest's conventional skip code) when
# the dataset is not installed. Only processes it started are stopped.
set -euo pipefail
. "$(dirname "$0")/testlib.sh"

BUILD=${1:?usage: tests/train_small.sh BUILD_DIR}
PSD=$BUILD/server/psd
PSCTL=$BUILD/client/psctl
TRAIN=$BUILD/client/psd-train
DATA=${PSD_DATA_DIR:-/usr/share/datasets/fashion-mnist}
LIMIT_S=$T_WAIT # per worker, only against a hang: the run takes seconds
export PS_TIMEOUT_MS=$((T_WAIT * 1000)) # a sync call waits for the slower worker

fail() { t_fail "$@"; }

for b in "$PSD" "$PSCTL" "$TRAIN"; do
  [[ -x $b ]] || fail "$b is missing"
done
if [[ ! -e $DATA/train-images-idx3-ubyte.gz && ! -e $DATA/train-images-idx3-ubyte ]]; then
  echo "train_small: SKIP: no Fashion-MNIST in $DATA (install dataset-fashion-mnist)"
  exit 77
fi

t_tmpdir train_small
t_cleanup_at_exit 20

# Each shard takes a free port (--listen 127.0.0.1:0) and logs it. A long
# --worker-timeout: a worker that starts late is still waited for, so the
# sync job (and so every figure checked below) is the same on any machine.
t_start_shards 2 --worker-timeout 600
for i in 0 1; do
  "$PSCTL" -s "${SERVERS[$i]}" ping >/dev/null 2>&1 || fail "shard $i at ${SERVERS[$i]} did not answer ping"
done

WORKER_PIDS=()
for r in 0 1; do
  if [[ $r -eq 0 ]]; then ENV=(PS_WORKER_RANK=0 PS_NUM_WORKERS=2 RANK=5 WORLD_SIZE=9)
  else ENV=(RANK=1 WORLD_SIZE=2); fi
  env -u PS_WORKER_RANK -u PS_NUM_WORKERS -u RANK -u WORLD_SIZE "${ENV[@]}" \
    OPENBLAS_NUM_THREADS=1 timeout "$LIMIT_S" "$TRAIN" --servers "$LIST" \
    --mode sync --data "$DATA" \
    --train-limit 4000 --test-limit 1000 --epochs 1 --batch 32 \
    --log-every 10 >"$TMP/worker$r.log" 2>&1 &
  WORKER_PIDS+=("$!")
  PIDS+=("$!")
done
# A shard that dies fails the test at once (the workers would only wait).
t_wait_jobs "the workers" "${WORKER_PIDS[*]}" "${SHARD_PIDS[*]}" ||
  fail "the workers did not finish"
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

grep -q "^psd-train: 2 workers, 2 shards, mode sync" "$LOG" ||
  fail "rank 0 did not run a job of 2 workers: $(grep '^psd-train:' "$LOG")"
for i in 0 1; do
  grep -q "worker rank 1 joined" "$TMP/shard$i.log" || fail "shard $i saw no rank 1 (RANK=1)"
done

acc=$(awk '/^final test accuracy:/ { print $4 }' "$LOG")
[[ -n $acc ]] || fail "rank 0 printed no final test accuracy"
awk -v a="$acc" 'BEGIN { exit !(a >= 0.60) }' ||
  fail "test accuracy $acc is below 0.60"

echo "train_small: ok: loss $first -> $last, test accuracy $acc"
