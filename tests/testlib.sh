# tests/testlib.sh -- sourced by the shell tests (bash).
#
# Logs: every test writes its files under one directory, made with mktemp -d
# inside $PSD_TEST_TMPDIR when tests/run.sh set it (one directory per run of
# the suite), else inside ${TMPDIR:-/tmp}. It is removed when the test
# passes (or skips) and kept, its path printed, when it fails.
#
# Waiting: no test decides anything by how long something took. A test
# waits for a state (a log line, a port answering, a worker at its gate)
# by polling it; the bound on such a wait (T_WAIT seconds, 300 unless
# PSD_TEST_WAIT_S says otherwise) only turns a hang into a failure, and is
# far beyond what any machine needs.
T_WAIT=${PSD_TEST_WAIT_S:-300}

# t_tmpdir NAME: make the test's directory; sets TMP and T_NAME.
t_tmpdir() {
  T_NAME=$1
  local parent=${PSD_TEST_TMPDIR:-${TMPDIR:-/tmp}}
  TMP=$(mktemp -d "$parent/$T_NAME.XXXXXX")
}

# t_tmp_done RC: remove TMP on success (or a skip, 77), else say where the
# logs are.
t_tmp_done() {
  if [[ $1 -eq 0 || $1 -eq 77 ]]; then
    rm -rf "$TMP"
  else
    echo "$T_NAME: logs kept in $TMP" >&2
  fi
}

# t_wait_until WHAT CMD...: run CMD every 0.05 s until it succeeds. Returns
# 1 (after saying what it was waiting for) when T_WAIT seconds pass first.
t_wait_until() {
  local what=$1 deadline=$((SECONDS + T_WAIT))
  shift
  until "$@"; do
    if ((SECONDS > deadline)); then
      echo "$T_NAME: gave up after ${T_WAIT}s waiting for $what" >&2
      return 1
    fi
    sleep 0.05
  done
}

# t_port_of LOG: the port psd logged as "listening on 127.0.0.1:PORT" (or
# "listening on ADDR:PORT"), empty while it has not.
t_port_of() { sed -n 's/.*listening on [^ ]*:\([0-9][0-9]*\).*/\1/p' "$1" 2>/dev/null | head -n 1; }

# t_has_port LOG: psd has logged its port.
t_has_port() { [[ -n $(t_port_of "$1") ]]; }

# t_wait_jobs WHAT "PIDS" "NEEDED": wait until every process of PIDS (jobs
# of this shell) has ended; their statuses are left for `wait`. Returns 1,
# saying so, as soon as a process of NEEDED (the daemons the jobs talk to)
# is gone, since the jobs would then only wait for their deadlines; or when
# T_WAIT seconds pass.
t_wait_jobs() {
  local what=$1 pids=$2 needed=$3 deadline=$((SECONDS + T_WAIT)) p running
  while :; do
    running=0
    for p in $pids; do kill -0 "$p" 2>/dev/null && running=1; done
    ((running)) || return 0
    for p in $needed; do
      if ! kill -0 "$p" 2>/dev/null; then
        echo "$T_NAME: process $p, needed by $what, has ended" >&2
        return 1
      fi
    done
    if ((SECONDS > deadline)); then
      echo "$T_NAME: gave up after ${T_WAIT}s waiting for $what" >&2
      return 1
    fi
    sleep 0.05
  done
}

# ---- processes the test starts -------------------------------------------------
# PIDS holds every process the test started in the background; only those
# are ever stopped, by PID.
PIDS=()

# t_fail MESSAGE: say the test failed, and why; exit 1.
t_fail() {
  echo "${T_NAME:-$(basename "$0" .sh)}: FAIL: $*" >&2
  exit 1
}

# t_stop_all: SIGTERM every process of PIDS, then reap each.
t_stop_all() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}

# t_show_logs LINES: the last LINES lines of every $TMP/*.log, on stderr.
t_show_logs() {
  local f
  for f in "$TMP"/*.log; do
    [[ -e $f ]] || continue
    echo "---- $(basename "$f")" >&2
    tail -n "$1" "$f" >&2
  done
}

# t_cleanup_at_exit [LINES]: when the script exits: t_stop_all; when it
# failed (neither 0 nor 77), the last LINES (20) lines of every log; then
# t_tmp_done and the script's own status.
t_cleanup_at_exit() {
  T_LOG_LINES=${1:-20}
  trap t_cleanup EXIT
}
t_cleanup() {
  local rc=$?
  trap - EXIT
  t_stop_all
  if [[ $rc -ne 0 && $rc -ne 77 ]]; then t_show_logs "$T_LOG_LINES"; fi
  t_tmp_done "$rc"
  exit "$rc"
}

# t_start_psd LOG COMMAND...: run COMMAND (psd itself, or a launcher that
# execs it, such as `ip netns exec NS psd`) in the background, its output
# appended to LOG after a line "---- start", and wait until psd listens.
# Sets T_PID and T_PORT (the port of this start: a restart on a log
# appends); the pid joins PIDS. Fails the test when psd exits first.
t_start_psd() {
  local log=$1
  shift
  echo "---- start" >>"$log"
  "$@" >>"$log" 2>&1 &
  T_PID=$!
  PIDS+=("$T_PID")
  t_wait_until "psd to listen ($log)" t_psd_listening "$T_PID" "$log" ||
    t_fail "psd did not start: $(tail -n 2 "$log")"
  T_PORT=$(sed -n 's/.*psd: psd [^ ]* listening on [^ ]*:\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
}

# t_psd_listening PID LOG: psd PID has logged its start line since its
# start in LOG; fails the test if it has exited. The start line itself
# ("psd VERSION listening on ADDR"), not a warning that also says
# "listening on" (a shard in a container, --insecure), which would count
# an earlier start twice.
t_psd_listening() {
  kill -0 "$1" 2>/dev/null || t_fail "psd exited at start: $(tail -n 2 "$2")"
  [[ $(grep -c 'psd: psd [^ ]* listening on' "$2") -ge $(grep -c -- '---- start' "$2") ]]
}

# t_start_shards N ARGS...: N psd ($PSD) shards on free loopback ports with
# ARGS, logging to $TMP/shard0.log...; sets SHARD_PIDS, SERVERS (their
# addresses, in order) and LIST (those joined by commas).
t_start_shards() {
  local n=$1 i
  shift
  SHARD_PIDS=() SERVERS=()
  for ((i = 0; i < n; i++)); do
    t_start_psd "$TMP/shard$i.log" "$PSD" --listen 127.0.0.1:0 "$@"
    SHARD_PIDS+=("$T_PID")
    SERVERS+=("127.0.0.1:$T_PORT")
  done
  LIST=$(IFS=,; echo "${SERVERS[*]}")
}
