#!/usr/bin/env bash
# top_test.sh BUILD_DIR -- `psctl top` on a terminal (tmux) and off one.
#
# Two shards; load from a loop of `psctl push` that runs until this script
# removes its run file (held by construction, not by timing). psctl top runs
# in a detached tmux session on a private tmux socket; its pane is captured
# until it shows a refreshed table with load, then again until the clock in
# its header has moved: both captures must show one table drawn in place
# (one header: the screen is redrawn, not scrolled), both shards, and
# operations per second above zero. Off a terminal, --once prints one plain
# table with no escape codes, and --count 2 prints two.
#
# Exit 0 ok, 1 failure, 77 when tmux cannot be installed.
set -euo pipefail
BUILD=$(cd "${1:?usage: top_test.sh BUILD_DIR}" && pwd)
PSD=${PSD_BIN:-$BUILD/server/psd}
PSCTL=$BUILD/client/psctl
BOUND=${PSD_TEST_BOUND:-120}

fail() { echo "top_test: FAIL: $*" >&2; exit 1; }
if ! command -v tmux >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tmux >/dev/null 2>&1 || true
  fi
  command -v tmux >/dev/null || { echo "top_test: SKIP: tmux cannot be installed here"; exit 77; }
fi

TMP=$(mktemp -d "${PSD_TEST_TMPDIR:-${TMPDIR:-/tmp}}/top_test.XXXXXX")
SOCK=psd-top-test-$$
PIDS=()
LOAD_PID=
cleanup() {
  local rc=$? p
  trap - EXIT
  rm -f "$TMP/run"
  [[ -n $LOAD_PID ]] && wait "$LOAD_PID" 2>/dev/null || true
  tmux -L "$SOCK" kill-server 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ $rc -ne 0 ]]; then
    for f in "$TMP"/*.log "$TMP"/cap*; do [[ -f $f ]] && { echo "---- $(basename "$f")" >&2; cat "$f" >&2; }; done
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT

port_of() { sed -n 's/.*psd .* listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$1" | head -1; }
for i in 0 1; do
  "$PSD" --listen 127.0.0.1:0 >"$TMP/shard$i.log" 2>&1 &
  PIDS+=("$!")
done
t0=$SECONDS
until [[ -n $(port_of "$TMP/shard0.log") && -n $(port_of "$TMP/shard1.log") ]]; do
  ((SECONDS - t0 < BOUND)) || fail "shards did not start"
  sleep 0.1
done
LIST=127.0.0.1:$(port_of "$TMP/shard0.log"),127.0.0.1:$(port_of "$TMP/shard1.log")

# The load: a tensor with blocks on both shards (100 blocks of 1000), pushed
# again and again until the run file goes.
"$PSCTL" -s "$LIST" create load --shape 100000 --block-size 1000 --optimizer sgd --lr 0.001 \
  >/dev/null || fail "create"
head -c 400000 /dev/zero >"$TMP/grad.bin"
touch "$TMP/run"
(while [[ -e $TMP/run ]]; do "$PSCTL" -s "$LIST" push load --in "$TMP/grad.bin" >/dev/null || exit 1; done) \
  >"$TMP/load.log" 2>&1 &
LOAD_PID=$!

# A table in the pane with load on it: the job line's ops/s above zero and
# a row per shard.
capture() { tmux -L "$SOCK" capture-pane -p -t top >"$1" 2>/dev/null; }
loaded() {
  capture "$1" || return 1
  local ops
  ops=$(sed -n 's/.*; \([0-9]*\) ops\/s.*/\1/p' "$1" | head -1)
  [[ -n $ops && $ops -gt 0 ]] && grep -q '^0 ' "$1" && grep -q '^1 ' "$1"
}
stamp() { sed -n 's/^psctl top  \([0-9:]*\) .*/\1/p' "$1"; }

tmux -L "$SOCK" new-session -d -s top -x 180 -y 30 \
  "$PSCTL -s $LIST top --interval 0.5; sleep 600"
t0=$SECONDS
until loaded "$TMP/cap1"; do
  ((SECONDS - t0 < BOUND)) || fail "no table with load within ${BOUND}s"
  sleep 0.2
done
s1=$(stamp "$TMP/cap1")
t0=$SECONDS
until loaded "$TMP/cap2" && [[ $(stamp "$TMP/cap2") != "$s1" ]]; do
  ((SECONDS - t0 < BOUND)) || fail "the table did not refresh within ${BOUND}s"
  sleep 0.2
done
for f in "$TMP/cap1" "$TMP/cap2"; do
  [[ $(grep -c '^psctl top ' "$f") -eq 1 ]] || fail "$(basename "$f"): not one table drawn in place"
  grep -q '^SHARD .*OPS/S .*PP_P50MS .*ROUNDS/S .*MEMORY .*WORKERS .*SLOWEST' "$f" ||
    fail "$(basename "$f"): no column header"
  awk '$1 == "0" || $1 == "1" { if ($3 + 0 > 0) n++ } END { exit n < 1 }' "$f" ||
    fail "$(basename "$f"): no shard row with ops/s above zero"
done
echo "top_test: ok: the pane refreshed ($s1 -> $(stamp "$TMP/cap2")) with load on the shards"
sed -n '1,6p' "$TMP/cap2"
tmux -L "$SOCK" kill-server

# Off a terminal: plain text.
"$PSCTL" -s "$LIST" top --once --interval 0.3 >"$TMP/once.txt" || fail "top --once"
grep -q $'\033' "$TMP/once.txt" && fail "top --once wrote escape codes to a file"
[[ $(grep -c '^psctl top ' "$TMP/once.txt") -eq 1 ]] || fail "top --once printed more or less than one table"
[[ $(grep -c '^[01] ' "$TMP/once.txt") -eq 2 ]] || fail "top --once: not one row per shard"
"$PSCTL" -s "$LIST" top --count 2 --interval 0.3 >"$TMP/count.txt" || fail "top --count 2"
[[ $(grep -c '^psctl top ' "$TMP/count.txt") -eq 2 ]] || fail "top --count 2 did not print two tables"
echo "top_test: ok: --once and --count print plain tables"

rm -f "$TMP/run"
wait "$LOAD_PID" || fail "the push loop failed: $(cat "$TMP/load.log")"
LOAD_PID=
echo "top_test: all checks passed"
