#!/usr/bin/env bash
# protected_netns_test.sh BUILD_DIR -- protected mode against real peers
# that are not on loopback.
#
# A shard without tokens listens on loopback only and serves loopback peers
# only. Two real ways a peer that is not on loopback reaches a listener
# bound to 127.0.0.1, each in network namespaces this test makes:
#  - from another host: namespace B reaches the shard's namespace A over a
#    veth link, through a DNAT rule to 127.0.0.1 with route_localnet set on
#    A's side (what kube-proxy once did, CVE-2020-8558: neighbours reached
#    services bound to localhost);
#  - from the shard's own host, a socket bound to A's veth address and
#    connected to 127.0.0.1 (the kernel reports that address as the peer).
# Both are refused with one Error naming protected mode, and logged with
# the peer's address; a loopback client is served meanwhile. The same path
# from B reaches a shard that has tokens, and its reader is served: the
# refusal was protected mode's, not the network's.
#
# Exits 77 (skip) only where the kernel or user cannot make network
# namespaces or NAT rules. It removes every namespace it made and stops only
# the processes it started. Nothing is decided by time: each step waits for
# a log line or a reply, with testlib's bound against a hang.
set -euo pipefail
. "$(dirname "$0")/testlib.sh"
BUILD=${1:?usage: tests/protected_netns_test.sh BUILD_DIR}
BUILD=$(cd "$BUILD" && pwd)
PSD=$BUILD/server/psd
PSCTL=$BUILD/client/psctl
TAG=psdpm$$
NS_A=$TAG-a NS_B=$TAG-b
t_tmpdir protected_netns_test
PIDS=()

say() { echo "protected_netns_test: $*"; }
fail() { t_fail "$@"; }

cleanup() {
  local rc=$?
  trap - EXIT
  t_stop_all
  for ns in "$NS_A" "$NS_B"; do ip netns del "$ns" 2>/dev/null || true; done
  t_tmp_done "$rc"
  exit "$rc"
}
trap cleanup EXIT

[[ -x $PSD && -x $PSCTL ]] || fail "binaries missing under $BUILD"
if ! ip netns add "$NS_A" 2>/dev/null; then
  say "SKIP: this kernel or user cannot create network namespaces"
  exit 77
fi
ip netns add "$NS_B"
for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
ip link add "a$TAG" type veth peer name "b$TAG"
ip link set "a$TAG" netns "$NS_A"
ip link set "b$TAG" netns "$NS_B"
ip -n "$NS_A" addr add 10.213.9.1/24 dev "a$TAG"
ip -n "$NS_B" addr add 10.213.9.2/24 dev "b$TAG"
ip -n "$NS_A" link set "a$TAG" up
ip -n "$NS_B" link set "b$TAG" up
in_a() { ip netns exec "$NS_A" "$@"; }
in_b() { ip netns exec "$NS_B" "$@"; }
# Packets from B to 10.213.9.1:7071 are sent on to A's 127.0.0.1:PORT.
if ! in_a sysctl -qw net.ipv4.conf.all.route_localnet=1 ||
   ! in_a sysctl -qw "net.ipv4.conf.a$TAG.route_localnet=1" ||
   ! in_a nft add table ip psdnat 2>/dev/null ||
   ! in_a nft add chain ip psdnat pre '{ type nat hook prerouting priority -100; }' 2>/dev/null; then
  say "SKIP: this kernel cannot rewrite destinations to loopback (route_localnet, nftables nat)"
  exit 77
fi

start_psd() { # log args... -> pid in LAST_PID, port in LAST_PORT
  local log=$1
  shift
  # ip netns exec execs psd: $! is the daemon's own pid.
  t_start_psd "$log" ip netns exec "$NS_A" "$PSD" --listen 127.0.0.1:0 --log-level debug "$@"
  LAST_PID=$T_PID
  LAST_PORT=$T_PORT
}

dnat_to() { # port: B's 10.213.9.1:7071 goes to A's 127.0.0.1:port
  in_a nft flush chain ip psdnat pre
  in_a nft add rule ip psdnat pre ip saddr 10.213.9.2 tcp dport 7071 dnat to "127.0.0.1:$1"
}

