#!/usr/bin/env bash
# k8s_test.sh -- the deployment files, offline:
#  - `kubectl kustomize deploy/k8s` renders, and every object passes
#    tests/k8s_validate.py (the OpenAPI fields used: allowed keys per kind
#    and path, required fields, types; and the production rules);
#  - the validator catches what it must: a misspelled field, a field of the
#    wrong type, a missing required field, an unpinned image, a memory
#    ceiling above the container's limit, a PodDisruptionBudget allowing 2,
#    a NetworkPolicy opening 9070 to everyone;
#  - the Compose file renders with and without --profile monitoring (the
#    Prometheus only with it), also with the host-network override (every
#    container it runs on the host's network, none publishing a port), and
#    promtool accepts deploy/prometheus/*.yml (when the tools are here).
# Exit 77 (skip) only when kubectl is missing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TMP=$(mktemp -d "${PSD_TEST_TMPDIR:-${TMPDIR:-/tmp}}/k8s_test.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
fail() { echo "k8s_test: FAIL: $*" >&2; exit 1; }
command -v kubectl >/dev/null || { echo "k8s_test: SKIP: no kubectl (with kustomize) here"; exit 77; }

# A copy with generated tokens: the Secret is made from deploy/k8s/secrets,
# which is never committed.
cp -r "$ROOT/deploy/k8s" "$TMP/k8s"
rm -rf "$TMP/k8s/secrets"
"$ROOT/deploy/make-tokens.sh" "$TMP/k8s/secrets" "$(id -u)" 2>/dev/null || fail "make-tokens.sh"
kubectl kustomize "$TMP/k8s" >"$TMP/all.yaml" || fail "kubectl kustomize deploy/k8s"
python3 "$ROOT/tests/k8s_validate.py" "$TMP/all.yaml" || fail "the rendered objects do not validate"

# mutate NAME 'python expression on s' MESSAGE-REGEX: a changed copy must
# fail with a message matching the regex.
mutate() {
  local name=$1 code=$2 want=$3
  python3 -c "import sys; s=open(sys.argv[1]).read(); t=$code; assert t != s, 'no change'; open(sys.argv[2],'w').write(t)" \
    "$TMP/all.yaml" "$TMP/$name.yaml" || fail "$name: the mutation did not apply"
  if python3 "$ROOT/tests/k8s_validate.py" "$TMP/$name.yaml" >"$TMP/$name.out"; then
    fail "$name: accepted"
  fi
  grep -Eq -- "$want" "$TMP/$name.out" || fail "$name: '$(cat "$TMP/$name.out")' does not match '$want'"
  echo "k8s_test: ok: $name caught: $(grep -E -- "$want" "$TMP/$name.out" | head -1)"
}
mutate misspelled "s.replace('containerPort: 9070', 'containerport: 9070', 1)" \
  'ports\[1\]\.containerport: unknown field \(did you mean containerPort\?\)'
mutate misspelled-probe "s.replace('readinessProbe:', 'readinesProbe:', 1)" \
  'readinesProbe: unknown field \(did you mean readinessProbe\?\)'
mutate misplaced "s.replace('  serviceName: psd', '  servicename: psd', 1)" 'servicename: unknown field'
mutate wrong-type "s.replace('replicas: 2', 'replicas: two', 1)" 'spec\.replicas: expected an integer'
mutate missing-required "s.replace('            topologyKey: kubernetes.io/hostname\n', '', 1)" \
  'missing required field topologyKey'
mutate latest-image "s.replace('image: psd:0.2.0', 'image: psd:latest', 1)" 'has no pinned tag'
mutate memory-over-limit "s.replace('PSD_MAX_MEMORY: 1536M', 'PSD_MAX_MEMORY: 4G', 1)" \
  'PSD_MAX_MEMORY 4G is not below the memory limit'
mutate pdb "s.replace('maxUnavailable: 1', 'maxUnavailable: 2', 1)" 'maxUnavailable 1'
mutate metrics-open "s.replace('app.kubernetes.io/name: prometheus', 'app.kubernetes.io/name: anything', 1)" \
  '9070 open to something other than Prometheus'
mutate no-startup "s.replace('startupProbe:', 'startupProbeX:', 1)" 'startupProbeX: unknown field'

