#!/usr/bin/env bash
# Deployment test: builds the psd image and the monitoring profile's
# Prometheus image, runs the Compose cluster (2 shards, 2 workers) with
# `--profile monitoring` for a short training job against a real Docker
# engine, asks that Prometheus (its HTTP API, published on loopback) what it
# scraped, then stops the shards the way `docker stop` does and checks they
# shut down cleanly and left a checkpoint in their volume.
#
# Exit codes: 0 all checks passed, 1 a check failed, 77 skipped (no usable
# Docker engine here; the reason is printed).
#
# The engine. The test never touches an engine it did not start:
#  - By default it starts its own: a containerd and a dockerd of its own,
#    with their sockets, pidfiles and exec root in a new temporary directory,
#    their data root in $PSD_DOCKER_TEST_ROOT (/var/tmp/psd-docker-test,
#    locked while a test uses it), /etc/docker/daemon.json and the host's
#    containerd left alone, and no default bridge. It never changes the host's
#    packet filter or forwarding: dockerd runs with --iptables=false
#    --ip6tables=false --ip-forward=false --ip-masq=false. Containers join a
#    user-defined bridge network when they can reach each other over it as
#    it is; otherwise every container uses the host's network
#    (deploy/docker-compose.hostnet.yml, on free loopback ports). At the end
#    it stops dockerd and then containerd, each by its PID.
#  - PSD_DOCKER_HOST=unix:///var/run/docker.sock (or any DOCKER_HOST value)
#    uses that engine instead; nothing is started or stopped then, and
#    DOCKER_HOST from the environment is never used otherwise.
# Either way it removes, by ID, every container, network, volume and image it
# created (the images under a tag unique to the run), also when interrupted
# (SIGINT, SIGTERM). One thing is kept on purpose, and only in its own data
# root: the base image debian:bookworm-slim, made with mmdebstrap by
# deploy/docker-base-image.sh (a minute or two) when missing, so the next
# run need not make it again. PSD_DOCKER_TEST_CLEAN=1 removes the whole data
# root at the end. (On an engine named by PSD_DOCKER_HOST, a base image the
# test had to make is removed like the rest.)
#
# Also, as root: installs docker.io, docker-compose, mmdebstrap and python3
# with apt-get when missing.
#
# Settings (environment):
#   PSD_DOCKER_HOST            engine to use instead of starting one
#   PSD_DOCKER_TEST_ROOT       data root of the test's own engine (/var/tmp/psd-docker-test)
#   PSD_DOCKER_TEST_CLEAN=1    remove that data root (the cached base image) at the end
#   PSD_DOCKER_TEST_STORAGE    storage drivers to try, in order ("overlay2 vfs")
#   PSD_DOCKER_TEST_EPOCHS     epochs                       (1)
#   PSD_DOCKER_TEST_TRAIN_LIMIT / _TEST_LIMIT               (6000 / 1000)
#   PSD_DOCKER_TEST_MODE       sync | async | ssp:N         (sync)
#   PSD_DOCKER_TEST_TRAIN_ARGS more psd-train flags         ()
#   PSD_DOCKER_TEST_MIN_ACC    accuracy threshold           (0.60)
#   PSD_DOCKER_TEST_NET        auto | bridge | host         (auto)
#   PSD_DOCKER_TEST_TIMEOUT    seconds allowed for training (600; only against a hang)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/tests/testlib.sh"
RUN_ID=$(printf 'r%s%04x' "$$" "$RANDOM")
IMAGE=psd-test:$RUN_ID
BUILD_IMAGE=psd-test:$RUN_ID-build
PROM_IMAGE=psd-test:$RUN_ID-prometheus
BASE_IMAGE=debian:bookworm-slim
PROJECT=psdtest$RUN_ID
EPOCHS=${PSD_DOCKER_TEST_EPOCHS:-1}
TRAIN_LIMIT=${PSD_DOCKER_TEST_TRAIN_LIMIT:-6000}
TEST_LIMIT=${PSD_DOCKER_TEST_TEST_LIMIT:-1000}
MODE=${PSD_DOCKER_TEST_MODE:-sync}
MIN_ACC=${PSD_DOCKER_TEST_MIN_ACC:-0.60}
NET=${PSD_DOCKER_TEST_NET:-auto}
TRAIN_TIMEOUT=${PSD_DOCKER_TEST_TIMEOUT:-600}
DATA_ROOT=${PSD_DOCKER_TEST_ROOT:-/var/tmp/psd-docker-test}
STORAGE=${PSD_DOCKER_TEST_STORAGE:-overlay2 vfs}

t_tmpdir docker_test
WORK=$TMP
RUNDIR=          # sockets, pidfiles, exec root of our own engine
RUN_DIRS_MADE=
OWN_ENGINE=0
DOCKERD_PID=
CONTAINERD_PID=
BASE_ID=         # the base image, if this run made it (removed at the end on a foreign engine)
COMPOSE=()
COMPOSE_FILES=(-f "$ROOT/deploy/docker-compose.yml")
passed=0
failed=0
t_start=$(date +%s)
# Never an engine from the caller's environment by accident.
unset DOCKER_HOST DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH

log() { printf '[docker_test %4ss] %s\n' "$(( $(date +%s) - t_start ))" "$*"; }
pass() { passed=$((passed + 1)); log "PASS: $*"; }
fail() { failed=$((failed + 1)); log "FAIL: $*"; }
skip() {
    log "SKIP: $*"
    echo "docker_test: skipped: $*"
    exit 77
}

# ---------------------------------------------------------------- what we made
# IDs of what this run created, one per line, kept in files so that command
# substitutions can add to them.
track() { [ -n "$2" ] && echo "$2" >>"$WORK/created.$1"; }
tracked() { [ -f "$WORK/created.$1" ] && sort -u "$WORK/created.$1"; }
# drun SECONDS ARGS...: docker run, bounded, with its container's ID
# recorded (also for --rm ones, in case the run is interrupted before the
# container ends).
drun() {
    local cid=$WORK/cid.$RANDOM$RANDOM rc secs=$1
    shift
    timeout -k 10 "$secs" docker run --cidfile "$cid" "$@"
    rc=$?
    [ -s "$cid" ] && track containers "$(cat "$cid")"
    rm -f "$cid"
    return $rc
}

