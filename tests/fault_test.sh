#!/usr/bin/env bash
# fault_test.sh BUILD_DIR -- real training through shard failures.
#
# 1. Exact resume: a sync job (2 shards, 2 workers) runs uninterrupted; the
#    same job runs again with --data-dir, and mid-training every shard is
#    stopped with SIGTERM (final checkpoint) and restarted from its
#    directory. Both jobs must end with the same weights, bit for bit.
# 2. kill -9: a shard checkpointing every second is killed mid-training and
#    restarted from its directory. The job must finish, and every block's
#    version on that shard must equal the version restored from the
#    checkpoint plus the rounds applied after the restart: nothing applied
#    twice, nothing lost that was not acknowledged.
# Only processes this script started are stopped.
set -euo pipefail
BUILD=${1:?usage: tests/fault_test.sh BUILD_DIR}
BUILD=$(cd "$BUILD" && pwd)
PSD=$BUILD/server/psd
PSCTL=$BUILD/client/psctl
TRAIN=$BUILD/client/psd-train
DATASET=${PSD_DATASET:-/usr/share/datasets/fashion-mnist}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/fault_test.XXXXXX")
PIDS=()
JOB=(--workers 2 --mode sync --epochs 2 --batch 32 --train-limit 4000 --test-limit 500
     --seed 11 --quiet --data "$DATASET")
TENSORS=(fc0.w fc0.b fc1.w fc1.b fc2.w fc2.b)
export OPENBLAS_NUM_THREADS=1

say() { echo "fault_test: $*"; }
fail() { echo "fault_test: FAIL: $*" >&2; for f in "$TMP"/*.log; do echo "---- $f"; tail -5 "$f"; done >&2; exit 1; }
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [[ -n ${KEEP_TMP:-} ]] || rm -rf "$TMP"
}
trap cleanup EXIT
[[ -x $PSD && -x $PSCTL && -x $TRAIN ]] || fail "binaries missing under $BUILD"
[[ -e $DATASET/train-images-idx3-ubyte.gz ]] || { say "SKIP: no Fashion-MNIST"; exit 77; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_shard INDEX PORT LOG [ARGS...]: sets SHARD_PID[INDEX]
declare -a SHARD_PID
start_shard() {
  local i=$1 port=$2 log=$3
  shift 3
  "$PSD" --listen "127.0.0.1:$port" --log-level info --worker-timeout 60 "$@" 2>>"$log" &
  SHARD_PID[$i]=$!
  PIDS+=($!)
  for _ in $(seq 200); do
    kill -0 "${SHARD_PID[$i]}" 2>/dev/null || fail "shard $i exited at start: $(tail -n 2 "$log")"
    "$PSCTL" -s "127.0.0.1:$port" --timeout 500 ping >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  fail "shard $i did not start on port $port"
}

start_workers() { # servers prefix
  WORKERS=()
  for r in 0 1; do
    "$TRAIN" --servers "$1" --rank $r "${JOB[@]}" >"$2-w$r.log" 2>&1 &
    WORKERS+=($!)
    PIDS+=($!)
  done
}

wait_workers() {
  for p in "${WORKERS[@]}"; do wait "$p" || fail "a worker failed"; done
}

rounds_of() { # port -> rounds applied by that shard process
  "$PSCTL" -s "127.0.0.1:$1" stats | sed -n 's/.*"rounds":\([0-9]*\).*/\1/p'
}

wait_rounds() { # port n
  for _ in $(seq 600); do
    local r
    r=$(rounds_of "$1" 2>/dev/null || true)
    [[ -n $r && $r -ge $2 ]] && return 0
    sleep 0.05
  done
  fail "shard on port $1 never reached $2 rounds"
}

dump() { # servers dir
  mkdir -p "$2"
  for t in "${TENSORS[@]}"; do "$PSCTL" -s "$1" pull "$t" --out "$2/$t" >/dev/null || fail "pull $t"; done
}

stop_shard() { # index
  kill -TERM "${SHARD_PID[$1]}"
  wait "${SHARD_PID[$1]}" || fail "shard $1 did not exit cleanly on SIGTERM"
}

P0=$(free_port) P1=$(free_port)
SERVERS="127.0.0.1:$P0,127.0.0.1:$P1"

# ---- 1. exact resume ---------------------------------------------------------------
if [[ -z ${SKIP_RESUME:-} ]]; then
say "uninterrupted reference run"
start_shard 0 "$P0" "$TMP/ref-s0.log" --block-size 8192
start_shard 1 "$P1" "$TMP/ref-s1.log" --block-size 8192
start_workers "$SERVERS" "$TMP/ref"
wait_workers
dump "$SERVERS" "$TMP/ref"
stop_shard 0
stop_shard 1

