#!/usr/bin/env bash
# metrics_test.sh BUILD_DIR -- psd's Prometheus endpoint against a real
# Prometheus (Debian's `prometheus` package).
#
# Two shards with --metrics-listen on free loopback ports, a Prometheus
# scraping them every second (its own config, storage and port, all under a
# temporary directory), and a short sync training job (2 workers, 20 steps
# on 2000 Fashion-MNIST images). Once the job has ended the counters no
# longer move, so Prometheus is polled (with a bound) until its view equals
# what the job did:
#   - push-pull requests: the sum the trainers' own ps_metrics summaries
#     report, and steps x workers x tensors (every tensor is one block);
#   - the push-pull latency histogram counted every one of them;
#   - sync rounds: steps x tensors, and the round-wait histogram one
#     observation per round; clocks: workers x steps per shard;
#   - the workers' clocks, the job's worker count, their goodbyes.
# Also: `promtool check metrics` passes on each endpoint's output (one with
# --metrics-tensor-labels, the other without tensor names); GET of
# another path is 404, POST is 405, HEAD is 200 without a body, a request
# over 8 KiB is 431, garbage is 400, a request never finished gets 408 at
# the deadline; a running rate over the job's push-pulls is positive.
#
# Exit 0 ok, 1 failure, 77 skip (only when the prometheus package cannot be
# installed, or the data set is missing). Stops only what it started, by PID.
set -euo pipefail

BUILD=$(cd "${1:?usage: metrics_test.sh BUILD_DIR}" && pwd)
PSD=${PSD_BIN:-$BUILD/server/psd}
TRAIN=$BUILD/client/psd-train
DATA=${PSD_DATA_DIR:-/usr/share/datasets/fashion-mnist}
BOUND=${PSD_TEST_WAIT_S:-300} # only turns a hang into a failure (tests/testlib.sh)

fail() { echo "metrics_test: FAIL: $*" >&2; exit 1; }
skip() { echo "metrics_test: SKIP: $*"; exit 77; }

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "metrics_test: installing Debian's prometheus package"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
      >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
        >/dev/null 2>&1; } || true
  fi
  command -v prometheus >/dev/null && command -v promtool >/dev/null ||
    skip "the prometheus package (prometheus, promtool) cannot be installed here"
fi
command -v python3 >/dev/null || fail "python3 is needed"
[[ -e $DATA/train-images-idx3-ubyte.gz || -e $DATA/train-images-idx3-ubyte ]] ||
  skip "no Fashion-MNIST in $DATA (install dataset-fashion-mnist)"

