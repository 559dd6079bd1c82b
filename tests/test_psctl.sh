#!/usr/bin/env bash
# test_psctl.sh BUILD_DIR -- drive psctl against real psd shards: create
# (which prints what it created), lookup (and create again from its output),
# push from a file, pull --out, compare, numbers in their shortest form; set,
# tune, reset and rm, and the roles that may; and check that every failure
# exits non-zero with one line.
set -u
. "$(dirname "$0")/testlib.sh"
BUILD=${1:?usage: test_psctl.sh BUILD_DIR}
PSD=${PSD_BIN:-$BUILD/server/psd}
PSCTL=$BUILD/client/psctl
t_tmpdir test_psctl
PIDS=()
FAILS=0

cleanup() {
  local rc=$?
  trap - EXIT
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; { wait "$p"; } 2>/dev/null; done
  t_tmp_done "$rc"
  exit "$rc"
}
trap cleanup EXIT

fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
pass() { echo "ok: $*"; }

# start_psd NAME [ARGS...]: start a shard on an ephemeral port; its address
# goes to the variable NAME.
start_psd() {
  local var=$1; shift
  local log=$TMP/$var.log
  "$PSD" --listen 127.0.0.1:0 --log-level info "$@" 2>"$log" &
  local pid=$!
  PIDS+=($pid)
  up() { kill -0 "$pid" 2>/dev/null || { echo "$PSD exited: $(cat "$log")"; exit 1; }; t_has_port "$log"; }
  t_wait_until "$PSD to listen" up || { echo "cannot start $PSD"; exit 1; }
  printf -v "$var" '127.0.0.1:%s' "$(t_port_of "$log")"
}

# expect_fail WHAT EXIT PATTERN -- psctl ARGS...: exit status EXIT, stdout
# empty, and stderr exactly one line matching PATTERN.
expect_fail() {
  local what=$1 want=$2 pat=$3; shift 4
  "$PSCTL" "$@" >"$TMP/out" 2>"$TMP/err"
  local rc=$?
  local lines
  lines=$(wc -l <"$TMP/err")
  if [ "$rc" -ne "$want" ]; then fail "$what: exit $rc, expected $want ($(cat "$TMP/err"))"
  elif [ "$lines" -ne 1 ]; then fail "$what: $lines lines on stderr: $(cat "$TMP/err")"
  elif ! grep -Eq -e "$pat" "$TMP/err"; then fail "$what: stderr '$(cat "$TMP/err")' does not match '$pat'"
  elif [ -s "$TMP/out" ]; then fail "$what: wrote to stdout: $(cat "$TMP/out")"
  else pass "$what: $(cat "$TMP/err")"; fi
}

# run WHAT psctl ARGS...: must succeed; stdout in $TMP/out.
run() {
  local what=$1; shift
  if "$PSCTL" "$@" >"$TMP/out" 2>"$TMP/err"; then pass "$what"; return 0; fi
  fail "$what: exit $?: $(cat "$TMP/err")"
  return 1
}

start_psd A
start_psd B
L=$A,$B

run "help" --help
grep -q "^usage: psctl" "$TMP/out" || fail "--help prints no usage"
run "ping" -s "$L" ping
grep -q "ok: 2 shards" "$TMP/out" || fail "ping output: $(cat "$TMP/out")"

CREATE=(create fc0.w --shape 20,30 --init glorot_uniform --seed 3 --optimizer sgd --lr 0.5 --block-size 100)
run "create" -s "$L" "${CREATE[@]}"
# create prints what it created: the resolved spec, as lookup prints it
# (the defaults filled in: the schedule's gamma 0.1, step-size 1000).
for kv in "name fc0.w" "shape 20,30" "numel 600" "version 0" "block-size 100" "init glorot_uniform" \
          "seed 3" "optimizer sgd" "lr 0.5" "gamma 0.1" "step-size 1000" "schedule constant"; do
  grep -qx "$kv" "$TMP/out" || fail "create output lacks '$kv': $(tr '\n' ' ' <"$TMP/out")"