remove_created() {
    local ids
    # Containers: those recorded, those of our Compose project, and those
    # our builds ran steps in (gone unless a build was interrupted).
    ids=$( { tracked containers
             docker ps -aq --no-trunc --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null
             [ -f "$WORK/build.log" ] && grep -oE 'Running in [0-9a-f]{12}' "$WORK/build.log" | awk '{print $3}'
           } | sort -u)
    for id in $ids; do
        docker container inspect "$id" >/dev/null 2>&1 || continue
        timeout -k 10 120 docker rm -f -v "$id" >/dev/null 2>&1 || log "could not remove container $id"
    done
    ids=$( { tracked networks
             docker network ls -q --no-trunc --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null
           } | sort -u)
    for id in $ids; do
        docker network inspect "$id" >/dev/null 2>&1 || continue
        timeout -k 10 60 docker network rm "$id" >/dev/null 2>&1 || log "could not remove network $id"
    done
    ids=$( { tracked volumes
             docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null
           } | sort -u)
    for id in $ids; do
        docker volume inspect "$id" >/dev/null 2>&1 || continue
        timeout -k 10 60 docker volume rm "$id" >/dev/null 2>&1 || log "could not remove volume $id"
    done
    remove_images
}

# Images this run made: the two it tagged, and every layer image its builds
# committed (the classic builder prints " ---> ID" for each step; an
# interrupted build leaves those untagged), less any that existed before the
# builds (cache hits). Only our own tags are removed: an image someone else
# also tagged stays.
remove_images() {
    local ids id full tag left pass
    ids=$( { tracked images
             docker images -q --no-trunc --filter "reference=psd-test:$RUN_ID*" 2>/dev/null
             [ -f "$WORK/build.log" ] && grep -oE -- '---> [0-9a-f]{12}' "$WORK/build.log" | awk '{print $2}'
           } | sort -u)
    [ -n "$ids" ] || return 0
    # Our tags go whatever the image (a cache hit may be an older image).
    for tag in $(docker images --format '{{.Repository}}:{{.Tag}}' --filter "reference=psd-test:$RUN_ID*" 2>/dev/null); do
        docker rmi --no-prune "$tag" >/dev/null 2>&1
    done
    full=
    for id in $ids; do
        id=$(docker image inspect -f '{{.Id}}' "$id" 2>/dev/null) || continue
        [ -f "$WORK/images.before" ] && grep -qx "$id" "$WORK/images.before" && continue
        full="$full $id"
    done
    # Children before parents: retry what a later removal frees.
    for pass in 1 2 3 4 5 6 7 8; do
        left=
        for id in $full; do
            docker image inspect "$id" >/dev/null 2>&1 || continue
            for tag in $(docker image inspect -f '{{range .RepoTags}}{{.}} {{end}}' "$id" 2>/dev/null); do
                case "$tag" in psd-test:"$RUN_ID"*) docker rmi --no-prune "$tag" >/dev/null 2>&1 ;; esac
            done
            docker image inspect "$id" >/dev/null 2>&1 || continue
            [ -z "$(docker image inspect -f '{{join .RepoTags ""}}' "$id" 2>/dev/null)" ] || continue
            docker rmi --no-prune "$id" >/dev/null 2>&1 || left="$left $id"
        done
        [ -n "$left" ] || break
        full=$left
    done
    [ -z "$left" ] || log "could not remove image(s):$left"
}

# bg_run OUT APPEND CMD...: run CMD, its output to the file OUT (appended
# when APPEND is 1), in a process group of its own and wait for it, so that
# a signal reaches this script at once (not after CMD) and cleanup can end
# CMD and everything it started (BG_PID). (The redirection is CMD's alone:
# a trap that runs during the wait must still write to the test's output.)
BG_PID=
bg_run() {
    local out=$1 append=$2
    shift 2
    if [ "$append" = 1 ]; then setsid "$@" >>"$out" 2>&1 &
    else setsid "$@" >"$out" 2>&1 &
    fi
    BG_PID=$!
    wait "$BG_PID"
    local rc=$?
    BG_PID=
    return $rc
}
stop_bg() {
    [ -n "$BG_PID" ] || return 0
    log "ending the command that was running (process group $BG_PID)"
    kill -TERM -- "-$BG_PID" 2>/dev/null
    for _ in $(seq 1 120); do
        kill -0 "$BG_PID" 2>/dev/null || break
        sleep 0.5
    done
    kill -KILL -- "-$BG_PID" 2>/dev/null
    wait "$BG_PID" 2>/dev/null
    BG_PID=
}

# stop_pid NAME PID: SIGTERM, wait (bounded), then SIGKILL. Only ever a
# process this script started.
stop_pid() {
    local name=$1 pid=$2
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    log "stopping the $name this test started (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 240); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not stop in 120 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
}

stop_engine() {
    stop_pid dockerd "$DOCKERD_PID"
    DOCKERD_PID=
    stop_pid containerd "$CONTAINERD_PID"
    CONTAINERD_PID=
    [ -n "$RUNDIR" ] || return 0
    # dockerd leaves its default network namespace mounted in its exec root.
    awk -v d="$RUNDIR/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
    # Empty directories the daemons make under /run whatever their flags
    # (plugin discovery, shim sockets), if this run made them.
    for d in $RUN_DIRS_MADE; do rmdir "$d" 2>/dev/null; done
}

