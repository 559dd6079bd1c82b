#!/usr/bin/env bash
# fault_test.sh BUILD_DIR -- real training through shard failures.
#
# Nothing here races a timer: the workers stop where the test wants them
# with psd-train's gate (--gate-file/--gate-step: after N steps a worker
# says so and waits for a file the test creates), and the test acts only on
# states it has seen (a worker at its gate, pushes pending on a shard, a
# checkpoint acknowledged), however fast or slow the machine is.
#
# 1. Exact resume: a sync job (2 shards, 2 workers, 124 steps) runs
#    uninterrupted; the same job runs again with --data-dir. Rank 1 is held
#    at its gate after 40 steps; rank 0 goes on and pushes step 41, whose
#    rounds wait for rank 1 on every block. Then every shard is stopped with
#    SIGTERM (final checkpoint, pending contributions included) and
#    restarted from its directory, and the gate opens; rank 0 resends what
#    the stop left unanswered. Both jobs must end with the same weights, bit
#    for bit.
# 2. kill -9: rank 1 is held after 20 steps and shard 1 is asked for a
#    checkpoint, which therefore holds exactly 20 steps; then rank 1 goes
#    on and rank 0 is held after 80 steps, with rank 1's step 81 pending on
#    shard 1, and shard 1 is killed with SIGKILL: the job is under way and
#    60 acknowledged steps are not in the checkpoint, by construction.
#    (Shard 0 meanwhile checkpoints every 0.2 s in the background.)
#    Restarted from its directory, the gate opens and the job must finish;
#    every block's version on that shard must equal the version restored
#    from the checkpoint plus the rounds applied after the restart: nothing
#    applied twice, nothing lost that was not acknowledged.
# Only processes this script started are stopped.
set -euo pipefail
. "$(dirname "$0")/testlib.sh"
BUILD=${1:?usage: tests/fault_test.sh BUILD_DIR}
BUILD=$(cd "$BUILD" && pwd)
PSD=$BUILD/server/psd
PSCTL=$BUILD/client/psctl
TRAIN=$BUILD/client/psd-train
DATASET=${PSD_DATASET:-/usr/share/datasets/fashion-mnist}
t_tmpdir fault_test
PIDS=()
STEPS=124 # 2 epochs of 4000 images / 2 workers / batch 32
JOB=(--workers 2 --mode sync --epochs 2 --batch 32 --train-limit 4000 --test-limit 500
     --seed 11 --quiet --data "$DATASET")
TENSORS=(fc0.w fc0.b fc1.w fc1.b fc2.w fc2.b)
export OPENBLAS_NUM_THREADS=1
# A worker's calls may wait on a gate the test holds: only a hang may end
# them (a dead shard is caught at once below, not by a deadline).
export PS_TIMEOUT_MS=$((T_WAIT * 1000))

