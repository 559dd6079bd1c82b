#!/usr/bin/env bash
# jobs_test.sh BUILD_DIR -- several named jobs on the same long-lived shards
# (issue "Jobs and control"), with real psd shards and psd-train workers on
# Fashion-MNIST (a small subset).
#
# 1. Two jobs at once on the same 2 shards: "sync2" (2 workers, sync) and
#    "async3" (3 workers, async). sync2's weights are byte-identical to the
#    same job run alone on fresh shards; async3 reaches an accuracy within
#    0.1 of its run on fresh shards (async updates land in arrival order,
#    so its bytes are not reproducible anywhere, not even on fresh shards).
# 2. Both runs ended when their workers closed (psctl jobs); the tensors
#    stay, with their versions.
# 3. A third job reuses the name sync2 after that: its run 2, which keeps
#    the tensors of run 1 and starts clocks and rounds anew. Its ranks start
#    one after the other (rank 1 only once rank 0 has joined), and rank 1
#    reconnects within the run: shard 1 is restarted from its checkpoint
#    while rank 1 is held at a gate. Its weights are byte-identical to the
#    same two runs on fresh shards, and the run is still run 2 on the
#    restarted shard (no "run 3 begins").
# 4. A restart of every shard restores every job: `psctl jobs` lists the
#    same jobs, runs and tensors as before, and the weights are the same.
# 5. `psctl job drop` deletes a job's tensors and nothing of the other's.
#
# Nothing is decided by timing: ranks are held at gates, starts wait for
# the shards' log lines. Exits 77 without the dataset.
set -euo pipefail
. "$(dirname "$0")/testlib.sh"

BUILD=${1:?usage: tests/jobs_test.sh BUILD_DIR}
PSD=$BUILD/server/psd
PSCTL=$BUILD/client/psctl
TRAIN=$BUILD/client/psd-train
DATA=${PSD_DATA_DIR:-/usr/share/datasets/fashion-mnist}
export PS_TIMEOUT_MS=$((T_WAIT * 1000))
export OPENBLAS_NUM_THREADS=1

fail() { t_fail "$@"; }
say() { echo "jobs_test: $*"; }

for b in "$PSD" "$PSCTL" "$TRAIN"; do [[ -x $b ]] || fail "$b is missing"; done
if [[ ! -e $DATA/train-images-idx3-ubyte.gz && ! -e $DATA/train-images-idx3-ubyte ]]; then
  echo "jobs_test: SKIP: no Fashion-MNIST in $DATA (install dataset-fashion-mnist)"
  exit 77
fi

t_tmpdir jobs_test
t_cleanup_at_exit 15

# start_shard NAME I PORT LIST: shard I of LIST on PORT (0: a free one),
# its data in $TMP/NAME-dI; sets SHARD_PID and SHARD_PORT.
start_shard() {
  local name=$1 i=$2 port=$3 list=$4
  local args=(--listen "127.0.0.1:$port" --data-dir "$TMP/$name-d$i" --worker-timeout 600)
  [[ -n $list ]] && args+=(--servers "$list" --index "$i")
  t_start_psd "$TMP/$name-shard$i.log" "$PSD" "${args[@]}"
  SHARD_PID=$T_PID
  SHARD_PORT=$T_PORT
}

# cluster NAME: two shards; sets LIST_NAME... as the global LIST and SPIDS.
cluster() {
  local name=$1 ports=() i
  SPIDS=()
  for i in 0 1; do
    start_shard "$name" "$i" 0 ""
    SPIDS+=("$SHARD_PID")
    ports+=("$SHARD_PORT")
  done
  LIST="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]}"
}

# train JOB RANK WORKERS MODE LOG [ARGS...]: one psd-train worker, in the
# background; its pid is appended to WPIDS.
# async3 trains on more images: its accuracy, compared across runs, must
# not hang on the order its updates happened to land in. A constant
# learning rate: psd-train's default cosine schedule ends at 0 after the
# first run's steps, so a second run would change nothing.
train() {
  local job=$1 rank=$2 workers=$3 mode=$4 log=$5 limit=1200
  shift 5
  [[ $mode == async ]] && limit=6000
  "$TRAIN" --servers "$LIST" --job "$job" --rank "$rank" --workers "$workers" --mode "$mode" \
    --data "$DATA" --train-limit "$limit" --test-limit 1000 --epochs 1 --batch 32 --seed 7 \
    --schedule constant \
    "$@" >"$TMP/$log" 2>&1 &
  WPIDS+=("$!")
  PIDS+=("$!")
}

