#!/usr/bin/env bash
# Deployment test: builds the psd image, runs the Compose cluster (2 shards,
# 2 workers) for a short training job against a real Docker engine, then
# stops the shards the way `docker stop` does and checks they shut down
# cleanly and left a checkpoint in their volume.
#
# Exit codes: 0 all checks passed, 1 a check failed, 77 skipped (no usable
# Docker engine here; the reason is printed).
#
# What it does to the machine, as root:
#  - installs docker.io, docker-compose and mmdebstrap with apt-get when missing;
#  - starts dockerd when none answers (overlay2, else vfs; each first with
#    iptables and the default bridge, else without them, in which case the
#    Compose file runs with deploy/docker-compose.hostnet.yml), and stops it
#    again at the end, by PID, only if it started it;
#  - builds debian:bookworm-slim with deploy/docker-base-image.sh when missing;
#  - builds psd:test (and psd:test-build, the build stage, kept as the layer
#    cache for the next run) and removes the images of the previous run;
#  - removes its containers, network and volumes at the end.
#
# Settings (environment):
#   PSD_DOCKER_TEST_IMAGE      image tag to build           (psd:test)
#   PSD_DOCKER_TEST_EPOCHS     epochs                       (1)
#   PSD_DOCKER_TEST_TRAIN_LIMIT / _TEST_LIMIT               (6000 / 1000)
#   PSD_DOCKER_TEST_MODE       sync | async | ssp:N         (sync)
#   PSD_DOCKER_TEST_TRAIN_ARGS more psd-train flags         ()
#   PSD_DOCKER_TEST_MIN_ACC    accuracy threshold           (0.60)
#   PSD_DOCKER_TEST_NET        auto | bridge | host         (auto)
#   PSD_DOCKER_TEST_CLEAN=1    also remove the built images at the end
#   PSD_DOCKER_TEST_TIMEOUT    seconds allowed for training (300)
#   PSD_DOCKER_TEST_DOCKERD_FLAGS  try only these dockerd flags when starting one
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=${PSD_DOCKER_TEST_IMAGE:-psd:test}
BUILD_IMAGE=${IMAGE}-build
BASE_IMAGE=debian:bookworm-slim
PROJECT=psdtest
EPOCHS=${PSD_DOCKER_TEST_EPOCHS:-1}
TRAIN_LIMIT=${PSD_DOCKER_TEST_TRAIN_LIMIT:-6000}
TEST_LIMIT=${PSD_DOCKER_TEST_TEST_LIMIT:-1000}
MODE=${PSD_DOCKER_TEST_MODE:-sync}
MIN_ACC=${PSD_DOCKER_TEST_MIN_ACC:-0.60}
NET=${PSD_DOCKER_TEST_NET:-auto}
TRAIN_TIMEOUT=${PSD_DOCKER_TEST_TIMEOUT:-300}
DOCKER_SOCK=/var/run/docker.sock

WORK=$(mktemp -d /tmp/psd-docker-test.XXXXXX)
DOCKERD_PID=
COMPOSE=()
COMPOSE_FILES=(-f "$ROOT/deploy/docker-compose.yml")
passed=0
failed=0
t_start=$(date +%s)

log() { printf '[docker_test %4ss] %s\n' "$(( $(date +%s) - t_start ))" "$*"; }
pass() { passed=$((passed + 1)); log "PASS: $*"; }
fail() { failed=$((failed + 1)); log "FAIL: $*"; }
skip() {
    log "SKIP: $*"
    echo "docker_test: skipped: $*"
    exit 77
}

# ---------------------------------------------------------------- cleanup
stop_dockerd() {
    [ -n "$DOCKERD_PID" ] || return 0
    if kill -0 "$DOCKERD_PID" 2>/dev/null; then
        log "stopping the dockerd this test started (pid $DOCKERD_PID)"
        kill -TERM "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 1 60); do
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$DOCKERD_PID" 2>/dev/null; then
            log "dockerd did not stop in 30s; sending SIGKILL"
            kill -KILL "$DOCKERD_PID" 2>/dev/null
        fi
        wait "$DOCKERD_PID" 2>/dev/null
    fi
    DOCKERD_PID=
}