say() { echo "fault_test: $*"; }
fail() {
  echo "fault_test: FAIL: $*" >&2
  for f in "$TMP"/*.log; do echo "---- $f"; tail -5 "$f"; done >&2
  exit 1
}
cleanup() {
  local rc=$?
  trap - EXIT
  t_stop_all
  t_tmp_done "$rc"
  exit "$rc"
}
trap cleanup EXIT
[[ -x $PSD && -x $PSCTL && -x $TRAIN ]] || fail "binaries missing under $BUILD"
[[ -e $DATASET/train-images-idx3-ubyte.gz ]] || { say "SKIP: no Fashion-MNIST"; exit 77; }

# start_shard INDEX PORT LOG [ARGS...]: PORT 0 takes a free one. Sets
# SHARD_PID[INDEX] and SHARD_PORT[INDEX]; returns once the shard answers.
declare -a SHARD_PID SHARD_PORT SHARD_LOG
start_shard() {
  local i=$1 port=$2 log=$3
  shift 3
  SHARD_LOG[$i]=$log
  "$PSD" --listen "127.0.0.1:$port" --log-level info --worker-timeout 600 "$@" 2>"$log" &
  SHARD_PID[$i]=$!
  PIDS+=($!)
  shard_up() {
    kill -0 "${SHARD_PID[$i]}" 2>/dev/null || fail "shard $i exited at start: $(tail -n 2 "$log")"
    t_has_port "$log"
  }
  t_wait_until "shard $i to listen" shard_up || fail "shard $i did not start"
  SHARD_PORT[$i]=$(t_port_of "$log")
  [[ $port == 0 || ${SHARD_PORT[$i]} == "$port" ]] || fail "shard $i listens on ${SHARD_PORT[$i]}, not $port"
  "$PSCTL" -s "127.0.0.1:${SHARD_PORT[$i]}" ping >/dev/null || fail "shard $i does not answer"
}

# start_worker RANK SERVERS PREFIX [GATE_FILE GATE_STEP]
start_worker() {
  local r=$1 servers=$2 prefix=$3 gate=()
  [[ $# -ge 5 ]] && gate=(--gate-file "$4" --gate-step "$5")
  "$TRAIN" --servers "$servers" --rank "$r" "${JOB[@]}" "${gate[@]}" >"$prefix-w$r.log" 2>&1 &
  WORKERS[$r]=$!
  PIDS+=($!)
}

# shards_alive: fail at once if a shard this test runs has died.
shards_alive() {
  for i in 0 1; do
    kill -0 "${SHARD_PID[$i]}" 2>/dev/null ||
      fail "shard $i (pid ${SHARD_PID[$i]}) died: $(grep -m 1 -E 'runtime error|ERROR|Sanitizer' "${SHARD_LOG[$i]}" || tail -n 3 "${SHARD_LOG[$i]}")"
  done
}

wait_workers() {
  t_wait_jobs "the workers" "${WORKERS[*]}" "${SHARD_PID[*]}" || { shards_alive; fail "the workers did not finish"; }
  for r in 0 1; do wait "${WORKERS[$r]}" || fail "worker $r failed: $(tail -n 3 "$1-w$r.log")"; done
}

stat_of() { # port key -> the shard's figure
  "$PSCTL" -s "127.0.0.1:$1" stats | sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p"
}

# at_gate LOG: the worker writing LOG waits at its gate.
at_gate() { grep -q "at the gate" "$1"; }
wait_gate() { # rank prefix
  at_gate_alive() {
    kill -0 "${WORKERS[$1]}" 2>/dev/null || fail "worker $1 ended before its gate: $(tail -n 3 "$2-w$1.log")"
    shards_alive
    at_gate "$2-w$1.log"
  }
  t_wait_until "worker $1 at its gate" at_gate_alive "$1" "$2" || fail "worker $1 never reached its gate"
}

# every_block_pending PORT: every block of the shard has a sync round
# waiting (the free worker pushed its step; the held one has not).
every_block_pending() {
  local p t
  shards_alive
  p=$(stat_of "$1" rounds_pending) t=$(stat_of "$1" blocks_touched)
  [[ -n $p && -n $t && $p -eq $t ]]
}

dump() { # servers dir
  mkdir -p "$2"
  for t in "${TENSORS[@]}"; do "$PSCTL" -s "$1" pull "$t" --out "$2/$t" >/dev/null || fail "pull $t"; done
}

stop_shard() { # index
  kill -TERM "${SHARD_PID[$1]}"
  wait "${SHARD_PID[$1]}" || fail "shard $1 did not exit cleanly on SIGTERM"
}

servers() { echo "127.0.0.1:${SHARD_PORT[0]},127.0.0.1:${SHARD_PORT[1]}"; }
declare -a WORKERS

# ---- 1. exact resume ---------------------------------------------------------------
if [[ -z ${SKIP_RESUME:-} ]]; then
say "uninterrupted reference run"
start_shard 0 0 "$TMP/ref-s0.log" --block-size 8192
start_shard 1 0 "$TMP/ref-s1.log" --block-size 8192
S=$(servers)
start_worker 0 "$S" "$TMP/ref"
start_worker 1 "$S" "$TMP/ref"
wait_workers "$TMP/ref"
dump "$S" "$TMP/ref"
stop_shard 0
stop_shard 1

say "same job: rank 1 held after 40 steps, rank 0's step 41 pending; every shard stopped with SIGTERM and restarted"
mkdir -p "$TMP/d0" "$TMP/d1"
start_shard 0 0 "$TMP/res-s0.log" --data-dir "$TMP/d0" --block-size 8192
start_shard 1 0 "$TMP/res-s1.log" --data-dir "$TMP/d1" --block-size 8192
S=$(servers)
start_worker 0 "$S" "$TMP/res"
start_worker 1 "$S" "$TMP/res" "$TMP/res.gate" 40
wait_gate 1 "$TMP/res"
t_wait_until "rank 0's step 41 pending on shard 0" every_block_pending "${SHARD_PORT[0]}" ||
  fail "rank 0's pushes never reached shard 0"
t_wait_until "rank 0's step 41 pending on shard 1" every_block_pending "${SHARD_PORT[1]}" ||
  fail "rank 0's pushes never reached shard 1"
stop_shard 0
stop_shard 1
grep -q "final checkpoint" "$TMP/res-s0.log" || fail "shard 0 wrote no final checkpoint"
grep -q "final checkpoint" "$TMP/res-s1.log" || fail "shard 1 wrote no final checkpoint"
sleep 1 # pacing only: rank 0 retries its connections meanwhile
start_shard 0 "${SHARD_PORT[0]}" "$TMP/res-s0b.log" --data-dir "$TMP/d0" --block-size 8192
start_shard 1 "${SHARD_PORT[1]}" "$TMP/res-s1b.log" --data-dir "$TMP/d1" --block-size 8192
grep -q "restored checkpoint" "$TMP/res-s0b.log" || fail "shard 0 restored nothing"
grep -q "restored checkpoint" "$TMP/res-s1b.log" || fail "shard 1 restored nothing"
: >"$TMP/res.gate"
wait_workers "$TMP/res"
dump "$S" "$TMP/res"
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
start_shard 0 0 "$TMP/k9-s0.log" --data-dir "$TMP/d0" --checkpoint-every 0.2 --block-size 8192
start_shard 1 0 "$TMP/k9-s1.log" --data-dir "$TMP/d1" --block-size 8192
S=$(servers)
P1=${SHARD_PORT[1]}
start_worker 0 "$S" "$TMP/k9" "$TMP/k9.gate0" 80
start_worker 1 "$S" "$TMP/k9" "$TMP/k9.gate1" 20
wait_gate 1 "$TMP/k9"
# The last checkpoint shard 1 will have: 20 steps (rank 0's step 21 pending).
"$PSCTL" -s "127.0.0.1:$P1" checkpoint >/dev/null || fail "checkpoint of shard 1 at step 20"
: >"$TMP/k9.gate1"
wait_gate 0 "$TMP/k9"
t_wait_until "rank 1's step 81 pending on shard 1" every_block_pending "$P1" ||
  fail "rank 1's pushes never reached shard 1"
kill -KILL "${SHARD_PID[1]}"
{ wait "${SHARD_PID[1]}"; } 2>/dev/null || true # (no "Killed" notice)
start_shard 1 "$P1" "$TMP/k9-s1b.log" --data-dir "$TMP/d1" --block-size 8192
grep -q "restored checkpoint" "$TMP/k9-s1b.log" || fail "the restarted shard restored nothing"
: >"$TMP/k9.gate0"
wait_workers "$TMP/k9"
after=$(stat_of "$P1" rounds)
vers() { "$PSCTL" -s "127.0.0.1:$1" stats | sed -n 's/.*"version_min":\([0-9]*\),"version_max":\([0-9]*\),"version_sum":\([0-9]*\),"blocks_touched":\([0-9]*\).*/\1 \2 \3 \4/p'; }
read -r s0min s0max _ _ <<<"$(vers "${SHARD_PORT[0]}")"
read -r fmin fmax fsum nb <<<"$(vers "$P1")"
read -r rmin rmax rsum <<<"$(sed -n 's/.*restored checkpoint.*versions \([0-9]*\)\.\.\([0-9]*\) sum \([0-9]*\).*/\1 \2 \3/p' "$TMP/k9-s1b.log")"
[[ -n $s0min && -n $fmin && -n $rmin ]] || fail "missing version figures"
# Counted: shard 0 never failed, so its blocks hold the job's step count.
# Every round the restarted shard applied added exactly one update to one
# block (sum of versions), its blocks stayed in lock step, and none holds
# more updates than there were steps.
say "steps $s0min; shard 1 restored at $rmin..$rmax, applied $after block-rounds since, ends at $fmin..$fmax over $nb blocks"
((s0min == STEPS && s0max == STEPS)) || fail "shard 0 blocks hold $s0min..$s0max updates, not $STEPS"
((rmin == 20 && rmax == 20)) || fail "shard 1 restored versions $rmin..$rmax, not those of its checkpoint after 20 steps"
((fsum == rsum + after)) || fail "version sum $fsum != restored $rsum + rounds $after"
# A block ends one round apart from another when the checkpoint caught a
# step half-way, or when the crash lost a push that had been acknowledged
# for one block while another block's push was resent; never more.
((fmax <= s0min)) || fail "shard 1 holds $fmax updates in a job of $s0min steps: an update applied twice"
((fmax - fmin <= rmax - rmin + 1)) ||
  fail "shard 1 blocks went from $rmin..$rmax to $fmin..$fmax: blocks drifted apart"
say "updates lost with the kill (acknowledged after the last checkpoint): $((s0min - fmin)) of $s0min"
((s0min - fmin > 0)) || fail "shard 1 lost nothing, yet 60 acknowledged steps were not in its checkpoint"
grep -h "final test accuracy" "$TMP"/k9-w0.log || true
say "PASS"