done
cp "$TMP/out" "$TMP/created"
run "create again (idempotent)" -s "$L" "${CREATE[@]}"
expect_fail "conflicting create" 1 '^psctl: create fc0.w: PS_EEXISTS: .*lr' -- \
  -s "$L" "${CREATE[@]}" --lr 0.25

# lookup prints every hyperparameter; turning its lines back into create
# options must describe the same tensor (an idempotent create).
run "lookup" -s "$L" lookup fc0.w
for kv in "optimizer sgd" "lr 0.5" "block-size 100" "init glorot_uniform" "seed 3" "shape 20,30" "numel 600"; do
  grep -qx "$kv" "$TMP/out" || fail "lookup lacks '$kv'"
done
cmp -s "$TMP/out" "$TMP/created" || fail "create and lookup printed different descriptions"
mapfile -t ARGS < <(awk '$1 != "name" && $1 != "numel" && $1 != "version" { print "--" $1 "=" $2 }' "$TMP/out")
run "create from lookup output" -s "$L" create fc0.w "${ARGS[@]}"

# Numbers print in their shortest form that reads back the same: 0.9, not
# 0.90000000000000002; every digit a value needs is kept.
run "create with decimal hyperparameters" -s "$L" create dec --shape 4 --optimizer adam \
  --lr 0.3 --beta1 0.95 --weight-decay 0.1 --eps 1e-7 --beta2 0.30000000000000004
for kv in "lr 0.3" "beta1 0.95" "weight-decay 0.1" "eps 1e-07" "beta2 0.30000000000000004" "gamma 0.1"; do
  grep -qx "$kv" "$TMP/out" || fail "create dec lacks '$kv': $(tr '\n' ' ' <"$TMP/out")"
done
expect_fail "a difference names both values shortest" 1 \
  '^psctl: create dec: PS_EEXISTS: .*optimizer lr: 0\.3 vs 0\.7; optimizer beta1: 0\.95 vs 0\.9[;) ]' -- \
  -s "$L" create dec --shape 4 --optimizer adam --lr 0.7 --beta1 0.9 --weight-decay 0.1 --eps 1e-7 \
  --beta2 0.30000000000000004
run "stats JSON numbers" -s "$A" stats
grep -q '"frame_timeout_s":30,"hello_timeout_s":10,"idle_timeout_s":300,' "$TMP/out" ||
  fail "stats limits: $(grep -o '"limits":{[^}]*}' "$TMP/out")"
grep -q '"bounds_ms":\[0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,' "$TMP/out" ||
  fail "stats bounds: $(grep -o '"bounds_ms":\[[^]]*\]' "$TMP/out")"

# Options may come after the positional arguments, and PS_SERVERS works.
run "pull --out" pull fc0.w --out "$TMP/w0.bin" -s "$L"
[ "$(stat -c %s "$TMP/w0.bin")" = 2400 ] || fail "w0.bin is $(stat -c %s "$TMP/w0.bin") bytes, expected 2400"
grep -qx "version 0" "$TMP/out" || fail "pull --out output: $(cat "$TMP/out")"

# Push the weights themselves as the gradient: sgd with lr 0.5 halves them.
PS_SERVERS=$L run "push --in" push fc0.w --in "$TMP/w0.bin"
grep -qx "version 1" "$TMP/out" || fail "push output: $(cat "$TMP/out")"
PS_SERVERS=$L run "pull after push" pull --out "$TMP/w1.bin" fc0.w
paste <(od -An -v -tf4 -w4 "$TMP/w0.bin") <(od -An -v -tf4 -w4 "$TMP/w1.bin") |
  awk '{ d = $2 - $1 / 2; if (d < 0) d = -d; if (d > 1e-7 * ($1 < 0 ? -$1 : $1) + 1e-12) bad++; n++ }
       END { if (n != 600 || bad) { print "compare: " n " values, " bad+0 " differ"; exit 1 } }' ||
  fail "pulled values are not half the pushed ones"
pass "pulled values are w0 - 0.5 * w0"

run "pull summary" -s "$L" pull fc0.w
awk '/^version 1$/ { v = 1 } /^count 600$/ { c = 1 } $1 == "mean" { m = $2 } $1 == "min" { lo = $2 }
     $1 == "max" { hi = $2 } $1 == "std" { s = $2 }
     END { exit !(v && c && lo <= m && m <= hi && s > 0) }' "$TMP/out" ||
  fail "pull summary: $(tr '\n' ' ' <"$TMP/out")"