# dockerd with iptables turns on IP forwarding and, when it had to, sets the
# FORWARD policy to DROP; neither is undone when it exits. Put both back as
# they were when this test started the daemon.
save_host_net() {
    SAVED_IP_FORWARD=$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null)
    SAVED_FORWARD_POLICY=$(iptables -S FORWARD 2>/dev/null | awk '$1 == "-P" { print $3 }')
}
restore_host_net() {
    if [ -n "${SAVED_FORWARD_POLICY:-}" ] &&
       [ "$(iptables -S FORWARD 2>/dev/null | awk '$1 == "-P" { print $3 }')" != "$SAVED_FORWARD_POLICY" ]; then
        iptables -P FORWARD "$SAVED_FORWARD_POLICY" 2>/dev/null || true
    fi
    if [ -n "${SAVED_IP_FORWARD:-}" ] &&
       [ "$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null)" != "$SAVED_IP_FORWARD" ]; then
        echo "$SAVED_IP_FORWARD" >/proc/sys/net/ipv4/ip_forward 2>/dev/null || true
    fi
}

compose_down() {
    [ "${#COMPOSE[@]}" -gt 0 ] || return 0
    timeout -k 10 180 "${COMPOSE[@]}" -p "$PROJECT" "${COMPOSE_FILES[@]}" down -v --remove-orphans --timeout 30 \
        >>"$WORK/compose-down.log" 2>&1 || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if docker_ok; then
        compose_down
        if [ "${PSD_DOCKER_TEST_CLEAN:-0}" = 1 ]; then
            docker rmi "$IMAGE" "$BUILD_IMAGE" >/dev/null 2>&1 || true
        fi
    fi
    if [ -n "$DOCKERD_PID" ]; then
        stop_dockerd
        restore_host_net
    fi
    if [ "$rc" = 0 ]; then
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
command -v mmdebstrap >/dev/null 2>&1 || need_pkgs+=(mmdebstrap)
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

# ---------------------------------------------------------------- dockerd
# start_dockerd ARGS...: start a daemon on the default socket and wait until
# it answers. Returns nonzero (and leaves no daemon running) when it does not.
start_dockerd() {
    log "starting dockerd $*"
    dockerd --host="unix://$DOCKER_SOCK" "$@" >>"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 1 120); do
        if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
            wait "$DOCKERD_PID" 2>/dev/null
            DOCKERD_PID=
            restore_host_net
            log "dockerd exited; last lines of its log:"
            tail -n 5 "$WORK/dockerd.log" | sed 's/^/    /'
            return 1
        fi
        timeout -k 10 5 docker version >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    log "dockerd did not answer within 60s"
    stop_dockerd
    restore_host_net
    return 1
}

# The engine can run a container at all (storage driver, cgroups, runc).
can_run() {
    timeout -k 10 120 docker run --rm --network "$1" "$BASE_IMAGE" true >>"$WORK/probe.log" 2>&1
}

# Containers on a user-defined bridge network reach each other by name over
# TCP, as the Compose cluster needs. Names may resolve while packets are still
# dropped (for example by a FORWARD policy of DROP left from an earlier dockerd
# with iptables, when this one runs without), so a real connection is made:
# perl (in every Debian image) listens, bash's /dev/tcp connects.
can_bridge() {
    local net=${PROJECT}-probe rc=1
    docker rm -f "${net}-a" "${net}-b" >/dev/null 2>&1
    docker network rm "$net" >/dev/null 2>&1
    timeout -k 10 60 docker network create "$net" >>"$WORK/probe.log" 2>&1 || return 1
    if timeout -k 10 120 docker run -d --name "${net}-a" --network "$net" "$BASE_IMAGE" \
            perl -MIO::Socket::INET -e '
                my $s = IO::Socket::INET->new(LocalPort => 7070, Listen => 5, ReuseAddr => 1) or die $!;
                while (my $c = $s->accept) { print $c "ok\n"; close $c }' \
            >>"$WORK/probe.log" 2>&1; then
        # every step is bounded inside the container too: bash's connect would
        # otherwise wait for the kernel's SYN timeout
        timeout -k 5 60 docker run --rm --name "${net}-b" --network "$net" "$BASE_IMAGE" bash -c '
            for i in $(seq 1 10); do
                timeout 3 bash -c '\''exec 3<>"/dev/tcp/$0/7070" && read -r -t 2 l <&3 && [ "$l" = ok ]'\'' "$1" &&
                    exit 0
                sleep 0.5
            done
            exit 1' probe "${net}-a" >>"$WORK/probe.log" 2>&1
        rc=$?
    fi
    docker rm -f "${net}-a" "${net}-b" >/dev/null 2>&1
    docker network rm "$net" >/dev/null 2>&1
    return $rc
}

ensure_base_image() {
    docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return 0
    log "$BASE_IMAGE missing: building it with deploy/docker-base-image.sh"
    local t0
    t0=$(date +%s)
    if ! "$ROOT/deploy/docker-base-image.sh" "$BASE_IMAGE" >"$WORK/base-image.log" 2>&1; then
        tail -n 30 "$WORK/base-image.log"
        return 1
    fi
    T_BASE=$(( $(date +%s) - t0 ))
    log "base image built in ${T_BASE}s"
}

# Decide how containers are networked on an engine that runs: sets NET_MODE.
pick_network() {
    case "$NET" in
        bridge) can_bridge && { NET_MODE=bridge; return 0; }; return 1 ;;
        host) can_run host && { NET_MODE=host; return 0; }; return 1 ;;
    esac
    if can_bridge; then NET_MODE=bridge; return 0; fi
    if can_run host; then NET_MODE=host; return 0; fi
    return 1
}