# One version everywhere: the project's, the image tag Compose and the
# kustomization pin, the StatefulSet's image.
VERSION=$(sed -n 's/^project(psd VERSION \([0-9.]*\).*/\1/p' "$ROOT/CMakeLists.txt")
grep -q "^#define PS_VERSION_STRING \"$VERSION\"" "$ROOT/common/include/psd_types.h" ||
  fail "psd_types.h's PS_VERSION_STRING is not the project's version $VERSION"
grep -q "newTag: $VERSION\$" "$ROOT/deploy/k8s/kustomization.yaml" || fail "kustomization does not pin psd:$VERSION"
[[ $(grep -c "image: psd:$VERSION\b" "$TMP/all.yaml") -ge 2 ]] || fail "the rendered pods do not run psd:$VERSION"
[[ $(grep -c '${PSD_IMAGE:-psd:'"$VERSION"'}' "$ROOT/deploy/docker-compose.yml") -eq 2 ]] ||
  fail "docker-compose.yml does not default to psd:$VERSION"
echo "k8s_test: ok: psd:$VERSION pinned in Compose and Kubernetes"

if command -v docker-compose >/dev/null; then
  (cd "$ROOT/deploy" && docker-compose -f docker-compose.yml --profile monitoring config) \
    >"$TMP/compose.yml" 2>"$TMP/err" || fail "docker-compose --profile monitoring config: $(cat "$TMP/err")"
  (cd "$ROOT/deploy" && docker-compose -f docker-compose.yml -f docker-compose.hostnet.yml \
    --profile monitoring config) >"$TMP/hostnet.yml" 2>"$TMP/err" || fail "host-network config: $(cat "$TMP/err")"
  grep -q 'PSD_METRICS_LISTEN: 127.0.0.1:19070' "$TMP/hostnet.yml" ||
    fail "host network: the shards' metrics ports are not set apart"
  python3 - "$TMP/compose.yml" "$TMP/hostnet.yml" "$ROOT/tests" <<'PY' ||
import sys
sys.path.insert(0, sys.argv[3])
from k8s_validate import load_all
svc = load_all(open(sys.argv[1]).read())[0]["services"]
# Only the Prometheus belongs to the profile (`up` without it leaves it out).
assert svc["prometheus"].get("profiles") == ["monitoring"], svc["prometheus"].get("profiles")
assert all("profiles" not in v for k, v in svc.items() if k != "prometheus")
assert any(v.endswith(":/etc/prometheus/prometheus.yml:ro") for v in svc["prometheus"]["volumes"])
assert svc["psd-0"]["image"] == "psd:0.2.0", svc["psd-0"]["image"]
# Metrics with the reader token: the shards want it, Prometheus has it.
assert svc["psd-0"]["environment"]["PSD_METRICS_AUTH"] == "1"
assert any((x if isinstance(x, str) else x.get("source")) == "psd_reader_token"
           for x in svc["prometheus"]["secrets"]), svc["prometheus"]["secrets"]
# The host-network override: a container on the host's network that
# publishes a port is refused at creation (docker-compose 1.29), which
# `config` does not show. Every container it runs is on the host's network
# and publishes nothing, and the profile still runs one Prometheus.
svc = load_all(open(sys.argv[2]).read())[0]["services"]
runs = {k: v for k, v in svc.items() if v.get("scale", 1) != 0}
bad = [k for k, v in runs.items() if v.get("network_mode") != "host" or v.get("ports")]
assert not bad, "host network: not on the host's network, or publishing ports: %s" % bad
proms = [k for k, v in runs.items() if str(v.get("image", "")).startswith("psd-prometheus:")]
assert len(proms) == 1 and runs[proms[0]].get("profiles") == ["monitoring"], proms
PY
    fail "the monitoring profile or the host-network override is not as it should be"
  echo "k8s_test: ok: Compose renders, the monitoring profile adds Prometheus"
else
  echo "k8s_test: docker-compose not installed: the Compose checks are skipped"
fi
if command -v promtool >/dev/null; then
  for f in "$ROOT"/deploy/prometheus/*.yml; do
    # (--syntax-only: the reader token file exists only inside the container)
    promtool check config --syntax-only "$f" >"$TMP/p.out" 2>&1 || fail "promtool check config $f: $(cat "$TMP/p.out")"
  done
  echo "k8s_test: ok: promtool accepts deploy/prometheus/*.yml"
fi
echo "k8s_test: all checks passed"