run "list" -s "$L" list
grep -qx "fc0.w 20,30 600 1 glorot_uniform sgd" "$TMP/out" || fail "list: $(cat "$TMP/out")"
run "stats --shard 1" -s "$L" stats --shard 1
grep -q '"shard_index":1' "$TMP/out" || fail "stats --shard 1: $(cut -c1-100 "$TMP/out")"
run "stats (every shard)" -s "$L" stats
[ "$(wc -l <"$TMP/out")" = 2 ] || fail "stats printed $(wc -l <"$TMP/out") lines for 2 shards"

# Sparse tables: create-table (idempotent, conflicting), pull-rows.
TABLE=(create-table emb --dim 3 --init uniform --limit 0.5 --optimizer adagrad --max-rows 100 --evict lfu)
run "create-table" -s "$L" "${TABLE[@]}"
grep -q "^ok: table emb, rows of 3 floats, adagrad, max_rows 100, evict lfu$" "$TMP/out" ||
  fail "create-table output: $(cat "$TMP/out")"
run "create-table again (idempotent)" -s "$L" "${TABLE[@]}"
expect_fail "conflicting create-table" 1 '^psctl: create-table emb: PS_EEXISTS: .*evict: lfu vs lru' -- \
  -s "$L" "${TABLE[@]}" --evict lru
run "pull-rows" -s "$L" pull-rows emb --keys 7,18446744073709551615,7
awk 'NF != 4 { bad = 1 } $2 < -0.5 || $2 > 0.5 { bad = 1 } END { exit bad || NR != 3 }' "$TMP/out" ||
  fail "pull-rows output: $(cat "$TMP/out")"
[ "$(sed -n 1p "$TMP/out")" = "$(sed -n 3p "$TMP/out")" ] || fail "a repeated key's rows differ"
expect_fail "pull-rows of a tensor" 1 '^psctl: pull-rows fc0.w: .*no table' -- -s "$L" pull-rows fc0.w --keys 1
expect_fail "pull of a table" 1 "^psctl: pull emb: PS_EBADREQ: .*'emb' is a table" -- -s "$L" pull emb
expect_fail "create-table without --dim" 2 'create-table needs --dim' -- -s "$L" create-table t2
expect_fail "create-table with --shape" 2 'option --shape does not apply to create-table' -- \
  -s "$L" create-table t2 --dim 3 --shape 3
expect_fail "bad eviction" 2 "--evict: 'fifo'" -- -s "$L" create-table t2 --dim 3 --evict fifo
expect_fail "eviction without a limit" 1 '^psctl: create-table t2: PS_ESPEC: .*needs max_rows' -- \
  -s "$L" create-table t2 --dim 3 --evict lru
# reset-table empties it (rows made again from the init: the same values),
# rm-table deletes it; each refuses a tensor's name, and rm-table a name
# no shard knows.
run "pull-rows before reset-table" -s "$L" pull-rows emb --keys 7,8,9
cp "$TMP/out" "$TMP/rows0"
run "reset-table" -s "$L" reset-table emb
grep -qx "reset table emb" "$TMP/out" || fail "reset-table output: $(cat "$TMP/out")"
run "stats after reset-table" -s "$L" stats
[ "$(grep -c '"name":"emb","dim":3,"optimizer":"adagrad","rows":0,' "$TMP/out")" = 2 ] ||
  fail "reset-table left rows: $(cat "$TMP/out")"
run "pull-rows after reset-table" -s "$L" pull-rows emb --keys 7,8,9
cmp -s "$TMP/out" "$TMP/rows0" || fail "reset-table: rows differ from the initial ones"
expect_fail "reset-table of a tensor" 1 "^psctl: reset-table fc0.w: PS_EBADREQ: .*'fc0.w' is a tensor" -- \
  -s "$L" reset-table fc0.w
expect_fail "rm of a table" 1 "^psctl: rm emb: PS_EBADREQ: .*'emb' is a table.*psctl rm-table" -- \
  -s "$L" rm emb