T_BASE=0
NET_MODE=
if docker_ok; then
    log "using the running Docker engine ($(docker version -f '{{.Server.Version}}' 2>/dev/null))"
    ensure_base_image || { fail "could not build $BASE_IMAGE"; exit 1; }
    pick_network || skip "the running Docker engine cannot run a container (see $WORK/probe.log)"
else
    command -v dockerd >/dev/null 2>&1 || skip "dockerd is not installed"
    # Candidate daemon configurations, most capable first.
    candidates=(
        "--storage-driver=overlay2"
        "--storage-driver=overlay2 --iptables=false --ip-masq=false --bridge=none"
        "--storage-driver=vfs"
        "--storage-driver=vfs --iptables=false --ip-masq=false --bridge=none"
    )
    if [ -n "${PSD_DOCKER_TEST_DOCKERD_FLAGS:-}" ]; then
        candidates=("$PSD_DOCKER_TEST_DOCKERD_FLAGS")
    fi
    started=0
    save_host_net
    for flags in "${candidates[@]}"; do
        # shellcheck disable=SC2086
        start_dockerd $flags || continue
        if ensure_base_image && pick_network; then
            started=1
            DOCKERD_FLAGS=$flags
            break
        fi
        log "dockerd $flags starts but cannot run containers here; trying the next configuration"
        tail -n 5 "$WORK/probe.log" 2>/dev/null | sed 's/^/    /'
        stop_dockerd
        restore_host_net
    done
    [ "$started" = 1 ] || skip "no dockerd configuration works on this kernel (log: $WORK/dockerd.log)"
    log "dockerd running with: $DOCKERD_FLAGS"
fi
log "storage driver: $(docker info -f '{{.Driver}}' 2>/dev/null); container network: $NET_MODE"
if [ "$NET_MODE" = host ]; then
    COMPOSE_FILES+=(-f "$ROOT/deploy/docker-compose.hostnet.yml")
