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