# ---- a shard without tokens: protected mode ------------------------------------------
LOG=$TMP/protected.log
start_psd "$LOG"
PORT=$LAST_PORT
dnat_to "$PORT"
say "shard without tokens on 127.0.0.1:$PORT in $NS_A; B reaches it as 10.213.9.1:7071"

# A loopback peer is served.
in_a "$PSCTL" --timeout $((T_WAIT * 1000)) -s "127.0.0.1:$PORT" ping >/dev/null ||
  fail "a loopback client was not served"

# From the other host: refused with one Error naming protected mode.
set +e
OUT=$(in_b "$PSCTL" --timeout $((T_WAIT * 1000)) -s 10.213.9.1:7071 ping 2>&1)
RC=$?
set -e
((RC != 0)) || fail "a peer on another host was served by a shard without tokens: $OUT"
grep -q "protected mode" <<<"$OUT" || fail "the refusal does not say why: $OUT"
refused_b() { grep -q "refusing 10.213.9.2:[0-9]*: this shard has no tokens (protected mode)" "$LOG"; }
t_wait_until "the shard to log the refusal of 10.213.9.2" refused_b || fail "no refusal logged: $(tail -5 "$LOG")"
say "10.213.9.2 (another host, through DNAT to loopback) refused: $(grep -o 'this psd has no tokens[^"]*' <<<"$OUT" | head -1)"

# From this host, a socket bound to A's own non-loopback address: the
# shard's first frame is the Error, then EOF.
FIRST=$(in_a python3 - "$PORT" <<'EOF'
import socket, struct, sys
s = socket.socket()
s.bind(("10.213.9.1", 0))
s.connect(("127.0.0.1", int(sys.argv[1])))
data = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    data += b
# One frame: a 16-byte header, then a Response holding the Error's sentence.
assert data[:4] == b"PSD1", data[:16]
n = struct.unpack("<Q", data[8:16])[0]
assert len(data) == 16 + n, (len(data), n)
print(data[16:].decode("utf-8", "replace").replace("\0", " "))
EOF
) || fail "the bound socket's exchange failed: $FIRST"
grep -q "protected mode" <<<"$FIRST" || fail "a peer bound to 10.213.9.1 got: $FIRST"
refused_a() { grep -q "refusing 10.213.9.1:[0-9]*: this shard has no tokens (protected mode)" "$LOG"; }
t_wait_until "the shard to log the refusal of 10.213.9.1" refused_a || fail "no refusal logged: $(tail -5 "$LOG")"
say "10.213.9.1 (this host, not loopback) refused"

# Counted, and loopback still served.
STATS=$(in_a "$PSCTL" --timeout $((T_WAIT * 1000)) -s "127.0.0.1:$PORT" stats) || fail "stats"
grep -q '"refused":2,' <<<"$STATS" || fail "stats should count 2 refusals: $STATS"
kill -TERM "$LAST_PID"
wait "$LAST_PID" || fail "the protected shard did not stop cleanly"

# ---- the same path to a shard with tokens is served -------------------------------------
TOK=$TMP/reader.token
(umask 077 && head -c 32 /dev/urandom | base64 >"$TOK")
LOG2=$TMP/tokens.log
start_psd "$LOG2" --token-file "reader=$TOK"
dnat_to "$LAST_PORT"
in_b "$PSCTL" --timeout $((T_WAIT * 1000)) -s 10.213.9.1:7071 --token-file "$TOK" --role reader \
  ping >/dev/null || fail "the reader on another host was not served by a shard with tokens: $(tail -5 "$LOG2")"
grep -q "protected mode" "$LOG2" && fail "a shard with tokens logged protected mode"
kill -TERM "$LAST_PID"
wait "$LAST_PID" || fail "the shard with tokens did not stop cleanly"
say "PASS: non-loopback peers refused in protected mode (DNAT from another host, a bound socket on this one); the same path served with tokens"
