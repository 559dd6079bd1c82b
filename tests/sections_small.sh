#!/usr/bin/env bash
# sections_small.sh BUILD_DIR -- integration test of the sparse workload:
# two real psd shards on free loopback ports and four psd-train workers of
# --model sections (sync) on the first 6000 packages of the machine's package
# index, 3 epochs. Asserts that:
#   - every worker succeeds, and rank 0's logged loss falls;
#   - every epoch line reports rows/step, rows/s and rows_touched;
#   - the test accuracy is at least 0.55 (the most common section of those
#     packages is 12% of them; the run reaches about 0.70);
#   - both shards hold rows of the job's table, together at least the rows
#     the training set uses (rows are spread over the shards by hashing),
#     and as many as rank 0's last rows_touched says;
#   - the same job run again under another job name on the same shards
#     gives the same losses and accuracies and the same rows on each shard
#     (sync rounds average rows in rank order: deterministic).
#
# Exits 0 on success, 1 on failure, 77 (CTest's skip code) when the machine
# has no package index (apt-get update fills it). Only processes it started
# are stopped.
set -euo pipefail
. "$(dirname "$0")/testlib.sh"

BUILD=${1:?usage: tests/sections_small.sh BUILD_DIR}
PSD=$BUILD/server/psd
PSCTL=$BUILD/client/psctl
TRAIN=$BUILD/client/psd-train
WORKERS=4
export PS_TIMEOUT_MS=$((T_WAIT * 1000)) # a sync call waits for the slower worker

fail() { t_fail "$@"; }

for b in "$PSD" "$PSCTL" "$TRAIN"; do
  [[ -x $b ]] || fail "$b is missing"
done
if ! command -v apt-cache >/dev/null; then
  echo "sections_small: SKIP: no apt-cache here (the workload reads a Debian package index)"
  exit 77
fi

t_tmpdir sections_small
t_cleanup_at_exit 20

# One copy of the index for every worker: they must read the same bytes.
INDEX=$TMP/packages.index
apt-cache dumpavail >"$INDEX" 2>/dev/null || true
if ! grep -q '^Package:' "$INDEX"; then
  echo "sections_small: SKIP: the package index is empty (run apt-get update to fetch it)"
  exit 77
fi

# A long --worker-timeout: a worker that starts late is still waited for, so
# the sync job, and every figure compared below, is the same on any machine.
t_start_shards 2 --worker-timeout 600

# run_job NAME: the whole job under job name NAME; rank r logs to NAME.r.log.
run_job() {
  local job=$1 r rc pids=()
  for ((r = 0; r < WORKERS; r++)); do
    timeout "$T_WAIT" "$TRAIN" --model sections --index "$INDEX" --packages 6000 \
      --servers "$LIST" --rank "$r" --workers "$WORKERS" --mode sync --job "$job" \
      --epochs 3 --batch 16 --log-every 20 >"$TMP/$job.$r.log" 2>&1 &
    pids+=("$!")
    PIDS+=("$!")
  done
  t_wait_jobs "the workers of $job" "${pids[*]}" "${SHARD_PIDS[*]}" ||
    fail "the workers of $job did not finish"
  for ((r = 0; r < WORKERS; r++)); do
    rc=0
    wait "${pids[$r]}" || rc=$?
    [[ $rc -ne 124 ]] || fail "$job worker $r still running after ${T_WAIT}s"
    [[ $rc -eq 0 ]] || fail "$job worker $r exited with status $rc"
  done
}

# table_rows JOB SHARD: the rows of JOB's table emb on that shard (stats).
table_rows() {
  "$PSCTL" -s "${SERVERS[$2]}" stats |
    sed -n "s/.*\"job\":\"$1\",\"name\":\"emb\"[^}]*\"rows\":\([0-9]*\).*/\1/p"
}

run_job first
LOG=$TMP/first.0.log
mapfile -t losses < <(awk '$1 == "step" { print $NF }' "$LOG")
[[ ${#losses[@]} -ge 3 ]] || fail "expected 3 or more loss lines, got ${#losses[@]}"
first=${losses[0]}
last=${losses[${#losses[@]}-1]}
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }' ||
  fail "loss did not fall: first window $first, last $last"
epochs=$(grep -c '^epoch [0-9]*/3 .* rows/step [0-9]* rows/s [0-9]* rows_touched [0-9]* ' "$LOG" || true)
[[ $epochs -eq 3 ]] || fail "expected 3 epoch lines with rows/step, rows/s and rows_touched, got $epochs"
acc=$(awk '/^final test accuracy:/ { print $4 }' "$LOG")
[[ -n $acc ]] || fail "rank 0 printed no final test accuracy"
awk -v a="$acc" 'BEGIN { exit !(a >= 0.55) }' || fail "test accuracy $acc is below 0.55"

used=$(sed -n 's/.*(\([0-9]*\) rows used by training).*/\1/p' "$LOG")
[[ -n $used ]] || fail "rank 0 did not say how many rows training uses"
r0=$(table_rows first 0)
r1=$(table_rows first 1)
[[ -n $r0 && -n $r1 ]] || fail "the shards' stats list no table emb of job first"
((r0 > 0 && r1 > 0)) || fail "a shard holds no row (shard 0: $r0, shard 1: $r1)"
((r0 + r1 >= used)) || fail "the shards hold $((r0 + r1)) rows, fewer than the $used training uses"
touched=$(sed -n 's/^epoch 3\/3 .* rows_touched \([0-9]*\) .*/\1/p' "$LOG")
[[ $touched == $((r0 + r1)) ]] || fail "rank 0 says rows_touched $touched, the shards hold $((r0 + r1))"

run_job second
strip() { sed -E 's/ rows\/s [0-9]+| samples\/s [0-9]+| elapsed [0-9.]+s//g' "$1" | grep -E '^(step|epoch|final)'; }
diff <(strip "$TMP/first.0.log") <(strip "$TMP/second.0.log") >"$TMP/diff.txt" ||
  fail "the second run differs from the first: $(head -n 4 "$TMP/diff.txt")"
[[ $(table_rows second 0) == "$r0" && $(table_rows second 1) == "$r1" ]] ||
  fail "the second run holds other rows per shard ($(table_rows second 0), $(table_rows second 1)) than the first ($r0, $r1)"

echo "sections_small: ok: loss $first -> $last, test accuracy $acc, rows $r0 + $r1 (training uses $used), a second run identical"