fi

# ---------------------------------------------------------------- image
# Builds always use the host's network: apt-get in the build needs the
# machine's package mirror, and that works whatever the bridge can do.
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}
old_image=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null)
old_build=$(docker image inspect -f '{{.Id}}' "$BUILD_IMAGE" 2>/dev/null)
t0=$(date +%s)
log "building $IMAGE from $ROOT (log: $WORK/build.log)"
if timeout -k 10 1200 docker build --network host --target build -t "$BUILD_IMAGE" \
        -f "$ROOT/deploy/Dockerfile" "$ROOT" >"$WORK/build.log" 2>&1 &&
   timeout -k 10 1200 docker build --network host -t "$IMAGE" \
        -f "$ROOT/deploy/Dockerfile" "$ROOT" >>"$WORK/build.log" 2>&1; then
    T_BUILD=$(( $(date +%s) - t0 ))
    pass "image $IMAGE built in ${T_BUILD}s ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
else
    tail -n 40 "$WORK/build.log"
    fail "docker build failed"
    exit 1
fi
# The previous run's images are superseded: drop them (their shared layers
# stay as long as the new images use them).
for old in "$old_image" "$old_build"; do
    if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ] &&
       [ "$old" != "$(docker image inspect -f '{{.Id}}' "$BUILD_IMAGE")" ]; then
        docker rmi "$old" >/dev/null 2>&1 || true
    fi
done

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
if docker run --rm --network none "$IMAGE" sh -c \
        'ls /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte* >/dev/null &&
         command -v psd && command -v psctl && command -v psd-train' >"$WORK/contents.log" 2>&1; then
    pass "image holds psd, psctl, psd-train and the Fashion-MNIST data"
else
    cat "$WORK/contents.log"
    fail "image is missing a binary or the data set"
fi

# ---------------------------------------------------------------- cluster
export PSD_IMAGE=$IMAGE PSD_EPOCHS=$EPOCHS PSD_TRAIN_MODE=$MODE
export PSD_TRAIN_LIMIT=$TRAIN_LIMIT PSD_TEST_LIMIT=$TEST_LIMIT
export PSD_TRAIN_ARGS=${PSD_DOCKER_TEST_TRAIN_ARGS:-}
export PSD_LOG_LEVEL=info PSD_CHECKPOINT_EVERY=30
# This run's role tokens (Compose secrets, see deploy/docker-compose.yml).
"$ROOT/deploy/make-tokens.sh" "$WORK/tokens" 2>>"$WORK/tokens.log" || { fail "make-tokens.sh"; exit 1; }
export PSD_TOKEN_DIR=$WORK/tokens
READER=(-e PS_ROLE=reader -e PS_TOKEN_FILE=/run/secrets/psd_reader_token)
compose() { "${COMPOSE[@]}" -p "$PROJECT" "${COMPOSE_FILES[@]}" "$@"; }
dump_logs() { compose logs --no-color >"$WORK/cluster.log" 2>&1; tail -n 60 "$WORK/cluster.log"; }

compose_down # leftovers of an interrupted run
t0=$(date +%s)
log "starting the cluster: 2 shards, 2 workers, mode $MODE, $EPOCHS epoch(s), $TRAIN_LIMIT/$TEST_LIMIT images"
if timeout -k 10 300 "${COMPOSE[@]}" -p "$PROJECT" "${COMPOSE_FILES[@]}" up -d --no-build \
        >"$WORK/compose-up.log" 2>&1; then
    pass "compose up: shards healthy, workers started"
else
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
if ! codes=$(timeout -k 10 "$TRAIN_TIMEOUT" docker wait "$w0" "$w1"); then
    dump_logs
    fail "training did not finish within ${TRAIN_TIMEOUT}s"
    exit 1
fi
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

