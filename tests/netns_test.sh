#!/usr/bin/env bash
# netns_test.sh BUILD_DIR -- psd between hosts: two shards and two workers
# in separate network namespaces joined by veth links to a bridge, with
# packet loss injected and a link cut for a few seconds mid-training.
#
# The same sync job (same data, seed and block size) first runs on
# loopback without faults; the faulty run must complete and end with the
# same weights, bit for bit (sync averaging is in rank order, and the
# client library resends what a broken link lost, exactly once).
#
# Faults: loss with nftables (numgen random drop); delay with tc netem when
# the kernel has sch_netem, else (this sandbox's kernel) with a delaying
# relay on the path (tests/delay_proxy.py) — the test says which. Exits 77 (skip) only where the
# kernel refuses network namespaces. It removes every namespace it made and
# stops only the processes it started.
#
# The cut lands mid-training by construction: both workers are held by
# psd-train's gate after 30 steps; the test cuts the link, opens the gate
# (so the workers' next step crosses the cut link) and restores the link
# 3 s later. The outcome depends on nothing being fast or slow.
set -euo pipefail
. "$(dirname "$0")/testlib.sh"
BUILD=${1:?usage: tests/netns_test.sh BUILD_DIR}
BUILD=$(cd "$BUILD" && pwd)
PSD=$BUILD/server/psd
PSCTL=$BUILD/client/psctl
TRAIN=$BUILD/client/psd-train
DATASET=${PSD_DATASET:-/usr/share/datasets/fashion-mnist}
TAG=psdnt$$
NS_HUB=$TAG-hub NS_S0=$TAG-s0 NS_S1=$TAG-s1 NS_W=$TAG-w
t_tmpdir netns_test
PIDS=()
JOB=(--epochs 1 --batch 32 --train-limit 3000 --test-limit 500 --seed 7 --quiet)
export OPENBLAS_NUM_THREADS=1
# Calls cross lossy links, a cut, and wait on a gate the test holds: only a
# hang may end them.
export PS_TIMEOUT_MS=$((T_WAIT * 1000))

say() { echo "netns_test: $*"; }
fail() { t_fail "$@"; }

cleanup() {
  local rc=$?
  trap - EXIT
  t_stop_all
  for ns in "$NS_S0" "$NS_S1" "$NS_W" "$NS_HUB"; do ip netns del "$ns" 2>/dev/null || true; done
  t_tmp_done "$rc"
  exit "$rc"
}
trap cleanup EXIT

[[ -x $PSD && -x $PSCTL && -x $TRAIN ]] || fail "binaries missing under $BUILD"
[[ -e $DATASET/train-images-idx3-ubyte.gz ]] || { say "SKIP: no Fashion-MNIST"; exit 77; }
if ! ip netns add "$NS_HUB" 2>/dev/null; then
  say "SKIP: this kernel or user cannot create network namespaces"
  exit 77
fi

# ---- reference run on loopback, no faults ----------------------------------
start_psd() { # ns listen log -> pid in LAST_PID
  local ns=$1 listen=$2 log=$3
  if [[ -n $ns ]]; then
    # Beyond loopback without tokens: --insecure (this test's own isolated
    # namespaces; every peer is an admin, as before protocol 2).
    t_start_psd "$log" ip netns exec "$ns" "$PSD" --listen "$listen" --insecure --worker-timeout 600 --log-level info
  else
    t_start_psd "$log" "$PSD" --listen "$listen" --worker-timeout 600 --log-level info
  fi
  LAST_PID=$T_PID
}

port_of() { t_port_of "$1"; }

dump_weights() { # ns servers outdir
  local ns=$1 servers=$2 out=$3 run=()
  mkdir -p "$out"
  [[ -n $ns ]] && run=(ip netns exec "$ns")
  for t in fc0.w fc0.b fc1.w fc1.b fc2.w fc2.b; do
    "${run[@]}" "$PSCTL" --timeout $((T_WAIT * 1000)) -s "$servers" pull "$t" --out "$out/$t" || fail "pull $t"
  done
}

run_job() { # ns servers logprefix [gate args...]
  local ns=$1 servers=$2 prefix=$3 run=() pids=()
  shift 3
  [[ -n $ns ]] && run=(ip netns exec "$ns")
  for r in 0 1; do
    "${run[@]}" "$TRAIN" --servers "$servers" --rank $r --workers 2 --mode sync \
      --data "$DATASET" "${JOB[@]}" "$@" >"$prefix-w$r.log" 2>&1 &
    pids+=($!)
    PIDS+=($!)
  done
  JOB_PIDS=("${pids[@]}")
}

say "reference run on loopback"
start_psd "" 127.0.0.1:0 "$TMP/ref-s0.log"; R0=$LAST_PID
start_psd "" 127.0.0.1:0 "$TMP/ref-s1.log"; R1=$LAST_PID
REF_SERVERS="127.0.0.1:$(port_of "$TMP/ref-s0.log"),127.0.0.1:$(port_of "$TMP/ref-s1.log")"
run_job "" "$REF_SERVERS" "$TMP/ref"
t_wait_jobs "the reference workers" "${JOB_PIDS[*]}" "$R0 $R1" || fail "the reference run did not finish"
for p in "${JOB_PIDS[@]}"; do wait "$p" || fail "reference worker failed: $(tail -3 "$TMP"/ref-w*.log)"; done
dump_weights "" "$REF_SERVERS" "$TMP/ref-weights"
kill -TERM "$R0" "$R1"; wait "$R0" "$R1" || true