TMP=$(mktemp -d "${PSD_TEST_TMPDIR:-${TMPDIR:-/tmp}}/metrics_test.XXXXXX")
PIDS=()
PROM_PID=
cleanup() {
  local rc=$? p
  trap - EXIT
  if [[ -n $PROM_PID ]]; then kill -TERM "$PROM_PID" 2>/dev/null || true; wait "$PROM_PID" 2>/dev/null || true; fi
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ $rc -ne 0 ]]; then
    for f in "$TMP"/*.log; do [[ -f $f ]] && { echo "---- $(basename "$f")" >&2; tail -n 25 "$f" >&2; }; done
    echo "metrics_test: files kept in $TMP" >&2
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT

# wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds.
wait_for() {
  local limit=$1 what=$2 t0=$SECONDS
  shift 2
  until "$@"; do
    ((SECONDS - t0 < limit)) || fail "no $what within ${limit}s"
    sleep 0.2
  done
}

# HTTP helper: raw requests, Prometheus queries, metric sums.
cat >"$TMP/h.py" <<'PY'
import json, socket, sys, urllib.parse, urllib.request

def raw(port, data, timeout=30):
    s = socket.create_connection(("127.0.0.1", int(port)), timeout=timeout)
    s.sendall(data)
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        out += b
    s.close()
    return out

def status(resp):
    return int(resp.split(b" ", 2)[1]) if resp.startswith(b"HTTP/1.1 ") else -1

def body(resp):
    return resp.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in resp else b""

cmd = sys.argv[1]
if cmd == "get":          # get PORT PATH -> body on stdout, exit 1 unless 200
    r = raw(sys.argv[2], ("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % sys.argv[3]).encode())
    sys.stdout.buffer.write(body(r))
    sys.exit(0 if status(r) == 200 else 1)
elif cmd == "status":     # status PORT KIND -> the status code
    port, kind = sys.argv[2], sys.argv[3]
    reqs = {
        "other": b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n",
        "root": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "post": b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "head": b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        "query": b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        "big": b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n",
        "garbage": b"\x00\x01 not http at all\r\n\r\n",
    }
    r = raw(port, reqs[kind])
    if kind == "head" and body(r):
        print("HEAD answered with a body")
        sys.exit(1)
    print(status(r))
elif cmd == "auth":       # auth PORT [HEADER-VALUE] -> status of GET /metrics
    hdr = ("Authorization: %s\r\n" % sys.argv[3]) if len(sys.argv) > 3 else ""
    r = raw(sys.argv[2], ("GET /metrics HTTP/1.1\r\nHost: x\r\n%s\r\n" % hdr).encode())
    print(status(r))
elif cmd == "idle":       # idle PORT -> status of a request never finished
    r = raw(sys.argv[2], b"GET /metrics HTTP/1.1\r\nHost: x\r\n", timeout=60)
    print(status(r))
elif cmd == "sum":        # sum FILE NAME [label=value...] -> sum of matching samples
    name, want = sys.argv[3], dict(a.split("=", 1) for a in sys.argv[4:])
    total = 0.0
    for line in open(sys.argv[2]):
        if line.startswith("#") or not line.strip():
            continue
        series, value = line.rsplit(" ", 1)
        n, _, labels = series.partition("{")
        if n != name:
            continue
        lab = {}
        for part in labels.rstrip("}").split(","):
            if "=" in part:
                k, v = part.split("=", 1)
                lab[k] = v.strip('"')
        if all(lab.get(k) == v for k, v in want.items()):
            total += float(value)
    print(int(total) if total == int(total) else total)
elif cmd == "query":      # query PORT PROMQL -> the first sample's value, or "none"
    url = "http://127.0.0.1:%s/api/v1/query?%s" % (
        sys.argv[2], urllib.parse.urlencode({"query": sys.argv[3]}))
    try:
        d = json.load(urllib.request.urlopen(url, timeout=10))
    except Exception as e:
        print("error: %s" % e)
        sys.exit(0)
    res = d.get("data", {}).get("result", [])
    if not res:
        print("none")
    else:
        v = float(res[0]["value"][1])
        print(int(v) if v == int(v) else v)
elif cmd == "ready":
    try:
        urllib.request.urlopen("http://127.0.0.1:%s/-/ready" % sys.argv[2], timeout=2)
    except Exception:
        sys.exit(1)
elif cmd == "freeport":
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()
PY
H() { python3 "$TMP/h.py" "$@"; }

# ---- two shards ------------------------------------------------------------------
port_of() { sed -n "s/.*$2 listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p" "$1" | head -1; }
# Shard 1 also exports per-tensor series (--metrics-tensor-labels).
EXTRA=("" --metrics-tensor-labels)
for i in 0 1; do
  "$PSD" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --worker-timeout 120 ${EXTRA[$i]} \
    >"$TMP/shard$i.log" 2>&1 &
  PIDS+=("$!")
done
for i in 0 1; do
  wait_for "$BOUND" "listening shard $i" bash -c "grep -q 'metrics listening on' '$TMP/shard$i.log'"
done
P0=$(port_of "$TMP/shard0.log" "[0-9.]*") P1=$(port_of "$TMP/shard1.log" "[0-9.]*")
M0=$(port_of "$TMP/shard0.log" metrics) M1=$(port_of "$TMP/shard1.log" metrics)
[[ -n $P0 && -n $P1 && -n $M0 && -n $M1 ]] || fail "ports not found in the shards' logs"
LIST=127.0.0.1:$P0,127.0.0.1:$P1
echo "metrics_test: shards $LIST, metrics on $M0 and $M1"

# A metrics port that cannot be bound stops psd, as --listen does.
rc=0
"$PSD" --listen 127.0.0.1:0 --metrics-listen "127.0.0.1:$M0" >"$TMP/busy.log" 2>&1 || rc=$?
[[ $rc -eq 1 ]] && grep -q 'cannot listen for metrics' "$TMP/busy.log" ||
  fail "psd with a busy metrics port: exit $rc, $(tail -1 "$TMP/busy.log")"

# A scrape that never finishes its request: answered 408 at the deadline
# (10 s), while the rest runs.
H idle "$M0" >"$TMP/idle.out" 2>&1 &
IDLE_PID=$!
PIDS+=("$IDLE_PID")

# ---- Prometheus -------------------------------------------------------------------
PROM_PORT=$(H freeport)
cat >"$TMP/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: psd
    static_configs:
      - targets: ['127.0.0.1:$M0', '127.0.0.1:$M1']
YML
promtool check config "$TMP/prometheus.yml" >/dev/null || fail "promtool rejects the generated config"
prometheus --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$TMP/prometheus.log" 2>&1 &
PROM_PID=$!
wait_for "$BOUND" "ready Prometheus on $PROM_PORT" H ready "$PROM_PORT"
both_up() { [[ $(H query "$PROM_PORT" 'count(up{job="psd"} == 1)') == 2 ]]; }
wait_for "$BOUND" "successful scrape of both shards" both_up

# ---- the job ----------------------------------------------------------------------
WORKERS=2 STEPS=20 TENSORS=6 # 2000 images / 2 workers / batch 50; 3 layers x (w, b)
for r in 0 1; do
  OPENBLAS_NUM_THREADS=1 timeout 300 "$TRAIN" --servers "$LIST" --rank "$r" --workers "$WORKERS" \
    --mode sync --data "$DATA" --train-limit 2000 --test-limit 500 --epochs 1 --batch 50 \
    >"$TMP/worker$r.log" 2>&1 &
  PIDS+=("$!")
  WPID[$r]=$!
done
for r in 0 1; do
  wait "${WPID[$r]}" || fail "worker $r exited with status $?"
done
grep -q " $STEPS steps/epoch" "$TMP/worker0.log" || fail "the job did not take $STEPS steps per epoch"
SUMMARY_PP=0
for r in 0 1; do
  line=$(grep '^client metrics: ' "$TMP/worker$r.log") || fail "worker $r printed no client metrics"
  n=$(sed -n 's/.* push_pull_requests=\([0-9]*\) .*/\1/p' <<<"$line")
  [[ -n $n ]] || fail "no push_pull_requests in: $line"
  SUMMARY_PP=$((SUMMARY_PP + n))
