#!/usr/bin/env bash
# run-local.sh -- build psd and train an MLP on Fashion-MNIST (or, with
# --model sections, a classifier of the Debian package index's sections on a
# sparse embedding table) with a whole psd job on this machine: S server
# shards and W workers on loopback.
#
# Installs the Debian packages it needs when they are missing, builds into
# ./build (Release), starts the shards on free ports, waits until each one
# answers `psctl ping`, runs the workers, shows rank 0's per-epoch lines and
# ends with the final test accuracy on a line of its own. Everything it
# started is stopped, by PID, when it exits or is interrupted. Exits non-zero
# if a shard or a worker fails.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${PSD_BUILD_DIR:-$ROOT/build}
PORT_BASE=${PSD_PORT_BASE:-17070}
SHARDS=2
WORKERS=4
MODE=sync
MODEL=mlp
LOG_DIR=
NO_BUILD=0
WORKER_TIMEOUT=
TRAIN_ARGS=()

usage() {
  cat <<EOF
usage: deploy/run-local.sh [options] [-- psd-train options]

  --shards N          server shards to start (2)
  --workers N         workers to start (4)
  --mode M            sync | async | ssp:N (sync)
  --model M           mlp (Fashion-MNIST) | sections (the package index's
                      sections; reads the machine's index, running
                      apt-get update first when it is empty) (mlp)
  --epochs N          passed to psd-train, as are the five below
  --batch N           (minibatch per worker)
  --lr X
  --optimizer NAME
  --schedule NAME
  --train-limit N
  --test-limit N
  --worker-timeout S  psd's --worker-timeout (its default)
  --build-dir DIR     where to build ($BUILD_DIR; env PSD_BUILD_DIR)
  --no-build          use the binaries already in the build directory
  --log-dir DIR       keep the logs there (a new directory under /tmp)
  -h, --help

Anything after -- goes to every psd-train unchanged (see psd-train --help),
e.g. deploy/run-local.sh --workers 2 -- --progress --csv /tmp/run.csv
Ports are taken from $PORT_BASE upward (env PSD_PORT_BASE), skipping busy ones.
EOF
}

say() { printf 'run-local: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

need_arg() { [[ $# -ge 2 ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --shards) need_arg "$@"; SHARDS=$2; shift 2 ;;
    --workers) need_arg "$@"; WORKERS=$2; shift 2 ;;
    --mode) need_arg "$@"; MODE=$2; shift 2 ;;
    --model) need_arg "$@"; MODEL=$2; shift 2 ;;
    --epochs|--batch|--lr|--optimizer|--schedule|--train-limit|--test-limit)
      need_arg "$@"; TRAIN_ARGS+=("$1" "$2"); shift 2 ;;
    --worker-timeout) need_arg "$@"; WORKER_TIMEOUT=$2; shift 2 ;;
    --build-dir) need_arg "$@"; BUILD_DIR=$2; shift 2 ;;
    --no-build) NO_BUILD=1; shift ;;
    --log-dir) need_arg "$@"; LOG_DIR=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; TRAIN_ARGS+=("$@"); break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[[ $SHARDS =~ ^[1-9][0-9]*$ ]] || die "--shards: '$SHARDS' is not a positive integer"
[[ $WORKERS =~ ^[1-9][0-9]*$ ]] || die "--workers: '$WORKERS' is not a positive integer"
[[ $MODE =~ ^(sync|async|ssp:[1-9][0-9]*)$ ]] || die "--mode: '$MODE' is not sync, async or ssp:N"
[[ $MODEL =~ ^(mlp|sections)$ ]] || die "--model: '$MODEL' is not mlp or sections"

# ---- packages and build ----------------------------------------------------

PACKAGES=(build-essential cmake pkg-config libuv1-dev libprotobuf-c-dev
          protobuf-c-compiler check zlib1g-dev libopenblas-dev libsodium-dev
          libhttp-parser-dev iproute2)
# The MLP's data is a package; the sections model's is the package index.
if [[ $MODEL == mlp ]]; then PACKAGES+=(dataset-fashion-mnist); fi

# as_root CMD...: run CMD as root (through sudo when not root).
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  else
    command -v sudo >/dev/null || die "$* needs root and there is no sudo"
    sudo "$@"
  fi
}

install_missing() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  say "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
}

