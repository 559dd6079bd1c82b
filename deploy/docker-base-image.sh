#!/usr/bin/env bash
# Build a local base image tagged debian:bookworm-slim when the Docker engine
# does not have one (this environment cannot pull from an image registry).
#
# The root filesystem is made with mmdebstrap from THIS machine's own apt
# sources (read at run time from /etc/apt), then loaded with `docker import`.
# It mirrors what the official bookworm-slim image is: the minbase variant with
# man pages, docs and translations left out.
#
# Usage: deploy/docker-base-image.sh [--force] [IMAGE_TAG]
#   IMAGE_TAG  defaults to debian:bookworm-slim
#   --force    rebuild even when the image already exists
# Env:
#   PSD_BASE_SOURCES  space-separated list of apt source files to use instead of
#                     the ones discovered under /etc/apt
#   DOCKER            docker client to use (default: docker)
set -euo pipefail

force=0
tag=debian:bookworm-slim
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) tag=$arg ;;
    esac
done
DOCKER=${DOCKER:-docker}
suite=bookworm

log() { printf '[base-image] %s\n' "$*" >&2; }

if [ "$force" = 0 ] && $DOCKER image inspect "$tag" >/dev/null 2>&1; then
    log "$tag already present; nothing to do (use --force to rebuild)"
    exit 0
fi

if ! command -v mmdebstrap >/dev/null 2>&1; then
    log "mmdebstrap missing; installing it with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
fi

# Collect the enabled apt source files that describe Debian $suite. Files for
# third-party repositories (other keyrings, other suites) are left out: the
# image must only need what Debian itself ships.
sources=()
if [ -n "${PSD_BASE_SOURCES:-}" ]; then
    # shellcheck disable=SC2206
    sources=($PSD_BASE_SOURCES)
else
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # only files with at least one active entry for the suite
        if grep -Ev '^[[:space:]]*#' "$f" | grep -qE "(^|[[:space:]])${suite}([-/][a-z]+)?([[:space:]]|$)"; then
            # third-party keyrings would not exist inside the image
            if grep -Ev '^[[:space:]]*#' "$f" | grep -i 'signed-by' | grep -qv 'debian-archive-keyring'; then
                log "skipping $f (not signed by the Debian archive keyring)"
                continue
            fi
            sources+=("$f")
        fi
    done
fi
if [ "${#sources[@]}" -eq 0 ]; then
    log "no apt source for '$suite' found under /etc/apt; set PSD_BASE_SOURCES"
    exit 1
fi
log "apt sources: ${sources[*]}"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# mmdebstrap treats an argument that is an existing file as sources.list
# content (deb822 when the name ends in .sources), so pass copies with the
# right suffix.
mirrors=()
i=0
for f in "${sources[@]}"; do
    i=$((i + 1))
    case "$f" in
        *.sources) cp "$f" "$tmp/src$i.sources"; mirrors+=("$tmp/src$i.sources") ;;
        *) cp "$f" "$tmp/src$i.list"; mirrors+=("$tmp/src$i.list") ;;
    esac
done

start=$(date +%s)
log "running mmdebstrap (variant minbase) ..."
mmdebstrap \
    --variant=minbase \
    --mode=auto \
    --format=tar \
    --aptopt='Acquire::Languages "none"' \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log "$1"/var/log/apt/*' \
    "$suite" "$tmp/rootfs.tar" "${mirrors[@]}"

log "importing as $tag"
$DOCKER import \
    --change 'CMD ["bash"]' \
    --change 'ENV LANG=C.UTF-8' \
    "$tmp/rootfs.tar" "$tag" >/dev/null
log "done in $(( $(date +%s) - start ))s: $($DOCKER image inspect -f '{{.Id}} {{.Size}}' "$tag")"