# finish WHAT: wait for every worker of WPIDS; all must succeed.
finish() {
  t_wait_jobs "$1" "${WPIDS[*]}" "${SPIDS[*]}" || fail "$1 did not finish"
  local p rc
  for p in "${WPIDS[@]}"; do
    rc=0
    wait "$p" || rc=$?
    [[ $rc -eq 0 ]] || fail "$1: a worker exited with status $rc"
  done
  WPIDS=()
}

# weights JOB DIR: every tensor of JOB pulled into DIR, one file each.
weights() {
  local job=$1 dir=$2 name
  mkdir -p "$dir"
  "$PSCTL" -s "$LIST" --job "$job" list >"$dir.list" || fail "list of $job"
  [[ -s $dir.list ]] || fail "job $job has no tensors"
  while read -r name _; do
    "$PSCTL" -s "$LIST" --job "$job" pull "$name" --out "$dir/$name" >/dev/null ||
      fail "pull $name of $job"
  done <"$dir.list"
}

# wait_ended JOB RUN: every shard has seen the run's workers leave (their
# goodbyes travel on their own connections; a psctl request may overtake
# them). A new run must not start before: it would join the old one.
wait_ended() {
  ended() { "$PSCTL" -s "$LIST" jobs 2>/dev/null | grep -q "^$1 run $2 ended "; }
  t_wait_until "job $1's run $2 to end on every shard" ended $1 $2 || fail "job $1's run $2 did not end"
}

accuracy() { awk '/^final test accuracy:/ { print $4 }' "$TMP/$1"; }

# ---- the reference: each job alone on fresh shards ----------------------------
WPIDS=()
cluster fresh
say "fresh shards $LIST: sync2 alone"
train sync2 0 2 sync fresh-sync-r0.log
train sync2 1 2 sync fresh-sync-r1.log
finish "sync2 on fresh shards"
wait_ended sync2 1
weights sync2 "$TMP/w-fresh"
say "fresh shards: sync2's run 2 (tensors kept)"
train sync2 0 2 sync fresh-sync2-r0.log
train sync2 1 2 sync fresh-sync2-r1.log
finish "sync2's run 2 on fresh shards"
wait_ended sync2 2
weights sync2 "$TMP/w-fresh2"
cmp -s "$TMP/w-fresh/fc0.w" "$TMP/w-fresh2/fc0.w" && fail "run 2 of sync2 did not change its weights"
say "fresh shards: async3 alone"
for r in 0 1 2; do train async3 "$r" 3 async "fresh-async-r$r.log"; done
finish "async3 on fresh shards"
acc_fresh=$(accuracy fresh-async-r0.log)
[[ -n $acc_fresh ]] || fail "async3 printed no accuracy on fresh shards"
for p in "${SPIDS[@]}"; do kill -TERM "$p"; wait "$p" || true; done