cleanup() {
    local rc=$?
    trap '' INT TERM # finish cleaning up whatever comes
    trap - EXIT
    stop_bg
    if [ -n "${DOCKER_HOST:-}" ] && docker_ok; then
        log "removing what this run created (containers, networks, volumes, images)"
        remove_created
        if [ "$OWN_ENGINE" = 1 ] && [ "${PSD_DOCKER_TEST_CLEAN:-0}" = 1 ]; then
            docker rmi "$BASE_IMAGE" >/dev/null 2>&1
        elif [ "$OWN_ENGINE" = 0 ] && [ -n "$BASE_ID" ]; then
            docker rmi "$BASE_ID" >/dev/null 2>&1 || log "could not remove $BASE_IMAGE ($BASE_ID)"
        fi
        if [ "$OWN_ENGINE" = 1 ]; then
            docker images -a --format '{{.ID}} {{.Repository}}:{{.Tag}}' >"$WORK/images-left.log" 2>&1
            log "images left in $DATA_ROOT: $(awk '{print $2}' "$WORK/images-left.log" | sort -u | tr '\n' ' ')"
        fi
    fi
    stop_engine
    [ -n "$RUNDIR" ] && rm -rf "$RUNDIR"
    rm -rf "$WORK/tokens" # this run's tokens are never kept, whatever the outcome
    if [ "$OWN_ENGINE" = 1 ] && [ "${PSD_DOCKER_TEST_CLEAN:-0}" = 1 ]; then
        log "PSD_DOCKER_TEST_CLEAN=1: removing $DATA_ROOT"
        rm -rf "$DATA_ROOT"
    fi
    if [ "$rc" = 0 ] || [ "$rc" = 77 ]; then
        rm -rf "$WORK"
    else
        log "logs kept in $WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

docker_ok() { command -v docker >/dev/null 2>&1 && timeout -k 10 20 docker version >/dev/null 2>&1; }

# ---------------------------------------------------------------- tools
[ "$(id -u)" = 0 ] || skip "needs root (starts dockerd, installs packages)"

need_pkgs=()
command -v docker >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v containerd >/dev/null 2>&1 || need_pkgs+=(containerd)
command -v mmdebstrap >/dev/null 2>&1 || need_pkgs+=(mmdebstrap)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    need_pkgs+=(docker-compose)
fi
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    mapfile -t need_pkgs < <(printf '%s\n' "${need_pkgs[@]}" | sort -u)
    log "installing ${need_pkgs[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"; } \
            >"$WORK/apt.log" 2>&1; then
        tail -n 20 "$WORK/apt.log"
        skip "could not install ${need_pkgs[*]} with apt-get"
    fi
fi

if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
else
    skip "neither 'docker compose' nor 'docker-compose' is available"
fi
log "compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || echo '?'))"

# ---------------------------------------------------------------- the engine
# start_containerd: our own containerd, its state and socket in RUNDIR, its
# root in the data root; the host's config and containerd are left alone.
start_containerd() {
    mkdir -p "$DATA_ROOT/containerd" "$RUNDIR/containerd"
    cat >"$RUNDIR/containerd.toml" <<EOF
version = 2
root = "$DATA_ROOT/containerd"
state = "$RUNDIR/containerd"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt"]
[grpc]
  address = "$RUNDIR/containerd.sock"
[debug]
  address = ""
[metrics]
  address = ""
EOF
    containerd --config "$RUNDIR/containerd.toml" >>"$WORK/containerd.log" 2>&1 9>&- &
    CONTAINERD_PID=$!
    for _ in $(seq 1 240); do
        kill -0 "$CONTAINERD_PID" 2>/dev/null || {
            wait "$CONTAINERD_PID" 2>/dev/null
            CONTAINERD_PID=
            tail -n 5 "$WORK/containerd.log" | sed 's/^/    /'
            return 1
        }
        [ -S "$RUNDIR/containerd.sock" ] && return 0
        sleep 0.5
    done
    log "containerd made no socket within 120 s"
    return 1
}

# start_dockerd DRIVER: our own dockerd on our containerd; waits until it
# answers (bounded). Nonzero, with no daemon left, when it does not.
start_dockerd() {
    log "starting dockerd (storage driver $1, data root $DATA_ROOT/docker)"
    # Its own configuration (not /etc/docker/daemon.json), its identity key
    # in its data root (not /etc/docker/key.json).
    printf '{"deprecated-key-path": "%s"}\n' "$DATA_ROOT/key.json" >"$RUNDIR/daemon.json"
    dockerd --config-file "$RUNDIR/daemon.json" \
        --host "unix://$RUNDIR/docker.sock" --pidfile "$RUNDIR/dockerd.pid" \
        --exec-root "$RUNDIR/exec" --data-root "$DATA_ROOT/docker" \
        --containerd "$RUNDIR/containerd.sock" --storage-driver "$1" \
        --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
        >>"$WORK/dockerd.log" 2>&1 9>&- &
    DOCKERD_PID=$!
    for _ in $(seq 1 240); do
        if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
            wait "$DOCKERD_PID" 2>/dev/null
            DOCKERD_PID=
            log "dockerd exited; last lines of its log:"
            tail -n 5 "$WORK/dockerd.log" | sed 's/^/    /'
            return 1
        fi
        timeout -k 10 5 docker version >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    log "dockerd did not answer within 120 s"
    stop_pid dockerd "$DOCKERD_PID"
    DOCKERD_PID=
    return 1
}

# The engine can run a container at all (storage driver, cgroups, runc).
can_run() {
    drun 300 --rm --network "$1" "$BASE_IMAGE" true >>"$WORK/probe.log" 2>&1
}

# Containers on a user-defined bridge network reach each other by name over
# TCP, as the Compose cluster needs, with the host's forwarding and packet
# filter as they are. A real connection is made: perl (in every Debian image)
# listens, bash's /dev/tcp connects; every step is bounded. (A "no" only
# moves the cluster to the host's network; it never fails the test.)
can_bridge() {
    local net rc=1
    net=$(timeout -k 10 60 docker network create "$PROJECT-probe" 2>>"$WORK/probe.log") || return 1
    track networks "$net"
    if drun 300 -d --name "$PROJECT-probe-a" --network "$net" "$BASE_IMAGE" \
            perl -MIO::Socket::INET -e '
                my $s = IO::Socket::INET->new(LocalPort => 7070, Listen => 5, ReuseAddr => 1) or die $!;
                while (my $c = $s->accept) { print $c "ok\n"; close $c }' \
            >>"$WORK/probe.log" 2>&1; then
        drun 120 --rm --network "$net" "$BASE_IMAGE" bash -c '
            for i in $(seq 1 8); do
                timeout 3 bash -c '\''exec 3<>"/dev/tcp/$0/7070" && read -r -t 2 l <&3 && [ "$l" = ok ]'\'' "$1" &&
                    exit 0
                sleep 0.5
            done
            exit 1' probe "$PROJECT-probe-a" >>"$WORK/probe.log" 2>&1
        rc=$?
    fi
    remove_created # the probe's container and network
    return $rc
}