# The sections model's data: the machine's package index, read once into the
# log directory so that every worker reads the same bytes. An empty index
# (a fresh container) is fetched with apt-get update.
INDEX=
index_count() { apt-cache dumpavail 2>/dev/null | grep -c '^Package:' || true; }
prepare_index() {
  command -v apt-cache >/dev/null || die "--model sections needs apt-cache (a Debian machine)"
  if [[ $(index_count) -eq 0 ]]; then
    say "the package index is empty: running apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  fi
  INDEX=$LOG_DIR/packages.index
  apt-cache dumpavail >"$INDEX" || die "apt-cache dumpavail failed"
  local n
  n=$(grep -c '^Package:' "$INDEX" || true)
  [[ $n -gt 0 ]] || die "the package index is still empty after apt-get update"
  say "package index: $n packages in $INDEX"
}

if [[ -z $LOG_DIR ]]; then
  LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/psd-run.XXXXXX")
else
  mkdir -p "$LOG_DIR"
fi

if [[ $NO_BUILD -eq 0 ]]; then
  command -v dpkg >/dev/null && install_missing
  say "building into $BUILD_DIR (log: $LOG_DIR/build.log)"
  if ! { cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release &&
         cmake --build "$BUILD_DIR" -j "$(nproc)"; } >"$LOG_DIR/build.log" 2>&1; then
    tail -n 30 "$LOG_DIR/build.log" >&2
    die "build failed (full log: $LOG_DIR/build.log)"
  fi
fi
if [[ $MODEL == sections ]]; then
  prepare_index
  TRAIN_ARGS=(--model sections --index "$INDEX" "${TRAIN_ARGS[@]}")
fi
PSD=$BUILD_DIR/server/psd
PSCTL=$BUILD_DIR/client/psctl
TRAIN=$BUILD_DIR/client/psd-train
for b in "$PSD" "$PSCTL" "$TRAIN"; do
  [[ -x $b ]] || die "$b is missing (build first, or drop --no-build)"
done

# ---- processes -------------------------------------------------------------

SHARD_PIDS=()
WORKER_PIDS=()
TAIL_PID=

# Stop everything this script started, by PID, and reap it. Runs on every
# exit path, including Ctrl-C (background children of a non-interactive
# shell ignore SIGINT, so they are signalled here explicitly).
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in "${WORKER_PIDS[@]}" "${SHARD_PIDS[@]}" $TAIL_PID; do
    kill -0 "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null
  done
  for p in "${WORKER_PIDS[@]}" "${SHARD_PIDS[@]}" $TAIL_PID; do
    wait "$p" 2>/dev/null || true
  done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# The job's role tokens (README, Security), generated for this run into its
# log directory: the shards check proofs of them, the workers prove the
# worker role, readiness is probed as a reader. Nothing listens beyond
# loopback, and no token is ever on a command line.
TOKENS=$LOG_DIR/tokens
"$ROOT/deploy/make-tokens.sh" "$TOKENS" "$(id -u)" 2>/dev/null
TOKEN_ARGS=(--token-file "admin=$TOKENS/admin.token" --token-file "worker=$TOKENS/worker.token"
            --token-file "reader=$TOKENS/reader.token")

# Start every shard, each told the whole server list and its own index
# (--servers/--index: a shard's place in the job is its configuration, not a
# client's), and wait until each answers ping. Ports are taken from
# $NEXT_PORT upward, skipping busy ones; a port can be taken between the
# check and psd's bind, so if a shard dies at once, all are stopped and
# started again on the next ports.
NEXT_PORT=$PORT_BASE
SERVER_LIST=()
start_shards() {
  local attempt i port pid log ports=() _t
  for attempt in 1 2 3 4 5; do
    ports=()
    for ((i = 0; i < SHARDS; i++)); do
      while port_busy "$NEXT_PORT"; do NEXT_PORT=$((NEXT_PORT + 1)); done
      ports+=("$NEXT_PORT")
      NEXT_PORT=$((NEXT_PORT + 1))
    done
    SERVER_LIST=()
    for port in "${ports[@]}"; do SERVER_LIST+=("127.0.0.1:$port"); done
    local list
    list=$(IFS=,; echo "${SERVER_LIST[*]}")
    SHARD_PIDS=()
    for ((i = 0; i < SHARDS; i++)); do
      log=$LOG_DIR/shard$i.log
      local args=(--listen "127.0.0.1:${ports[$i]}" --servers "$list" --index "$i" "${TOKEN_ARGS[@]}")
      [[ -n $WORKER_TIMEOUT ]] && args+=(--worker-timeout "$WORKER_TIMEOUT")
      "$PSD" "${args[@]}" >"$log" 2>&1 &
      SHARD_PIDS+=("$!")
    done
    local up=0 dead=
    for ((i = 0; i < SHARDS; i++)); do
      pid=${SHARD_PIDS[$i]}
      for _t in $(seq 1 100); do
        if ! kill -0 "$pid" 2>/dev/null; then dead=$i; break; fi
        if PS_ROLE=reader PS_TOKEN_FILE=$TOKENS/reader.token \
           "$PSCTL" -s "127.0.0.1:${ports[$i]}" --timeout 1000 ping >/dev/null 2>&1; then
          up=$((up + 1))
          break
        fi
        sleep 0.1
      done
      [[ -z $dead ]] || break
      [[ $up -eq $((i + 1)) ]] || die "shard $i on port ${ports[$i]} did not answer ping within 10 s (log: $LOG_DIR/shard$i.log)"
    done
    [[ $up -eq $SHARDS ]] && return 0
    say "shard $dead could not start on port ${ports[$dead]}: $(tail -n 1 "$LOG_DIR/shard$dead.log")"
    for pid in "${SHARD_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; done
    SHARD_PIDS=()
  done
  die "the shards failed to start 5 times (logs: $LOG_DIR/shard*.log)"
}

