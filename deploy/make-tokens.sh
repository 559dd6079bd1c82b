#!/usr/bin/env bash
# make-tokens.sh DIR [OWNER] -- write the three role tokens of a psd job,
# DIR/admin.token, DIR/worker.token and DIR/reader.token: 32 random bytes
# each, base64, mode 0400. Tokens already there are kept (delete them to
# rotate). Run as root, the files are given to OWNER (default 10001, the
# image's user) so that the containers can read them through Compose
# secrets; otherwise they stay the caller's.
#
#   deploy/make-tokens.sh deploy/secrets        # for deploy/docker-compose.yml
#   deploy/make-tokens.sh deploy/k8s/secrets    # for kubectl apply -k deploy/k8s
#
# Never commit them (.gitignore lists both directories).
set -euo pipefail
dir=${1:?usage: make-tokens.sh DIR [OWNER]}
owner=${2:-10001}
umask 077
mkdir -p "$dir"
for role in admin worker reader; do
  f=$dir/$role.token
  if [[ -s $f ]]; then
    echo "make-tokens: keeping $f" >&2
  else
    head -c 32 /dev/urandom | base64 >"$f.tmp"
    mv "$f.tmp" "$f"
    chmod 400 "$f"
    echo "make-tokens: wrote $f" >&2
  fi
  if [[ $(id -u) -eq 0 ]]; then chown "$owner" "$f"; fi
done