ensure_base_image() {
    docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return 0
    log "$BASE_IMAGE missing: making it with deploy/docker-base-image.sh"
    local t0
    t0=$(date +%s)
    if ! bg_run "$WORK/base-image.log" 0 "$ROOT/deploy/docker-base-image.sh" "$BASE_IMAGE"; then
        tail -n 30 "$WORK/base-image.log"
        return 1
    fi
    BASE_ID=$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE")
    T_BASE=$(( $(date +%s) - t0 ))
    log "base image made in ${T_BASE}s"
}

# Decide how containers are networked on an engine that runs: sets NET_MODE.
pick_network() {
    case "$NET" in
        bridge) can_bridge && { NET_MODE=bridge; return 0; }; return 1 ;;
        host) can_run host && { NET_MODE=host; return 0; }; return 1 ;;
    esac
    if can_bridge; then NET_MODE=bridge; return 0; fi
    log "containers cannot reach each other over a bridge network here; using the host's network"
    if can_run host; then NET_MODE=host; return 0; fi
    return 1
}

T_BASE=0
NET_MODE=
if [ -n "${PSD_DOCKER_HOST:-}" ]; then
    export DOCKER_HOST=$PSD_DOCKER_HOST
    docker_ok || skip "the engine PSD_DOCKER_HOST names ($PSD_DOCKER_HOST) does not answer"
    log "using the engine at $DOCKER_HOST ($(docker version -f '{{.Server.Version}}' 2>/dev/null)), as PSD_DOCKER_HOST says"
    ensure_base_image || { fail "could not make $BASE_IMAGE"; exit 1; }
    pick_network || skip "that engine cannot run a container (see $WORK/probe.log)"
else
    command -v dockerd >/dev/null 2>&1 || skip "dockerd is not installed"
    command -v containerd >/dev/null 2>&1 || skip "containerd is not installed"
    OWN_ENGINE=1
    mkdir -p "$DATA_ROOT"
    # One test at a time per data root.
    exec 9>"$DATA_ROOT/lock"
    if ! flock -n 9; then
        log "another docker_test uses $DATA_ROOT; waiting for it (at most 30 min)"
        flock -w 1800 9 || skip "$DATA_ROOT stays locked by another docker_test"
    fi
    # A dockerd started some other way on this data root (it holds the
    # root's databases) is an engine this test did not start: leave it be.
    for d in /proc/[0-9]*; do
        if [ "$(cat "$d/comm" 2>/dev/null)" = dockerd ] &&
           tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -q -- "--data-root[= ]$DATA_ROOT/docker"; then
            skip "another dockerd (pid ${d#/proc/}) uses $DATA_ROOT; set PSD_DOCKER_TEST_ROOT to another directory, or PSD_DOCKER_HOST to use that engine"
        fi
    done
    # Sockets have a short path limit: a short directory of their own.
    RUNDIR=$(mktemp -d /tmp/psdd.XXXXXX)
    RUN_DIRS_MADE=
    for d in /run/docker/plugins /run/docker /run/containerd/s /run/containerd; do
        [ -e "$d" ] || RUN_DIRS_MADE="$RUN_DIRS_MADE $d"
    done
    export DOCKER_HOST=unix://$RUNDIR/docker.sock
    start_containerd || skip "containerd does not start here (log: $WORK/containerd.log)"
    started=0
    for driver in $STORAGE; do
        start_dockerd "$driver" || continue
        if ensure_base_image && pick_network; then
            started=1
            break
        fi
        log "dockerd with $driver starts but cannot run containers here; trying the next storage driver"
        tail -n 5 "$WORK/probe.log" 2>/dev/null | sed 's/^/    /'
        remove_created
        stop_pid dockerd "$DOCKERD_PID"
        DOCKERD_PID=
    done
    [ "$started" = 1 ] || skip "no storage driver works for dockerd on this kernel (log: $WORK/dockerd.log)"
    log "own engine: dockerd $(docker version -f '{{.Server.Version}}' 2>/dev/null) at $DOCKER_HOST"
fi
log "storage driver: $(docker info -f '{{.Driver}}' 2>/dev/null); container network: $NET_MODE"
# The deployment's health check gives a shard 15 tries 2 s apart; the test
# gives it as many as a hang would take (compose up waits for "healthy"), so
# that a slow machine is never a failure.
cat >"$WORK/compose.test.yml" <<'EOF'
x-health: &health
  test: ["CMD-SHELL", "PS_ROLE=reader PS_TOKEN_FILE=/run/secrets/psd_reader_token psctl --timeout 2000 -s \"127.0.0.1:$${PSD_LISTEN##*:}\" ping"]
  interval: 2s
  timeout: 10s
  retries: 150
  start_period: 5s
services:
  psd-0:
    healthcheck: *health
  psd-1:
    healthcheck: *health