done
EXPECT_PP=$((WORKERS * STEPS * TENSORS))
[[ $SUMMARY_PP -eq $EXPECT_PP ]] ||
  fail "the trainers report $SUMMARY_PP push-pull requests; steps x workers x tensors = $EXPECT_PP"
echo "metrics_test: the job made $EXPECT_PP push-pull requests"

# ---- the endpoint itself -----------------------------------------------------------
for m in "$M0" "$M1"; do
  H get "$m" /metrics >"$TMP/metrics-$m.txt" || fail "GET /metrics on $m"
  promtool check metrics <"$TMP/metrics-$m.txt" >"$TMP/promtool-$m.log" 2>&1 ||
    fail "promtool check metrics on $m: $(cat "$TMP/promtool-$m.log")"
done
cat "$TMP/metrics-$M0.txt" "$TMP/metrics-$M1.txt" >"$TMP/both.txt"
got=$(H sum "$TMP/both.txt" psd_requests_total type=push_pull)
ok=$(H sum "$TMP/both.txt" psd_requests_total type=push_pull result=ok)
[[ $got -eq $EXPECT_PP && $ok -eq $EXPECT_PP ]] ||
  fail "the endpoints count $got push-pulls ($ok ok); expected $EXPECT_PP"
# Tensor names as labels only where asked for.
grep -q '^psd_tensor_elements' "$TMP/metrics-$M0.txt" && fail "shard 0 exports tensor names unasked"
grep -qx 'psd_tensor_elements{psd_job="default",tensor="fc0.w"} 200704' "$TMP/metrics-$M1.txt" ||
  fail "shard 1 (--metrics-tensor-labels) has no psd_tensor_elements for fc0.w"
