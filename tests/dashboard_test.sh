#!/usr/bin/env bash
# dashboard_test.sh BUILD_DIR -- deploy/grafana/psd.json: what
# make-dashboard.py writes, a well-formed Grafana dashboard whose every psd_*
# metric exists in a real psd's /metrics (tests/dashboard_check.py), and
# PromQL that promtool parses (as recording rules) when promtool is here.
set -euo pipefail
BUILD=$(cd "${1:?usage: dashboard_test.sh BUILD_DIR}" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PSD=${PSD_BIN:-$BUILD/server/psd}
PSCTL=$BUILD/client/psctl
BOUND=${PSD_TEST_BOUND:-120}
TMP=$(mktemp -d "${PSD_TEST_TMPDIR:-${TMPDIR:-/tmp}}/dashboard_test.XXXXXX")
PID=
cleanup() {
  local rc=$?
  trap - EXIT
  [[ -n $PID ]] && { kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
  if [[ $rc -ne 0 ]]; then cat "$TMP/psd.log" >&2 2>/dev/null || true; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
fail() { echo "dashboard_test: FAIL: $*" >&2; exit 1; }

python3 "$ROOT/deploy/grafana/make-dashboard.py" "$TMP/gen.json"
cmp -s "$TMP/gen.json" "$ROOT/deploy/grafana/psd.json" ||
  fail "deploy/grafana/psd.json is not what make-dashboard.py writes (run it)"

# A shard with a checkpoint behind it, so that every family is there.
mkdir "$TMP/data"
"$PSD" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --data-dir "$TMP/data" 2>"$TMP/psd.log" &
PID=$!
t0=$SECONDS
until grep -q 'metrics listening' "$TMP/psd.log"; do
  ((SECONDS - t0 < BOUND)) || fail "psd did not start"
  sleep 0.1
done
P=$(grep -o 'psd .* listening on 127\.0\.0\.1:[0-9]*' "$TMP/psd.log" | head -1 | sed 's/.*://')
M=$(grep -o 'metrics listening on 127\.0\.0\.1:[0-9]*' "$TMP/psd.log" | head -1 | sed 's/.*://')
"$PSCTL" -s "127.0.0.1:$P" checkpoint >/dev/null || fail "psctl checkpoint"
python3 - "$M" >"$TMP/metrics.txt" <<'PY'
import sys, urllib.request
sys.stdout.write(urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=10).read().decode())
PY
python3 "$ROOT/tests/dashboard_check.py" "$ROOT/deploy/grafana/psd.json" "$TMP/metrics.txt" "$TMP/rules.yml"
if command -v promtool >/dev/null; then
  promtool check rules "$TMP/rules.yml" >"$TMP/promtool.log" 2>&1 ||
    fail "promtool cannot parse the dashboard's queries: $(cat "$TMP/promtool.log")"
  echo "dashboard_test: ok: promtool parses every query"
else
  echo "dashboard_test: promtool not installed: the PromQL syntax check is skipped"
fi
echo "dashboard_test: all checks passed"