EOF
COMPOSE_FILES+=(-f "$WORK/compose.test.yml")
# free_ports N: N free loopback ports on the host, on one line.
free_ports() {
    python3 -c '
import socket, sys
s = [socket.socket() for _ in range(int(sys.argv[1]))]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))' "$1"
}
if [ "$NET_MODE" = host ]; then
    COMPOSE_FILES+=(-f "$ROOT/deploy/docker-compose.hostnet.yml")
    # Free loopback ports on the host for the two shards, their metrics and
    # the monitoring profile's Prometheus.
    read -r PSD_HOSTNET_PORT0 PSD_HOSTNET_PORT1 PSD_HOSTNET_METRICS0 PSD_HOSTNET_METRICS1 \
        PSD_PROMETHEUS_PORT < <(free_ports 5)
    export PSD_HOSTNET_PORT0 PSD_HOSTNET_PORT1 PSD_HOSTNET_METRICS0 PSD_HOSTNET_METRICS1
    # The shipped host-network scrape config names the default metrics
    # ports (19070, 19071): this run's copy names the ports just picked, and
    # a last override file mounts it in their place (Compose merges volumes
    # by their path in the container).
    sed -e "s/127\.0\.0\.1:19070/127.0.0.1:$PSD_HOSTNET_METRICS0/" \
        -e "s/127\.0\.0\.1:19071/127.0.0.1:$PSD_HOSTNET_METRICS1/" \
        "$ROOT/deploy/prometheus/prometheus-hostnet.yml" >"$WORK/prometheus-hostnet.yml"
    chmod 0644 "$WORK/prometheus-hostnet.yml"
    grep -q "127.0.0.1:$PSD_HOSTNET_METRICS0'" "$WORK/prometheus-hostnet.yml" &&
        grep -q "127.0.0.1:$PSD_HOSTNET_METRICS1'" "$WORK/prometheus-hostnet.yml" ||
        { fail "deploy/prometheus/prometheus-hostnet.yml no longer targets 127.0.0.1:19070 and :19071"; exit 1; }
    cat >"$WORK/compose.hostnet-test.yml" <<EOF
services:
  prometheus-host:
    volumes:
      - $WORK/prometheus-hostnet.yml:/etc/prometheus/prometheus.yml:ro
EOF
    COMPOSE_FILES+=(-f "$WORK/compose.hostnet-test.yml")
    PROM_SERVICE=prometheus-host # the override's Prometheus on the host's network
else
    PROM_SERVICE=prometheus
    read -r PSD_PROMETHEUS_PORT < <(free_ports 1)
fi
export PSD_PROMETHEUS_PORT

# ---------------------------------------------------------------- image
# Builds always use the host's network: apt-get in the build needs the
# machine's package mirror, and that works whatever the bridge can do. The
# build stage gets a tag of its own, so that removing it removes its layers.
export DOCKER_BUILDKIT=0
docker images -aq --no-trunc | sort -u >"$WORK/images.before"
t0=$(date +%s)
log "building $IMAGE from $ROOT (log: $WORK/build.log)"
if bg_run "$WORK/build.log" 0 timeout -k 10 1800 docker build --force-rm --network host \
        --target build -t "$BUILD_IMAGE" --iidfile "$WORK/build.iid" -f "$ROOT/deploy/Dockerfile" "$ROOT"; then
    track images "$(cat "$WORK/build.iid")"
    if bg_run "$WORK/build.log" 1 timeout -k 10 1800 docker build --force-rm --network host \
            -t "$IMAGE" --iidfile "$WORK/image.iid" -f "$ROOT/deploy/Dockerfile" "$ROOT"; then
        track images "$(cat "$WORK/image.iid")"
        built=1
    fi
fi
if [ "${built:-0}" = 1 ]; then
    T_BUILD=$(( $(date +%s) - t0 ))
    pass "image $IMAGE built in ${T_BUILD}s ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
else
    tail -n 40 "$WORK/build.log"
    fail "docker build failed"
    exit 1
fi
# The monitoring profile's Prometheus, from Debian's package (its layers go
# to the same log, so that cleanup finds them).
t0=$(date +%s)
log "building $PROM_IMAGE from deploy/prometheus/Dockerfile"
if bg_run "$WORK/build.log" 1 timeout -k 10 1800 docker build --force-rm --network host \
        -t "$PROM_IMAGE" --iidfile "$WORK/prometheus.iid" -f "$ROOT/deploy/prometheus/Dockerfile" "$ROOT"; then
    track images "$(cat "$WORK/prometheus.iid")"
    T_PROM_BUILD=$(( $(date +%s) - t0 ))
    pass "image $PROM_IMAGE built in ${T_PROM_BUILD}s ($(docker image inspect -f '{{.Size}}' "$PROM_IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
else
    tail -n 40 "$WORK/build.log"
    fail "docker build of deploy/prometheus/Dockerfile failed"
    exit 1
fi

user=$(docker image inspect -f '{{.Config.User}}' "$IMAGE")
case "$user" in
    ''|0|0:*|root|root:*) fail "image runs as root (User='$user')" ;;
    *[!0-9:]*) fail "image user '$user' is not numeric" ;;
    *) pass "image runs as numeric non-root user $user" ;;
esac
if [ -n "$(docker image inspect -f '{{if .Config.Healthcheck}}{{.Config.Healthcheck.Test}}{{end}}' "$IMAGE")" ]; then
    pass "image has a HEALTHCHECK"
else
    fail "image has no HEALTHCHECK"
fi
if drun 300 --rm --network none "$IMAGE" sh -c \
        'ls /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte* >/dev/null &&
         command -v psd && command -v psctl && command -v psd-train' >"$WORK/contents.log" 2>&1; then
    pass "image holds psd, psctl, psd-train and the Fashion-MNIST data"
else
    cat "$WORK/contents.log"
    fail "image is missing a binary or the data set"
fi
# The image is the project's version, the tag the deployment files pin.
VERSION=$(sed -n 's/^project(psd VERSION \([0-9.]*\).*/\1/p' "$ROOT/CMakeLists.txt")
if drun 60 --rm --network none "$IMAGE" psd --version 2>&1 | grep -q "^psd $VERSION "; then
    pass "image's psd is version $VERSION (deploy/ pins psd:$VERSION)"
else
    fail "image's psd --version is not $VERSION"
fi