# ---- 1. two jobs at once on shared shards -------------------------------------
cluster shared
SHARED_LIST=$LIST
say "shared shards $LIST: sync2 and async3 at the same time"
train sync2 0 2 sync shared-sync-r0.log
for r in 0 1 2; do train async3 "$r" 3 async "shared-async-r$r.log"; done
train sync2 1 2 sync shared-sync-r1.log
finish "sync2 and async3 on shared shards"
wait_ended sync2 1
wait_ended async3 1
weights sync2 "$TMP/w-shared"
for f in "$TMP"/w-fresh/*; do
  cmp -s "$f" "$TMP/w-shared/$(basename "$f")" ||
    fail "sync2's $(basename "$f") beside async3 differs from sync2 alone on fresh shards"
done
acc_shared=$(accuracy shared-async-r0.log)
awk -v a="$acc_shared" -v b="$acc_fresh" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 0.1) }' ||
  fail "async3 beside sync2 reached $acc_shared, alone $acc_fresh"
say "sync2 byte-identical beside async3; async3 accuracy $acc_shared (alone $acc_fresh)"

# ---- 2. runs ended, tensors kept, drop deletes --------------------------------
"$PSCTL" -s "$LIST" jobs >"$TMP/jobs1.txt" || fail "psctl jobs"
cat "$TMP/jobs1.txt"
grep -q '^sync2 run 1 ended 2 workers sync live 0 ' "$TMP/jobs1.txt" || fail "sync2's run 1 is not listed as ended"
grep -q '^async3 run 1 ended 3 workers async live 0 ' "$TMP/jobs1.txt" || fail "async3's run 1 is not listed as ended"
for s in 0 1; do
  grep -q "job 'sync2' run 1 ended: every worker left" "$TMP/shared-shard$s.log" ||
    fail "shard $s did not log the end of sync2's run"
done
v=$("$PSCTL" -s "$LIST" --job sync2 pull fc0.w | awk '$1 == "version" { print $2 }')
[[ ${v:-0} -gt 0 ]] || fail "sync2's fc0.w lost its version after the run ended ($v)"
# The other job has an fc0.w of its own: names are per job.
"$PSCTL" -s "$LIST" --job async3 lookup fc0.w >/dev/null || fail "async3 has no fc0.w of its own"

# ---- 3. the name again: run 2, staggered ranks, a reconnect within the run ----
say "sync2's run 2 on the shared shards: rank 0 first, rank 1 later, held at a gate while shard 1 restarts"
began() { [[ $(grep -c "job 'sync2': run 2 begins" "$TMP/shared-shard0.log") -ge 1 ]]; }
train sync2 0 2 sync again-r0.log
t_wait_until "rank 0 to start sync2's run 2" began || fail "rank 0 did not start run 2"
train sync2 1 2 sync again-r1.log --gate-file "$TMP/gate" --gate-step 10
at_gate() { grep -q 'at the gate after 10 steps' "$TMP/again-r1.log" 2>/dev/null; }
t_wait_until "rank 1 at its gate" at_gate || fail "rank 1 never reached its gate"
# Shard 1 stops (a final checkpoint) and comes back on the same port.
port1=${LIST##*:}
kill -TERM "${SPIDS[1]}"
wait "${SPIDS[1]}" || fail "shard 1 did not stop cleanly"
start_shard shared 1 "$port1" ""
SPIDS[1]=$SHARD_PID
touch "$TMP/gate"
finish "sync2's second run"
wait_ended sync2 2
weights sync2 "$TMP/w-again"
for f in "$TMP"/w-fresh2/*; do
  cmp -s "$f" "$TMP/w-again/$(basename "$f")" ||
    fail "sync2's $(basename "$f") after run 2 (staggered, a reconnect) differs from fresh shards"
done
if awk '/^---- start/ { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }' \
    "$TMP/shared-shard1.log" | grep -q "run [0-9]* begins"; then
  fail "the restarted shard 1 began a new run: rank 1's reconnect did not continue run 2"
fi
grep -q '^sync2 run 2 ended ' <("$PSCTL" -s "$LIST" jobs) || fail "sync2 is not at its ended run 2"
say "sync2's run 2: byte-identical to the same runs on fresh shards"

# ---- 4. a restart restores every job ------------------------------------------
"$PSCTL" -s "$LIST" jobs | sort >"$TMP/jobs-before.txt"
ports=("${LIST%%,*}" "${LIST##*,}")
for i in 0 1; do
  kill -TERM "${SPIDS[$i]}"
  wait "${SPIDS[$i]}" || fail "shard $i did not stop cleanly"
done
for i in 0 1; do
  start_shard shared "$i" "${ports[$i]##*:}" ""
  SPIDS[$i]=$SHARD_PID
done
"$PSCTL" -s "$LIST" jobs | sort >"$TMP/jobs-after.txt"
diff "$TMP/jobs-before.txt" "$TMP/jobs-after.txt" || fail "the jobs after a restart differ"
grep -q '^async3 run 1 ended 3 workers async ' "$TMP/jobs-after.txt" &&
  grep -q '^sync2 run 2 ended 2 workers sync ' "$TMP/jobs-after.txt" ||
  fail "a job is missing after the restart"
"$PSCTL" -s "$LIST" --job sync2 pull fc0.w --out "$TMP/sync2-restored" >/dev/null || fail "pull"
cmp -s "$TMP/sync2-restored" "$TMP/w-again/fc0.w" || fail "sync2's fc0.w changed across the restart"

# ---- 5. drop ---------------------------------------------------------------------
"$PSCTL" -s "$LIST" --job async3 pull fc0.w --out "$TMP/async3-fc0.w" >/dev/null || fail "pull async3"
"$PSCTL" -s "$LIST" job drop sync2 | grep -q '^ok: job sync2 dropped on 2 shards' || fail "job drop"
[[ -z $("$PSCTL" -s "$LIST" --job sync2 list) ]] || fail "sync2's tensors survived the drop"
"$PSCTL" -s "$LIST" --job async3 pull fc0.w --out "$TMP/async3-fc0.w.after" >/dev/null
cmp -s "$TMP/async3-fc0.w" "$TMP/async3-fc0.w.after" || fail "dropping sync2 changed async3"
"$PSCTL" -s "$LIST" job drop nosuchjob 2>"$TMP/drop.err" && fail "dropping an unknown job succeeded"
grep -q "no job named 'nosuchjob'" "$TMP/drop.err" || fail "unknown job: $(cat "$TMP/drop.err")"

"$PSCTL" -s "$LIST" jobs | grep -q '^sync2 ' && fail "sync2 is still listed after its drop"
say "ok: two jobs side by side, a name reused, a reconnect, a restart"