# ---- the hosts -------------------------------------------------------------------
say "building namespaces $NS_S0 $NS_S1 $NS_W around bridge in $NS_HUB"
ip -n "$NS_HUB" link add br0 type bridge
ip -n "$NS_HUB" link set br0 up
i=0
for ns in "$NS_S0" "$NS_S1" "$NS_W"; do
  i=$((i + 1))
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip link add "v$TAG$i" type veth peer name "h$TAG$i"
  ip link set "v$TAG$i" netns "$ns"
  ip link set "h$TAG$i" netns "$NS_HUB"
  ip -n "$NS_HUB" link set "h$TAG$i" master br0 up
  ip -n "$ns" link set "v$TAG$i" name eth0
  ip -n "$ns" addr add "10.213.0.$i/24" dev eth0
  ip -n "$ns" link set eth0 up
done

# Loss: 3% of the shards' outgoing packets.
for ns in "$NS_S0" "$NS_S1"; do
  ip netns exec "$ns" nft add table inet psdloss
  ip netns exec "$ns" nft add chain inet psdloss out '{ type filter hook output priority 0; }'
  ip netns exec "$ns" nft add rule inet psdloss out oifname eth0 numgen random mod 100 '<' 3 drop
done
start_psd "$NS_S0" 10.213.0.1:7070 "$TMP/net-s0.log"; N0=$LAST_PID
start_psd "$NS_S1" 10.213.0.2:7070 "$TMP/net-s1.log"; N1=$LAST_PID
RELAYS=()
NET_SERVERS=10.213.0.1:7070,10.213.0.2:7070
for a in 10.213.0.1:7070 10.213.0.2:7070; do
  ip netns exec "$NS_W" "$PSCTL" -s "$a" --timeout $((T_WAIT * 1000)) ping >/dev/null ||
    fail "shard $a unreachable from the workers' namespace"
done
if ip netns exec "$NS_S0" tc qdisc add dev eth0 root netem delay 2ms 2>/dev/null &&
   ip netns exec "$NS_S1" tc qdisc add dev eth0 root netem delay 2ms 2>/dev/null; then
  say "delay: 2 ms netem on both shards' links"
  JOB_SERVERS=$NET_SERVERS
else
  # No sch_netem in this kernel: put the delay on the path with a relay in
  # the workers' namespace (2 ms each way, order kept); the relay's own
  # connections cross the lossy veth links and the cut.
  say "delay: tc netem unavailable (this kernel lacks sch_netem); 2 ms each way by a relay in the workers' namespace"
  ip netns exec "$NS_W" python3 "$(dirname "$0")/delay_proxy.py" 17070 10.213.0.1:7070 2 >"$TMP/proxy0.log" 2>&1 &
  PIDS+=($!)
  RELAYS+=($!)
  ip netns exec "$NS_W" python3 "$(dirname "$0")/delay_proxy.py" 17071 10.213.0.2:7070 2 >"$TMP/proxy1.log" 2>&1 &
  PIDS+=($!)
  RELAYS+=($!)
  proxies_up() { grep -q delay_proxy "$TMP/proxy0.log" && grep -q delay_proxy "$TMP/proxy1.log"; }
  t_wait_until "the delay relays to listen" proxies_up || fail "delay relay did not start: $(cat "$TMP"/proxy*.log)"
  JOB_SERVERS=127.0.0.1:17070,127.0.0.1:17071
fi

say "faulty run across namespaces"
GATE=$TMP/net.gate
run_job "$NS_W" "$JOB_SERVERS" "$TMP/net" --gate-file "$GATE" --gate-step 30
# Both workers held after 30 steps (of 46): the job is under way.
for r in 0 1; do
  at_gate() {
    kill -0 "${JOB_PIDS[$1]}" 2>/dev/null || fail "worker $1 ended before its gate: $(tail -n 3 "$TMP/net-w$1.log")"
    grep -q "at the gate" "$TMP/net-w$1.log"
  }
  t_wait_until "worker $r at its gate" at_gate "$r" || fail "worker $r never reached its gate"
done
r=$(ip netns exec "$NS_W" "$PSCTL" --timeout $((T_WAIT * 1000)) -s 10.213.0.1:7070 stats |
    sed -n 's/.*"rounds":\([0-9]*\).*/\1/p')
say "cutting shard 0's link for 3 s, the workers held after 30 steps (rounds so far on shard 0: ${r:-?}), then letting them go on"
ip -n "$NS_HUB" link set "h${TAG}1" down
: >"$GATE"
sleep 3 # pacing: how long the link stays cut; step 31 needs shard 0 whatever the timing
ip -n "$NS_HUB" link set "h${TAG}1" up
t_wait_jobs "the workers across namespaces" "${JOB_PIDS[*]}" "$N0 $N1 ${RELAYS[*]}" ||
  fail "the run across namespaces did not finish: $(tail -n 5 "$TMP"/net-s*.log)"
for p in "${JOB_PIDS[@]}"; do wait "$p" || fail "worker failed across namespaces: $(tail -3 "$TMP"/net-w*.log)"; done
dump_weights "$NS_W" "$JOB_SERVERS" "$TMP/net-weights"
grep -h "final test accuracy" "$TMP/net-w0.log" || true

for t in fc0.w fc0.b fc1.w fc1.b fc2.w fc2.b; do
  cmp -s "$TMP/ref-weights/$t" "$TMP/net-weights/$t" ||
    fail "$t differs from the loopback reference after loss and a link cut"
done
say "PASS: same weights, bit for bit, after 2 ms delay, 3% loss and a 3 s link cut"