run "rm-table" -s "$L" rm-table emb
grep -qx "deleted table emb" "$TMP/out" || fail "rm-table output: $(cat "$TMP/out")"
expect_fail "pull-rows after rm-table" 1 "^psctl: pull-rows emb: .*no table" -- \
  -s "$L" pull-rows emb --keys 1
expect_fail "rm-table again" 1 "^psctl: rm-table emb: PS_ENOTFOUND: .*no shard knows a table" -- \
  -s "$L" rm-table emb
expect_fail "rm-table without a name" 2 'rm-table needs exactly one table NAME' -- -s "$L" rm-table
run "create-table after rm-table" -s "$L" "${TABLE[@]}"

# Failures: one line on stderr, non-zero exit.
expect_fail "unknown tensor" 1 "^psctl: pull fc0.x: PS_ENOTFOUND: .*no tensor named 'fc0.x'" -- -s "$L" pull fc0.x
head -c 12 "$TMP/w0.bin" >"$TMP/short.bin"
expect_fail "wrong element count" 1 '^psctl: push fc0.w: PS_ESHAPE: .*3 .*600' -- -s "$L" push fc0.w --in "$TMP/short.bin"
head -c 10 "$TMP/w0.bin" >"$TMP/odd.bin"
expect_fail "file not float32" 1 '^psctl: .*odd.bin' -- -s "$L" push fc0.w --in "$TMP/odd.bin"
expect_fail "missing file" 1 '^psctl: .*nonexistent' -- -s "$L" push fc0.w --in "$TMP/nonexistent"
expect_fail "bad spec" 1 '^psctl: create bad: PS_ESPEC' -- -s "$L" create bad --shape 4 --optimizer sgd --lr -1
expect_fail "no server" 1 '^psctl: connect to 127.0.0.1:1: PS_ECONNECT' -- -s 127.0.0.1:1 --timeout 300 ping
# A port nothing listens on (bound, its number taken, closed): refused, and
# psctl says so at once, naming the address, rather than after the connect
# timeout (which would say "within 10000 ms").
CLOSED=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
expect_fail "refused connection" 1 \
  "^psctl: connect to $A,127.0.0.1:$CLOSED: PS_ECONNECT: could not connect to shard 1 \\(127.0.0.1:$CLOSED\\): connection refused: nothing listens there" -- \
  -s "$A,127.0.0.1:$CLOSED" ping
expect_fail "checkpoint without --data-dir" 1 '^psctl: checkpoint: PS_EIO' -- -s "$L" checkpoint
expect_fail "unknown command" 2 "unknown command 'frobnicate'" -- -s "$L" frobnicate
expect_fail "unknown option" 2 "unknown option '--bogus'" -- -s "$L" ping --bogus
expect_fail "option for another command" 2 'option --lr does not apply to pull' -- -s "$L" pull fc0.w --lr 1
expect_fail "missing name" 2 'pull needs exactly one tensor NAME' -- -s "$L" pull
expect_fail "bad number" 2 "--lr: 'fast' is not a number" -- -s "$L" create t --shape 3 --lr fast
expect_fail "bad shape" 2 '--shape' -- -s "$L" create t --shape 3,0
expect_fail "bad server list" 1 'PS_EINVAL: bad server list' -- -s "nonsense" ping

# Lifecycle and settings: set (whole, a range), tune, reset, rm, none.
run "set --in" -s "$L" set fc0.w --in "$TMP/w0.bin"
grep -qx "set fc0.w: 600 values at offset 0" "$TMP/out" || fail "set output: $(cat "$TMP/out")"
run "pull after set" -s "$L" pull fc0.w --out "$TMP/w2.bin"
cmp -s "$TMP/w0.bin" "$TMP/w2.bin" || fail "set values did not land"
grep -qx "version 1" "$TMP/out" || fail "a set changed the version: $(cat "$TMP/out")"
head -c 40 "$TMP/w1.bin" >"$TMP/part.bin"
run "set --offset --zero-state" -s "$L" set fc0.w --in "$TMP/part.bin" --offset 590 --zero-state
run "pull after range set" -s "$L" pull fc0.w --out "$TMP/w3.bin"
cmp -s <(tail -c 40 "$TMP/w3.bin") "$TMP/part.bin" || fail "range set: the last 10 values differ"
cmp -s <(head -c 2360 "$TMP/w3.bin") <(head -c 2360 "$TMP/w0.bin") || fail "range set moved other values"
expect_fail "set past the end" 1 '^psctl: set fc0.w: PS_ESHAPE: .*outside' -- \
  -s "$L" set fc0.w --in "$TMP/part.bin" --offset 595