for kind in other root; do
  [[ $(H status "$M0" $kind) == 404 ]] || fail "GET of another path ($kind) is not 404"
done
[[ $(H status "$M0" post) == 405 ]] || fail "POST /metrics is not 405"
[[ $(H status "$M0" head) == 200 ]] || fail "HEAD /metrics is not 200 without a body"
[[ $(H status "$M0" query) == 200 ]] || fail "GET /metrics?x=1 is not 200"
[[ $(H status "$M0" big) == 431 ]] || fail "a request over 8 KiB is not 431"
[[ $(H status "$M0" garbage) == 400 ]] || fail "garbage is not 400"
echo "metrics_test: promtool check metrics passes; 404, 405, HEAD, 431, 400 as expected"

# ---- --metrics-auth: the reader token as a bearer token ----------------------------
(umask 077 && printf 'reader-token-for-metrics-0123456789\n' >"$TMP/reader.token" &&
  printf 'admin-token-for-the-shard-0123456789\n' >"$TMP/admin.token")
"$PSD" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --metrics-auth \
  --token-file "reader=$TMP/reader.token,admin=$TMP/admin.token" >"$TMP/auth.log" 2>&1 &
PIDS+=("$!")
wait_for "$BOUND" "the shard with --metrics-auth" bash -c "grep -q 'metrics listening on' '$TMP/auth.log'"
MA=$(port_of "$TMP/auth.log" metrics)
[[ $(H auth "$MA") == 401 ]] || fail "--metrics-auth: no token is not 401"
[[ $(H auth "$MA" "Bearer wrong-token-0123456789012345") == 401 ]] || fail "a wrong token is not 401"
[[ $(H auth "$MA" "Bearer admin-token-for-the-shard-0123456789") == 401 ]] ||
  fail "the admin token opened the metrics (they take the reader token)"
[[ $(H auth "$MA" "Basic cmVhZGVyOg==") == 401 ]] || fail "Basic auth is not 401"
[[ $(H auth "$MA" "Bearer reader-token-for-metrics-0123456789") == 200 ]] || fail "the reader token is refused"
[[ $(H auth "$MA" "bearer reader-token-for-metrics-0123456789") == 200 ]] ||
  fail "the scheme's case matters (RFC 7235 says it must not)"
[[ $(H status "$MA" other) == 404 ]] || fail "another path with --metrics-auth is not 404"
rc=0
"$PSD" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --metrics-auth \
  --token-file "admin=$TMP/admin.token" >"$TMP/noreader.log" 2>&1 || rc=$?
[[ $rc -eq 2 ]] && grep -q 'needs the reader token' "$TMP/noreader.log" ||
  fail "--metrics-auth without a reader token: exit $rc, $(tail -1 "$TMP/noreader.log")"
echo "metrics_test: ok: --metrics-auth wants the reader token (401 without it, or with another)"