# ---------------------------------------------------------------- shutdown
# `docker stop` sends SIGTERM (through tini) and waits; psd must write its
# final checkpoint and exit 0 well before the SIGKILL deadline. Started again,
# each shard restores that checkpoint from its volume: the tensor list must be
# the same as before the stop.
if [ "$NET_MODE" = host ]; then
    SERVERS=127.0.0.1:${PSD_HOSTNET_PORT0:-17070},127.0.0.1:${PSD_HOSTNET_PORT1:-17071}
else
    SERVERS=psd-0:7070,psd-1:7070
fi
has_data_dir=0
if docker run --rm --network none "$IMAGE" psd --help 2>&1 | grep -q -- '--data-dir'; then
    has_data_dir=1
else
    log "NOTE: 'psd --help' does not mention --data-dir: checkpoint checks skipped"
fi
c0=$(cid psd-0)
c1=$(cid psd-1)
tensors_before=$(docker exec "${READER[@]}" "$c0" psctl --timeout 10000 -s "$SERVERS" list 2>&1)
for shard in psd-0 psd-1; do
    c=$(cid "$shard")
    [ -n "$c" ] || { fail "$shard container not found"; continue; }
    vol=$(docker inspect -f '{{range .Mounts}}{{if eq .Destination "/data"}}{{.Name}}{{end}}{{end}}' "$c")
    t0=$(date +%s)
    docker stop -t 60 "$c" >/dev/null
    dt=$(( $(date +%s) - t0 ))
    docker logs "$c" >"$WORK/$shard.log" 2>&1
    code=$(docker inspect -f '{{.State.ExitCode}}' "$c")
    if [ "$code" = 0 ]; then
        pass "docker stop $shard: exit code 0 after ${dt}s"
    else
        tail -n 20 "$WORK/$shard.log"
        fail "docker stop $shard: exit code $code after ${dt}s"
    fi
    [ "$has_data_dir" = 1 ] || continue
    if [ -z "$vol" ]; then
        fail "$shard has no volume at /data"
        continue
    fi
    files=$(docker run --rm --network none -v "$vol:/data:ro" "$IMAGE" \
                find /data -type f -size +0 -printf '%s %p\n' 2>&1)
    if [ -n "$files" ]; then
        pass "$shard left a checkpoint in volume $vol: $(echo "$files" | tr '\n' ' ')"
    else
        tail -n 20 "$WORK/$shard.log"
        fail "$shard left no checkpoint file in volume $vol"
    fi
done

if [ "$has_data_dir" = 1 ] && [ -n "$c0" ] && [ -n "$c1" ]; then
    docker start "$c0" "$c1" >/dev/null
    healthy=0
    for _ in $(seq 1 60); do
        if [ "$(docker inspect -f '{{.State.Health.Status}}' "$c0" "$c1" | sort -u)" = healthy ]; then
            healthy=1
            break
        fi
        sleep 1
    done
    tensors_after=$(docker exec "${READER[@]}" "$c0" psctl --timeout 10000 -s "$SERVERS" list 2>&1)
    if [ "$healthy" = 1 ] && [ -n "$tensors_before" ] && [ "$tensors_before" = "$tensors_after" ]; then
        pass "restarted shards restored their checkpoints ($(echo "$tensors_after" | wc -l) tensors, same as before the stop)"
    else
        printf 'before:\n%s\nafter:\n%s\n' "$tensors_before" "$tensors_after"
        docker logs --tail 10 "$c0"
        fail "restarted shards (healthy=$healthy) do not list the tensors they had before the stop"
    fi
fi

compose_down
T_TOTAL=$(( $(date +%s) - t_start ))
log "timings: base image ${T_BASE}s (0 = already there), psd image ${T_BUILD}s, cluster+training ${T_TRAIN}s, total ${T_TOTAL}s"
echo "docker_test: $passed passed, $failed failed"
[ "$failed" = 0 ]