# ---------------------------------------------------------------- cluster
export PSD_IMAGE=$IMAGE PSD_PROMETHEUS_IMAGE=$PROM_IMAGE PSD_EPOCHS=$EPOCHS PSD_TRAIN_MODE=$MODE
export PSD_TRAIN_LIMIT=$TRAIN_LIMIT PSD_TEST_LIMIT=$TEST_LIMIT
export PSD_TRAIN_ARGS=${PSD_DOCKER_TEST_TRAIN_ARGS:-}
# A long worker timeout: a worker container that starts late is still
# waited for (sync mode), however slow the machine.
export PSD_LOG_LEVEL=info PSD_CHECKPOINT_EVERY=30 PSD_WORKER_TIMEOUT=600
# This run's role tokens (Compose secrets, see deploy/docker-compose.yml).
"$ROOT/deploy/make-tokens.sh" "$WORK/tokens" 2>>"$WORK/tokens.log" || { fail "make-tokens.sh"; exit 1; }
export PSD_TOKEN_DIR=$WORK/tokens
READER=(-e PS_ROLE=reader -e PS_TOKEN_FILE=/run/secrets/psd_reader_token)
# Every Compose command names the monitoring profile: its Prometheus is
# part of this cluster.
compose() { "${COMPOSE[@]}" -p "$PROJECT" "${COMPOSE_FILES[@]}" --profile monitoring "$@"; }
dump_logs() { compose logs --no-color >"$WORK/cluster.log" 2>&1; tail -n 60 "$WORK/cluster.log"; }
# Record the project's containers, networks and volumes as they appear.
track_project() {
    local id
    for id in $(docker ps -aq --no-trunc --filter "label=com.docker.compose.project=$PROJECT"); do track containers "$id"; done
    for id in $(docker network ls -q --no-trunc --filter "label=com.docker.compose.project=$PROJECT"); do track networks "$id"; done
    for id in $(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT"); do track volumes "$id"; done
}

t0=$(date +%s)
log "starting the cluster (--profile monitoring): 2 shards, 2 workers, a Prometheus on 127.0.0.1:$PSD_PROMETHEUS_PORT, mode $MODE, $EPOCHS epoch(s), $TRAIN_LIMIT/$TEST_LIMIT images"
if bg_run "$WORK/compose-up.log" 0 timeout -k 10 600 "${COMPOSE[@]}" -p "$PROJECT" \
        "${COMPOSE_FILES[@]}" --profile monitoring up -d --no-build; then
    track_project
    pass "compose up --profile monitoring: shards healthy, workers and Prometheus started"
else
    track_project
    cat "$WORK/compose-up.log"
    dump_logs
    fail "compose up failed"
    exit 1
fi

cid() { compose ps -q "$1" 2>/dev/null | head -n 1; }
w0=$(cid worker-0)
w1=$(cid worker-1)
if [ -z "$w0" ] || [ -z "$w1" ]; then
    dump_logs
    fail "worker containers not found"
    exit 1
fi
log "waiting for the workers (at most ${TRAIN_TIMEOUT}s)"
if ! bg_run "$WORK/exit-codes" 0 timeout -k 10 "$TRAIN_TIMEOUT" docker wait "$w0" "$w1"; then
    dump_logs
    fail "training did not finish within ${TRAIN_TIMEOUT}s"
    exit 1
fi
codes=$(cat "$WORK/exit-codes")
T_TRAIN=$(( $(date +%s) - t0 ))
docker logs "$w0" >"$WORK/worker-0.log" 2>&1
docker logs "$w1" >"$WORK/worker-1.log" 2>&1
if [ "$(echo "$codes" | tr '\n' ' ')" = "0 0 " ]; then
    pass "both workers exited 0 (cluster up + training: ${T_TRAIN}s)"
else
    dump_logs
    fail "worker exit codes: $(echo "$codes" | tr '\n' ' ')"
fi
sed 's/^/    worker-0| /' "$WORK/worker-0.log" | tail -n 15
acc=$(grep -Eo 'final test accuracy: *[0-9.]+' "$WORK/worker-0.log" | tail -n 1 | awk '{print $NF}')
if [ -z "$acc" ]; then
    fail "worker-0 printed no 'final test accuracy:' line"
elif awk -v a="$acc" -v m="$MIN_ACC" 'BEGIN { exit !(a + 0 >= m + 0) }'; then
    pass "final test accuracy $acc >= $MIN_ACC"
else
    fail "final test accuracy $acc < $MIN_ACC"
fi

# ---------------------------------------------------------------- metrics
# Each shard serves /metrics (the image's PSD_METRICS_LISTEN) only with the
# reader token (PSD_METRICS_AUTH=1 in the Compose file): 401 without it, and
# with it the push-pulls the job made. The job is over: these counters no
# longer move.
if [ "$NET_MODE" = host ]; then
    SERVERS=127.0.0.1:$PSD_HOSTNET_PORT0,127.0.0.1:$PSD_HOSTNET_PORT1
    MPORTS=("$PSD_HOSTNET_METRICS0" "$PSD_HOSTNET_METRICS1")
    INSTANCES=("127.0.0.1:$PSD_HOSTNET_METRICS0" "127.0.0.1:$PSD_HOSTNET_METRICS1")
else
    SERVERS=psd-0:7070,psd-1:7070
    MPORTS=(9070 9070)
    INSTANCES=(psd-0:9070 psd-1:9070)
fi
scrape() { # scrape CONTAINER PORT WITH_TOKEN(0|1)
    docker exec "$1" bash -c 'h=; [ "$1" = 1 ] && h="Authorization: Bearer $(cat /run/secrets/psd_reader_token)"
        exec 3<>"/dev/tcp/127.0.0.1/$0" && printf "GET /metrics HTTP/1.0\r\n%s\r\n\r\n" "$h" >&3 && cat <&3' "$2" "$3"
}
c0=$(cid psd-0)
c1=$(cid psd-1)
SHARDS=("$c0" "$c1")
anon_401=0
direct_pp=0
DIRECT_PP=(0 0)
for i in 0 1; do
    m_anon=$(scrape "${SHARDS[$i]}" "${MPORTS[$i]}" 0 2>&1 | head -n 1)
    m_body=$(scrape "${SHARDS[$i]}" "${MPORTS[$i]}" 1 2>&1)
    pp=$(printf '%s\n' "$m_body" | awk '/^psd_requests_total\{type="push_pull",result="ok"\}/ { print $2 }')
    DIRECT_PP[$i]=${pp:-0}
    case "$m_anon" in
        *" 401 "*) anon_401=$((anon_401 + 1)) ;;
        *) fail "psd-$i's metrics without the reader token: '$m_anon', not 401" ;;
    esac
    if printf '%s\n' "$m_body" | head -n 1 | grep -q ' 200 ' && [ -n "$pp" ]; then
        pass "psd-$i's metrics (reader token): $pp push-pulls answered; 401 without the token"
        direct_pp=$((direct_pp + pp))
    else
        printf '%s\n' "$m_body" | head -n 5
        fail "psd-$i's metrics with the reader token"
    fi