run "tune" -s "$L" tune fc0.w --lr 0.125 --schedule step --step-size 10
grep -qx "tuned fc0.w: --lr 0.125 --schedule step --step-size 10" "$TMP/out" ||
  fail "tune output: $(cat "$TMP/out")"
run "lookup after tune" -s "$L" lookup fc0.w
for kv in "lr 0.125" "schedule step" "step-size 10" "optimizer sgd"; do
  grep -qx "$kv" "$TMP/out" || fail "lookup after tune lacks '$kv'"
done
expect_fail "tune the kind" 1 '^psctl: tune fc0.w: PS_ESPEC: .*kind is fixed' -- \
  -s "$L" tune fc0.w --optimizer adam
expect_fail "tune out of range" 1 '^psctl: tune fc0.w: PS_ESPEC: .*lr must be in' -- \
  -s "$L" tune fc0.w --lr -1
expect_fail "tune nothing" 2 'tune needs at least one optimizer option' -- -s "$L" tune fc0.w
expect_fail "tune without a name" 2 'tune needs one tensor NAME, or --all' -- -s "$L" tune --lr 1
expect_fail "tune an init option" 2 'option --seed does not apply to tune' -- \
  -s "$L" tune fc0.w --seed 4
run "tune --all" -s "$L" tune --all --clip-norm 2
grep -qx "tuned every tensor: --clip-norm 2" "$TMP/out" || fail "tune --all output: $(cat "$TMP/out")"
run "create as created, after tunings" -s "$L" "${CREATE[@]}"
run "reset" -s "$L" reset fc0.w
run "pull after reset" -s "$L" pull fc0.w --out "$TMP/w4.bin"
cmp -s "$TMP/w0.bin" "$TMP/w4.bin" || fail "reset did not restore the initial values"
grep -qx "version 0" "$TMP/out" || fail "reset left a version: $(cat "$TMP/out")"
printf '\0\0\200?\0\0\200?\0\0\200?\0\0\200?' >"$TMP/ones4.bin"
run "create --optimizer none" -s "$L" create avg --shape 4 --optimizer none --init zeros
run "push to none" -s "$L" push avg --in "$TMP/ones4.bin"
run "pull none" -s "$L" pull avg --out "$TMP/avg.bin"
cmp -s "$TMP/avg.bin" "$TMP/ones4.bin" || fail "none did not store the gradient"
expect_fail "none with a learning rate" 1 '^psctl: create avg2: PS_ESPEC: .*lr must be 0 for none' -- \
  -s "$L" create avg2 --shape 4 --optimizer none --lr 0.1
run "rm" -s "$L" rm avg
grep -qx "deleted avg" "$TMP/out" || fail "rm output: $(cat "$TMP/out")"
expect_fail "rm again" 1 "^psctl: rm avg: PS_ENOTFOUND: .*no shard knows" -- -s "$L" rm avg

# checkpoint with a data dir.
mkdir -p "$TMP/data"
start_psd C --data-dir "$TMP/data"
run "checkpoint" -s "$C" checkpoint
grep -qx ok "$TMP/out" || fail "checkpoint output: $(cat "$TMP/out")"

# A shard with tokens: psctl proves its role with a token file (--token-file
# or PS_TOKEN_FILE, --role or PS_ROLE); the token is never an argument.
(umask 077
 echo "admin-token-for-psctl-test-0001" >"$TMP/admin.tok"
 echo "worker-token-for-psctl-test-0002" >"$TMP/worker.tok"
 echo "reader-token-for-psctl-test-0003" >"$TMP/reader.tok")
start_psd T --token-file "admin=$TMP/admin.tok" --token-file "worker=$TMP/worker.tok" \
  --token-file "reader=$TMP/reader.tok"