start_shards
SERVERS=$(IFS=,; echo "${SERVER_LIST[*]}")
say "$SHARDS shards up at $SERVERS; starting $WORKERS workers ($MODE); logs in $LOG_DIR"

START=$(date +%s)
for ((r = 0; r < WORKERS; r++)); do
  # Rank 0's stderr stays on the terminal for its progress bar and errors.
  if [[ $r -eq 0 ]]; then
    PS_TOKEN_FILE=$TOKENS/worker.token OPENBLAS_NUM_THREADS=1 "$TRAIN" --servers "$SERVERS" --rank 0 \
      --workers "$WORKERS" --mode "$MODE" "${TRAIN_ARGS[@]}" \
      >"$LOG_DIR/worker0.log" &
  else
    PS_TOKEN_FILE=$TOKENS/worker.token OPENBLAS_NUM_THREADS=1 "$TRAIN" --servers "$SERVERS" --rank "$r" \
      --workers "$WORKERS" --mode "$MODE" "${TRAIN_ARGS[@]}" \
      >"$LOG_DIR/worker$r.log" 2>&1 &
  fi
  WORKER_PIDS+=("$!")
done

# Follow rank 0's lines as they are written; the final accuracy is printed
# once at the very end instead.
tail -s 0.2 -n +1 -F --pid="${WORKER_PIDS[0]}" "$LOG_DIR/worker0.log" 2>/dev/null |
  grep -v --line-buffered '^final test accuracy' &
TAIL_PID=$!

# Reap workers as they finish; the first failure stops the job, since in
# sync mode the others would wait for the failed worker's pushes. Shards are
# watched too: one that dies would otherwise leave the workers retrying until
# their operation timeout.
declare -A RANK_OF SHARD_OF
for ((r = 0; r < WORKERS; r++)); do RANK_OF[${WORKER_PIDS[$r]}]=$r; done
for ((i = 0; i < SHARDS; i++)); do SHARD_OF[${SHARD_PIDS[$i]}]=$i; done
pending=("${WORKER_PIDS[@]}" "${SHARD_PIDS[@]}")
workers_left=$WORKERS
FAILED=
while [[ $workers_left -gt 0 ]]; do
  done_pid=
  if wait -n -p done_pid "${pending[@]}"; then rc=0; else rc=$?; fi
  [[ -n $done_pid ]] || break
  rest=()
  for p in "${pending[@]}"; do [[ $p == "$done_pid" ]] || rest+=("$p"); done
  pending=("${rest[@]}")
  if [[ -n ${SHARD_OF[$done_pid]:-} ]]; then
    i=${SHARD_OF[$done_pid]}
    FAILED="shard $i"
    say "shard $i (${SERVER_LIST[$i]}) exited with status $rc during training; its log ends with:"
    tail -n 5 "$LOG_DIR/shard$i.log" >&2
    break
  fi
  workers_left=$((workers_left - 1))
  if [[ $rc -ne 0 ]]; then
    r=${RANK_OF[$done_pid]}
    FAILED="worker $r"
    say "worker $r exited with status $rc"
    # Rank 0's errors are already on the terminal; show the others'.
    [[ $r -eq 0 ]] || tail -n 5 "$LOG_DIR/worker$r.log" >&2
    break
  fi
done
[[ -z $FAILED ]] || exit 1

wait "$TAIL_PID" 2>/dev/null || true
TAIL_PID=
say "$WORKERS workers, $SHARDS shards, $MODE: done in $(( $(date +%s) - START )) s; logs in $LOG_DIR"
final=$(grep '^final test accuracy' "$LOG_DIR/worker0.log" || true)
[[ -n $final ]] || die "rank 0 printed no final accuracy (log: $LOG_DIR/worker0.log)"
echo "$final"