done

# ---------------------------------------------------------------- monitoring
# The monitoring profile's Prometheus scrapes both shards every 5 s with the
# reader token (deploy/prometheus/). Asked through its HTTP API, published
# on 127.0.0.1:$PSD_PROMETHEUS_PORT, it must show:
#  (a) both shards as targets that are up (scraped with no error);
#  (b) the push-pulls the job made: the job's shape (workers x steps x
#      epochs x parameter blocks), the trainers' own counts (their "client
#      metrics" lines) and the shards' counters read directly must all
#      agree, and Prometheus's last samples must equal them, per shard and
#      in all, in psd_requests_total and in the latency histogram's count;
#  (c) that its scrapes carried the reader token: the shards answer 401
#      without it (above) and only the reader token opens /metrics
#      (metrics_test checks that the admin token does not), Prometheus's
#      scrapes of them succeed, its loaded configuration authenticates with
#      the file /run/secrets/psd_reader_token, and the only secret in its
#      container is this run's reader token.
# The job is over, so only scrapes still to come can change what
# Prometheus answers: each answer is polled until it is the expected one,
# with a bound that only turns a hang into a failure.
t0=$(date +%s)
cat >"$WORK/prom.py" <<'PY'
import json, sys, urllib.parse, urllib.request

port, cmd = sys.argv[1], sys.argv[2]
base = "http://127.0.0.1:%s" % port

def api(path, **q):
    url = base + path + ("?" + urllib.parse.urlencode(q) if q else "")
    d = json.load(urllib.request.urlopen(url, timeout=10))
    if d.get("status") != "success":
        raise RuntimeError("%s: %s" % (path, d.get("error")))
    return d["data"]

try:
    if cmd == "ready":      # exit 0 once Prometheus says it is ready
        urllib.request.urlopen(base + "/-/ready", timeout=5)
    elif cmd == "targets":  # targets JOB: "health scrapeUrl lastError" per active target
        for t in api("/api/v1/targets", state="active")["activeTargets"]:
            if t["labels"].get("job") == sys.argv[3]:
                print(t["health"], t["scrapeUrl"], t["lastError"] or "-")
    elif cmd == "query":    # query PROMQL: the first sample's value, or "none"
        res = api("/api/v1/query", query=sys.argv[3])["result"]
        if not res:
            print("none")
        else:
            v = float(res[0]["value"][1])
            print(int(v) if v == int(v) else v)
    elif cmd == "config":   # the configuration Prometheus loaded (YAML)
        print(api("/api/v1/status/config")["yaml"])
except Exception as e:
    print("error: %s" % e)
    sys.exit(1)
PY
prom() { python3 "$WORK/prom.py" "$PSD_PROMETHEUS_PORT" "$@"; }
# prom_wait WHAT CMD...: run CMD every 0.5 s until it succeeds; 1 after
# T_WAIT seconds (a hang).
prom_wait() {
    local what=$1 deadline=$((SECONDS + T_WAIT))
    shift
    until "$@"; do
        if ((SECONDS > deadline)); then
            log "gave up after ${T_WAIT}s waiting for $what"
            return 1
        fi
        sleep 0.5
    done
}
pc=$(cid "$PROM_SERVICE")
prom_ok=0
if [ -z "$pc" ]; then
    fail "the monitoring profile's $PROM_SERVICE container was not found"
elif prom_wait "Prometheus to be ready on 127.0.0.1:$PSD_PROMETHEUS_PORT" prom ready; then
    prom_ok=1
else
    docker logs --tail 20 "$pc" 2>&1 | sed 's/^/    prometheus| /'
    fail "Prometheus of the monitoring profile does not answer on 127.0.0.1:$PSD_PROMETHEUS_PORT"
fi