run "admin create with --token-file" -s "$T" --token-file "$TMP/admin.tok" create tk --shape 4 --init zeros --optimizer sgd
PS_TOKEN_FILE=$TMP/worker.tok PS_ROLE=worker run "worker create from PS_TOKEN_FILE/PS_ROLE (idempotent)" \
  -s "$T" create tk --shape 4 --init zeros --optimizer sgd
printf '\0\0\200?\0\0\200?\0\0\200?\0\0\200?' >"$TMP/ones.bin"
run "worker push" -s "$T" --token-file "$TMP/worker.tok" --role worker push tk --in "$TMP/ones.bin"
grep -qx "version 1" "$TMP/out" || fail "worker push output: $(cat "$TMP/out")"
run "reader list" -s "$T" --token-file "$TMP/reader.tok" --role reader list
grep -q "^tk 4 4 1 " "$TMP/out" || fail "reader list: $(cat "$TMP/out")"
expect_fail "reader push" 1 '^psctl: push tk: PS_EPERM: .*role reader may not push' -- \
  -s "$T" --token-file "$TMP/reader.tok" --role reader push tk --in "$TMP/ones.bin"
expect_fail "worker checkpoint" 1 '^psctl: checkpoint: PS_EPERM: .*role worker may not checkpoint' -- \
  -s "$T" --token-file "$TMP/worker.tok" --role worker checkpoint
run "admin create-table" -s "$T" --token-file "$TMP/admin.tok" create-table tt --dim 2
expect_fail "worker rm-table" 1 '^psctl: rm-table tt: PS_EPERM: .*role worker may not delete \(a table\)' -- \
  -s "$T" --token-file "$TMP/worker.tok" --role worker rm-table tt
expect_fail "reader reset-table" 1 '^psctl: reset-table tt: PS_EPERM: .*role reader may not reset' -- \
  -s "$T" --token-file "$TMP/reader.tok" --role reader reset-table tt
run "admin rm-table" -s "$T" --token-file "$TMP/admin.tok" rm-table tt
expect_fail "wrong token" 1 '^psctl: connect to .*: PS_EAUTH: .*role admin refused' -- \
  -s "$T" --token-file "$TMP/reader.tok" ping
expect_fail "no token" 1 '^psctl: connect to .*: PS_EAUTH: .*no proof' -- -s "$T" ping
cp "$TMP/admin.tok" "$TMP/public.tok" && chmod 644 "$TMP/public.tok"
expect_fail "world-readable token file" 1 'PS_EINVAL: .*readable by every user' -- \
  -s "$T" --token-file "$TMP/public.tok" ping
expect_fail "unknown role" 1 "PS_EINVAL: role 'root'" -- -s "$T" --role root ping
run "worker set" -s "$T" --token-file "$TMP/worker.tok" --role worker set tk --in "$TMP/ones.bin"
run "worker tune" -s "$T" --token-file "$TMP/worker.tok" --role worker tune tk --lr 0.5
expect_fail "worker rm" 1 '^psctl: rm tk: PS_EPERM: .*role worker may not delete' -- \
  -s "$T" --token-file "$TMP/worker.tok" --role worker rm tk
expect_fail "worker reset" 1 '^psctl: reset tk: PS_EPERM: .*role worker may not reset' -- \
  -s "$T" --token-file "$TMP/worker.tok" --role worker reset tk
expect_fail "reader set" 1 '^psctl: set tk: PS_EPERM: .*role reader may not set' -- \
  -s "$T" --token-file "$TMP/reader.tok" --role reader set tk --in "$TMP/ones.bin"
run "admin reset" -s "$T" --token-file "$TMP/admin.tok" reset tk
run "admin rm" -s "$T" --token-file "$TMP/admin.tok" rm tk
run "stats as reader" -s "$T" --token-file "$TMP/reader.tok" --role reader stats
grep -q '"auth":{"tokens":true,"roles":\["admin","worker","reader"\]' "$TMP/out" ||
  fail "stats auth: $(grep -o '"auth":{[^}]*}' "$TMP/out")"

if [ "$FAILS" -ne 0 ]; then echo "$FAILS check(s) failed"; exit 1; fi
echo "all psctl checks passed"
