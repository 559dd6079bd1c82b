#!/usr/bin/env bash
# log_format_test.sh BUILD_DIR -- psd --log-format json (and PSD_LOG_FORMAT):
# every line psd writes is one JSON object with time, level, component, pid
# and msg; strings are escaped (a tensor name holding a quote and a
# backslash comes back as written; control characters and bytes that are
# not UTF-8 are test_common's log_json_escaping);
# the metrics endpoint's line carries its address as fields. Text stays the
# default, with the fields as key=value.
set -euo pipefail
BUILD=$(cd "${1:?usage: log_format_test.sh BUILD_DIR}" && pwd)
PSD=${PSD_BIN:-$BUILD/server/psd}
PSCTL=$BUILD/client/psctl
BOUND=${PSD_TEST_BOUND:-120}
TMP=$(mktemp -d "${PSD_TEST_TMPDIR:-${TMPDIR:-/tmp}}/log_format_test.XXXXXX")
PIDS=()
cleanup() {
  local rc=$? p
  trap - EXIT
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [[ $rc -ne 0 ]]; then for f in "$TMP"/*.log; do echo "---- $f" >&2; cat "$f" >&2; done; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
fail() { echo "log_format_test: FAIL: $*" >&2; exit 1; }

# start NAME ENV... -- ARGS: a psd on free ports, its log in $TMP/NAME.log;
# its shard port in $PORT.
start() {
  local name=$1; shift
  local envs=()
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  env "${envs[@]}" "$PSD" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 "$@" \
    2>"$TMP/$name.log" &
  PIDS+=("$!")
  local t0=$SECONDS
  until grep -q 'metrics listening' "$TMP/$name.log"; do
    ((SECONDS - t0 < BOUND)) || fail "$name did not start"
    kill -0 "${PIDS[-1]}" 2>/dev/null || fail "$name exited"
    sleep 0.1
  done
  PORT=$(grep -o 'listening on 127\.0\.0\.1:[0-9]*' "$TMP/$name.log" | head -1 | cut -d: -f2)
}
stop_last() { kill -TERM "${PIDS[-1]}"; wait "${PIDS[-1]}" || fail "psd exited $?"; unset 'PIDS[-1]'; }

NAME='we"ird\name'
# JSON through the flag.
start json PSD_X=1 -- --log-format json
"$PSCTL" -s "127.0.0.1:$PORT" create "$NAME" --shape 4 --optimizer sgd >/dev/null || fail "create"
stop_last
python3 - "$TMP/json.log" "$NAME" <<'PY' || fail "the JSON log is not what it should be"
import json, sys
path, name = sys.argv[1], sys.argv[2]
lines = open(path, "rb").read().split(b"\n")
assert lines[-1] == b"", "the log does not end with a newline"
objs = []
for raw in lines[:-1]:
    o = json.loads(raw)                      # every line one object
    for k in ("time", "level", "component", "pid", "msg"):
        assert k in o, "line without %s: %r" % (k, raw)
    assert o["level"] in ("debug", "info", "warn", "error"), o
    assert o["component"] == "psd" and isinstance(o["pid"], int), o
    assert o["time"].endswith("Z") and "T" in o["time"], o
    objs.append(o)
want = "created tensor '" + name + "'"
assert any(o["msg"].startswith(want) for o in objs), "no line for the tensor %r" % want
m = [o for o in objs if o["msg"].startswith("metrics listening on")]
assert m and m[0].get("address", "").startswith("127.0.0.1:") and m[0].get("path") == "/metrics", m
assert any(o["msg"] == "stopped" for o in objs), "no 'stopped' line"
print("log_format_test: ok: %d JSON lines, %s read back exactly" % (len(objs), name))
PY
# JSON through the environment.
start env PSD_LOG_FORMAT=json -- 
stop_last
python3 -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1]) if l.strip()]' "$TMP/env.log" ||
  fail "PSD_LOG_FORMAT=json did not give JSON lines"
# Text by default: the familiar line, fields as key=value.
start text PSD_X=1 --
stop_last
grep -q '^[0-9T:.-]*Z INFO  psd: psd .* listening on 127\.0\.0\.1:' "$TMP/text.log" || fail "no text line"
grep -q 'metrics listening on .* address=127\.0\.0\.1:[0-9]* path=/metrics' "$TMP/text.log" ||
  fail "the text form has no key=value fields"
grep -q '^{' "$TMP/text.log" && fail "text mode wrote JSON"
"$PSD" --log-format yaml >/dev/null 2>&1 && fail "--log-format yaml accepted"
echo "log_format_test: all checks passed"