if [ "$prom_ok" = 1 ]; then
    # (a) Both shards are targets, and up.
    targets_up() { [ "$(prom targets psd | grep -c '^up ')" = 2 ]; }
    if prom_wait "both shards up in Prometheus" targets_up; then
        targets_ok=1
        pass "Prometheus: both shards are up targets ($(prom targets psd | awk '{print $2}' | sort | tr '\n' ' '))"
    else
        targets_ok=0
        prom targets psd | sed 's/^/    target: /'
        fail "Prometheus: the shards are not both up targets"
    fi

    # (b) What the job did, counted three ways, then as Prometheus saw it.
    steps=$(sed -n 's/.* \([0-9][0-9]*\) steps\/epoch.*/\1/p' "$WORK/worker-0.log" | head -n 1)
    tensor_list=$(docker exec "${READER[@]}" "$c0" psctl --timeout 60000 -s "$SERVERS" list 2>&1)
    blocks=$(printf '%s\n' "$tensor_list" | awk -v b="${PSD_BLOCK_SIZE:-262144}" \
        '$3 ~ /^[0-9]+$/ { n += int(($3 + b - 1) / b) } END { print n + 0 }')
    job_pp=$(( 2 * ${steps:-0} * EPOCHS * blocks ))
    client_pp=$(cat "$WORK/worker-0.log" "$WORK/worker-1.log" |
        sed -n 's/^client metrics: .* push_pull_requests=\([0-9]*\) .*/\1/p' | awk '{ n += $1 } END { print n + 0 }')
    if [ "$job_pp" -gt 0 ] && [ "$client_pp" = "$job_pp" ] && [ "$direct_pp" = "$job_pp" ]; then
        pass "the job made $job_pp push-pulls (2 workers x $steps steps x $EPOCHS epoch(s) x $blocks blocks), as the trainers and the shards count them"
    else
        printf '%s\n' "$tensor_list" | sed 's/^/    list: /'
        fail "push-pulls: job shape 2 x ${steps:-?} steps x $EPOCHS epoch(s) x $blocks blocks = $job_pp, trainers $client_pp, shards $direct_pp"
    fi
    # prom_is PROMQL VALUE: Prometheus answers VALUE (polled).
    prom_is() {
        local got
        got=$(prom query "$1")
        echo "$got" >"$WORK/prom-last"
        [ "$got" = "$2" ]
    }
    prom_check() { # prom_check PROMQL VALUE
        if prom_wait "Prometheus: $1 = $2" prom_is "$1" "$2"; then
            pass "Prometheus: $1 = $2"
        else
            fail "Prometheus: $1 = $(cat "$WORK/prom-last"), not $2"
        fi
    }
    if [ "$targets_ok" = 1 ]; then
        prom_check 'sum(psd_requests_total{job="psd",type="push_pull"})' "$job_pp"
        for i in 0 1; do
            prom_check "sum(psd_requests_total{job=\"psd\",type=\"push_pull\",result=\"ok\",instance=\"${INSTANCES[$i]}\"})" "${DIRECT_PP[$i]}"
        done
        prom_check 'sum(psd_request_duration_seconds_count{job="psd",type="push_pull"})' "$job_pp"
    else
        fail "Prometheus's counts not checked: its scrapes of the shards fail"
    fi

    # (c) The reader token.
    cfg=$(prom config)
    secrets=$(docker inspect -f '{{range .Mounts}}{{.Source}} {{.Destination}}{{"\n"}}{{end}}' "$pc" |
        awk '$2 ~ "^/run/secrets/"')
    secret_dests=$(printf '%s\n' "$secrets" | awk 'NF { print $2 }' | sort | tr '\n' ' ')
    secret_src=$(printf '%s\n' "$secrets" | awk '$2 == "/run/secrets/psd_reader_token" { print $1 }')
    why=
    [ "$anon_401" = 2 ] || why="$why; a shard served /metrics without the token"
    [ "${targets_ok:-0}" = 1 ] || why="$why; the scrapes did not all succeed"
    printf '%s\n' "$cfg" | grep -q 'credentials_file: /run/secrets/psd_reader_token' ||
        why="$why; the loaded configuration does not authenticate with /run/secrets/psd_reader_token"
    [ "$secret_dests" = "/run/secrets/psd_reader_token " ] ||
        why="$why; the container's secrets are '$secret_dests', not the reader token alone"
    [ -n "$secret_src" ] && cmp -s "$secret_src" "$WORK/tokens/reader.token" ||
        why="$why; its /run/secrets/psd_reader_token is not this run's reader token"
    if [ -z "$why" ]; then
        pass "Prometheus scraped with the reader token (the shards' only way in: 401 without it)"
    else
        printf '%s\n' "$cfg" | sed -n '/scrape_configs/,$p' | head -n 20 | sed 's/^/    config: /'
        fail "Prometheus's scrapes and the reader token${why}"
    fi
fi
T_MON=$(( $(date +%s) - t0 ))

# ---------------------------------------------------------------- shutdown
# `docker stop` sends SIGTERM (through tini) and waits; psd must write its
# final checkpoint and exit 0 before the SIGKILL deadline. Started again,
# each shard restores that checkpoint from its volume: the tensor list must be
# the same as before the stop. (SERVERS, c0 and c1: see "metrics".)
tensors_before=$(docker exec "${READER[@]}" "$c0" psctl --timeout 60000 -s "$SERVERS" list 2>&1)
for shard in psd-0 psd-1; do
    c=$(cid "$shard")
    [ -n "$c" ] || { fail "$shard container not found"; continue; }
    vol=$(docker inspect -f '{{range .Mounts}}{{if eq .Destination "/data"}}{{.Name}}{{end}}{{end}}' "$c")
    t0=$(date +%s)
    docker stop -t 120 "$c" >/dev/null
    dt=$(( $(date +%s) - t0 ))
    docker logs "$c" >"$WORK/$shard.log" 2>&1
    code=$(docker inspect -f '{{.State.ExitCode}}' "$c")
    if [ "$code" = 0 ] && grep -q "final checkpoint" "$WORK/$shard.log"; then
        pass "docker stop $shard: exit code 0 after ${dt}s, final checkpoint written"
    else
        tail -n 20 "$WORK/$shard.log"
        fail "docker stop $shard: exit code $code after ${dt}s"
    fi
    if [ -z "$vol" ]; then
        fail "$shard has no volume at /data"
        continue
    fi
    files=$(drun 300 --rm --network none -v "$vol:/data:ro" "$IMAGE" \
                find /data -type f -size +0 -printf '%s %p\n' 2>&1)
    if [ -n "$files" ]; then
        pass "$shard left a checkpoint in volume $vol: $(echo "$files" | tr '\n' ' ')"
    else
        tail -n 20 "$WORK/$shard.log"
        fail "$shard left no checkpoint file in volume $vol"
    fi
done

if [ -n "$c0" ] && [ -n "$c1" ]; then
    docker start "$c0" "$c1" >/dev/null
    # Wait for the state (both healthy), bounded only against a hang.
    both_healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$c0" "$c1" | sort -u)" = healthy ]; }
    healthy=0
    t_wait_until "the restarted shards to be healthy" both_healthy && healthy=1
    tensors_after=$(docker exec "${READER[@]}" "$c0" psctl --timeout 60000 -s "$SERVERS" list 2>&1)
    if [ "$healthy" = 1 ] && [ -n "$tensors_before" ] && [ "$tensors_before" = "$tensors_after" ]; then
        pass "restarted shards restored their checkpoints ($(echo "$tensors_after" | wc -l) tensors, same as before the stop)"
    else
        printf 'before:\n%s\nafter:\n%s\n' "$tensors_before" "$tensors_after"
        docker logs --tail 10 "$c0"
        fail "restarted shards (healthy=$healthy) do not list the tensors they had before the stop"
    fi
fi

T_TOTAL=$(( $(date +%s) - t_start ))
log "timings: base image ${T_BASE}s (0 = already there), psd image ${T_BUILD}s, Prometheus image ${T_PROM_BUILD}s, cluster+training ${T_TRAIN}s, monitoring checks ${T_MON}s, total ${T_TOTAL}s"
echo "docker_test: $passed passed, $failed failed"
[ "$failed" = 0 ]