# ---- what Prometheus saw -----------------------------------------------------------
# expect PROMQL VALUE: poll until Prometheus answers VALUE (the job is over,
# so only scrapes still to come can change the answer).
expect() {
  local q=$1 want=$2 t0=$SECONDS got
  while :; do
    got=$(H query "$PROM_PORT" "$q")
    [[ $got == "$want" ]] && { echo "metrics_test: ok: $q = $got"; return 0; }
    ((SECONDS - t0 < BOUND)) || fail "Prometheus: $q = $got, expected $want"
    sleep 0.5
  done
}
ROUNDS=$((STEPS * TENSORS))
expect 'sum(psd_requests_total{job="psd",type="push_pull"})' "$EXPECT_PP"
expect 'sum(psd_requests_total{job="psd",type="push_pull",result="ok"})' "$SUMMARY_PP"
expect 'sum(psd_request_duration_seconds_count{job="psd",type="push_pull"})' "$EXPECT_PP"
expect 'sum(psd_request_duration_seconds_bucket{job="psd",type="push_pull",le="+Inf"})' "$EXPECT_PP"
expect 'sum(psd_sync_rounds_total{job="psd"})' "$ROUNDS"
expect 'sum(psd_sync_round_wait_seconds_count{job="psd"})' "$ROUNDS"
expect 'sum(psd_requests_total{job="psd",type="clock"})' "$((WORKERS * STEPS * 2))"
expect 'min(psd_worker_clock{job="psd"})' "$STEPS"
expect 'max(psd_worker_clock{job="psd"})' "$STEPS"
expect 'count(psd_worker_clock{job="psd"})' 4
expect 'max(psd_job_workers{job="psd"})' "$WORKERS"
expect 'sum(psd_workers_joined{job="psd"})' 4
expect 'sum(psd_requests_total{job="psd",result="error"})' 0
# Memory against the ceiling, the loop's turns, as the limits count them.
expect 'count(psd_memory_limit_bytes{job="psd"} > 0)' 2
# Tensor memory on every shard that owns blocks: which do is decided by
# hashing the shards' addresses (free ports here), so the six blocks may
# all land on one shard.
OWNERS=0
for m in "$M0" "$M1"; do
  [[ $(H sum "$TMP/metrics-$m.txt" psd_requests_total type=push_pull) -gt 0 ]] && OWNERS=$((OWNERS + 1))
done
expect 'count(psd_memory_bytes{job="psd",category="tensors"} > 0)' "$OWNERS"
expect 'count(psd_loop_stall_seconds_count{job="psd"} > 0)' 2
# The workers closed their handles: a goodbye each, on each shard.
expect 'sum(psd_worker_departures_total{job="psd",reason="goodbye"})' "$((WORKERS * 2))"
expect 'sum(psd_workers_live{job="psd"})' 0
# A rate over a window that holds the job: positive; and the quantile of
# the job's push-pulls is a finite number of seconds.
rate=$(H query "$PROM_PORT" 'sum(rate(psd_requests_total{job="psd",type="push_pull"}[5m]))')
awk -v r="$rate" 'BEGIN { exit !(r + 0 > 0) }' || fail "rate of push-pulls over 5m is $rate"
p50=$(H query "$PROM_PORT" 'histogram_quantile(0.5, sum by (le) (psd_request_duration_seconds_bucket{job="psd",type="push_pull"}))')
awk -v r="$p50" 'BEGIN { exit !(r + 0 > 0 && r + 0 < 10) }' || fail "push-pull p50 is $p50"
echo "metrics_test: ok: push-pull rate $rate/s over 5m, p50 ${p50}s"

# ---- the scrape that never finished --------------------------------------------------
wait "$IDLE_PID" || true
[[ $(cat "$TMP/idle.out") == 408 ]] || fail "an unfinished request got '$(cat "$TMP/idle.out")', not 408"
echo "metrics_test: ok: an unfinished request is answered 408 at the deadline"

kill -TERM "$PROM_PID"
wait "$PROM_PID" || true
PROM_PID=
echo "metrics_test: all checks passed"