say "same job, every shard stopped with SIGTERM mid-training and restarted"
mkdir -p "$TMP/d0" "$TMP/d1"
start_shard 0 "$P0" "$TMP/res-s0.log" --data-dir "$TMP/d0" --block-size 8192
start_shard 1 "$P1" "$TMP/res-s1.log" --data-dir "$TMP/d1" --block-size 8192
start_workers "$SERVERS" "$TMP/res"
wait_rounds "$P0" 300
stop_shard 0
stop_shard 1
grep -q "final checkpoint" "$TMP/res-s0.log" || fail "shard 0 wrote no final checkpoint"
sleep 1 # the workers keep retrying meanwhile
start_shard 0 "$P0" "$TMP/res-s0.log" --data-dir "$TMP/d0" --block-size 8192
start_shard 1 "$P1" "$TMP/res-s1.log" --data-dir "$TMP/d1" --block-size 8192
grep -q "restored checkpoint" "$TMP/res-s1.log" || fail "shard 1 restored nothing"
wait_workers
dump "$SERVERS" "$TMP/res"
for t in "${TENSORS[@]}"; do
  cmp -s "$TMP/ref/$t" "$TMP/res/$t" || fail "$t after stop/restart differs from the uninterrupted run"
done
say "ok: weights identical, bit for bit, to the uninterrupted run"
stop_shard 0
stop_shard 1
fi

# ---- 2. kill -9 -----------------------------------------------------------------------
say "kill -9 of shard 1 mid-training, restart from its checkpoints"
rm -rf "$TMP/d0" "$TMP/d1"
mkdir -p "$TMP/d0" "$TMP/d1"
start_shard 0 "$P0" "$TMP/k9-s0.log" --data-dir "$TMP/d0" --block-size 8192
start_shard 1 "$P1" "$TMP/k9-s1.log" --data-dir "$TMP/d1" --checkpoint-every 0.2 --block-size 8192
start_workers "$SERVERS" "$TMP/k9"
# Kill once a checkpoint holds some training, and the job has gone past it.
for _ in $(seq 600); do
  n=$(grep -c "checkpoint [0-9]* written" "$TMP/k9-s1.log" || true)
  ((n >= 2)) && break
  sleep 0.02
done
((n >= 2)) || fail "shard 1 wrote no periodic checkpoint"
wait_rounds "$P1" "$(( $(rounds_of "$P1") + 50 ))"
kill -KILL "${SHARD_PID[1]}"
wait "${SHARD_PID[1]}" 2>/dev/null || true
: >"$TMP/k9-s1b.log"
start_shard 1 "$P1" "$TMP/k9-s1b.log" --data-dir "$TMP/d1" --block-size 8192
grep -q "restored checkpoint" "$TMP/k9-s1b.log" || fail "the restarted shard restored nothing"
wait_workers
after=$(rounds_of "$P1")
vers() { "$PSCTL" -s "127.0.0.1:$1" stats | sed -n 's/.*"version_min":\([0-9]*\),"version_max":\([0-9]*\),"version_sum":\([0-9]*\),"blocks_touched":\([0-9]*\).*/\1 \2 \3 \4/p'; }
read -r s0min s0max _ _ <<<"$(vers "$P0")"
read -r fmin fmax fsum nb <<<"$(vers "$P1")"
read -r rmin rmax rsum <<<"$(sed -n 's/.*restored checkpoint.*versions \([0-9]*\)\.\.\([0-9]*\) sum \([0-9]*\).*/\1 \2 \3/p' "$TMP/k9-s1b.log")"
[[ -n $s0min && -n $fmin && -n $rmin ]] || fail "missing version figures"
# Counted: shard 0 never failed, so its blocks hold the job's step count S.
# Every round the restarted shard applied added exactly one update to one
# block (sum of versions), its blocks stayed in lock step, and none holds
# more updates than there were steps.
say "steps S=$s0min; shard 1 restored at $rmin..$rmax, applied $after block-rounds since, ends at $fmin..$fmax"
((s0min == s0max)) || fail "shard 0 blocks disagree ($s0min..$s0max)"
((fsum == rsum + after)) || fail "version sum $fsum != restored $rsum + rounds $after"
# A block ends one round apart from another when the checkpoint caught a
# step half-way, or when the crash lost a push that had been acknowledged
# for one block while another block's push was resent; never more.
((fmax <= s0min)) || fail "shard 1 holds $fmax updates in a job of $s0min steps: an update applied twice"
((fmax - fmin <= rmax - rmin + 1)) ||
  fail "shard 1 blocks went from $rmin..$rmax to $fmin..$fmax: blocks drifted apart"
say "updates lost with the kill (acknowledged after the last checkpoint): $((s0min - fmin)) of $s0min"
grep -h "final test accuracy" "$TMP"/k9-w0.log || true
say "PASS"
