#!/usr/bin/env python3
"""k8s_validate.py -- check the objects `kubectl kustomize deploy/k8s` renders,
offline, with the Python standard library only.

    k8s_validate.py FILE.yaml        validate; exit 0, or 1 listing every problem

Two layers:
 1. Schema: each object against the Kubernetes OpenAPI fields this
    deployment uses (apps/v1 StatefulSet, batch/v1 Job, v1 Service,
    ConfigMap, Secret, policy/v1 PodDisruptionBudget, networking.k8s.io/v1
    NetworkPolicy): the keys allowed at every path, the required ones, and
    each value's type. A misspelled or misplaced field is an error naming
    its path (the API server would drop it silently, or refuse it).
 2. Production rules for the shards: a pinned image tag, resources with a
    memory limit, PSD_MAX_MEMORY below that limit, a startupProbe, readiness
    and liveness probes, required pod anti-affinity or a topology spread, a
    PodDisruptionBudget with maxUnavailable 1, a NetworkPolicy admitting
    only workers on 7070 and Prometheus on 9070, prometheus.io annotations.

The YAML reader handles what kustomize (kyaml) writes: block mappings and
sequences, plain and quoted scalars, literal blocks, empty flow collections.
"""
import re
import sys

# ---- a YAML reader for kustomize's output -------------------------------------


class YamlError(Exception):
    pass


def _scalar(tok):
    t = tok.strip()
    if t == "" or t in ("~", "null"):
        return None
    if t[0] == '"':
        if not t.endswith('"') or len(t) < 2:
            raise YamlError("unterminated string: %s" % t)
        body = t[1:-1]
        return re.sub(r'\\(.)', lambda m: {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}.get(m.group(1), m.group(1)), body)
    if t[0] == "'":
        if not t.endswith("'") or len(t) < 2:
            raise YamlError("unterminated string: %s" % t)
        return t[1:-1].replace("''", "'")
    if t == "{}":
        return {}
    if t == "[]":
        return []
    if t.startswith("[") and t.endswith("]"):
        return [_scalar(x) for x in t[1:-1].split(",") if x.strip()]
    if t in ("true", "True"):
        return True
    if t in ("false", "False"):
        return False
    if re.fullmatch(r"[-+]?[0-9]+", t):
        return int(t)
    if re.fullmatch(r"[-+]?([0-9]*\.[0-9]+|[0-9]+\.[0-9]*)([eE][-+]?[0-9]+)?", t):
        return float(t)
    return t


def _split_key(s):
    """'key: value' -> (key, value-text or None); None if not a mapping entry."""
    if s.startswith(('"', "'")):
        q = s[0]
        end = s.find(q, 1)
        while q == "'" and end >= 0 and s[end + 1:end + 2] == "'":
            end = s.find(q, end + 2)
        if end < 0 or not s[end + 1:].startswith(":"):
            return None
        key, rest = _scalar(s[:end + 1]), s[end + 2:]
    else:
        m = re.match(r"([^\s#:][^:#]*?):(\s|$)", s)
        if not m:
            return None
        key, rest = m.group(1), s[m.end(1) + 1:]
    rest = rest.strip()
    return key, (rest if rest != "" else None)


class _Lines:
    def __init__(self, text):
        self.lines = []
        for raw in text.split("\n"):
            if raw.strip() == "" or raw.lstrip().startswith("#"):
                self.lines.append(None)
            else:
                self.lines.append(raw.rstrip())
        self.i = 0

    def peek(self):
        while self.i < len(self.lines) and self.lines[self.i] is None:
            self.i += 1
        if self.i >= len(self.lines):
            return None, None
        line = self.lines[self.i]
        return len(line) - len(line.lstrip(" ")), line.lstrip(" ")


def _block_scalar(ls, indicator, parent_indent):
    """A literal (|) or folded (>) block after `key: |`."""
    out, ind = [], None
    while ls.i < len(ls.lines):
        raw = ls.lines[ls.i]
        if raw is None:
            out.append("")
            ls.i += 1
            continue
        n = len(raw) - len(raw.lstrip(" "))
        if n <= parent_indent:
            break
        if ind is None:
            ind = n
        out.append(raw[ind:])
        ls.i += 1
    while out and out[-1] == "":
        out.pop()
    text = ("\n" if indicator.startswith("|") else " ").join(out)
    return text if indicator.endswith("-") else text + "\n"


def _continued(ls, text, indent):
    """A plain or quoted scalar may go on over lines indented deeper than
    its key or dash: they are folded in with single spaces."""
    while True:
        n, s = ls.peek()
        if s is None or n <= indent:
            return text
        text += " " + s
        ls.i += 1


def _value(ls, rest, indent):
    """The value after 'key:' (rest: the text after the colon, or None)."""
    if rest is not None and rest[0] in "|>":
        return _block_scalar(ls, rest, indent)
    if rest is not None:
        return _scalar(_continued(ls, rest, indent))
    n, s = ls.peek()
    if s is None or n < indent or (n == indent and not (s.startswith("- ") or s == "-")):
        return None
    return _node(ls, n)


def _node(ls, indent):
    n, s = ls.peek()
    if s.startswith("- ") or s == "-":
        seq = []
        while True:
            n, s = ls.peek()
            if s is None or n != indent or not (s.startswith("- ") or s == "-"):
                break
            item = s[2:] if s.startswith("- ") else ""
            if item.strip() == "":
                ls.i += 1
                n2, _ = ls.peek()
                seq.append(_node(ls, n2) if n2 is not None and n2 > indent else None)
                continue
            kv = _split_key(item)
            if kv is None:
                ls.i += 1
                seq.append(_scalar(_continued(ls, item, indent)))
                continue
            # A mapping that starts on the dash's line: read it as if the
            # dash were spaces.
            ls.lines[ls.i] = " " * (indent + 2) + item
            seq.append(_node(ls, indent + 2))
        return seq
    obj = {}
    while True:
        n, s = ls.peek()
        if s is None or n < indent:
            break
        if n > indent:
            raise YamlError("line %d: unexpected indentation" % (ls.i + 1))
        if s.startswith("- "):
            break
        kv = _split_key(s)
        if kv is None:
            raise YamlError("line %d: not a mapping entry: %s" % (ls.i + 1, s))
        key, rest = kv
        if key in obj:
            raise YamlError("line %d: duplicate key %s" % (ls.i + 1, key))
        ls.i += 1
        obj[key] = _value(ls, rest, indent)
    return obj


def load_all(text):
    docs = []
    for part in re.split(r"(?m)^---\s*$", text):
        ls = _Lines(part)
        n, s = ls.peek()
        if s is None:
            continue
        doc = _node(ls, n)
        if ls.peek()[1] is not None:
            raise YamlError("trailing content at line %d" % (ls.i + 1))
        docs.append(doc)
    return docs


# ---- the schema ------------------------------------------------------------------
# A type is: "str", "int", "bool", "intstr" (IntOrString), "quantity",
# "any", ("map", T) (a map of string keys), ("list", T), or an object
# O(required=[...], field=T, ...).


class O:
    def __init__(self, required=(), **fields):
        self.fields = {k.replace("__", "."): v for k, v in fields.items()}
        self.required = set(required)


STRMAP = ("map", "str")
LABEL_SELECTOR = O(matchLabels=STRMAP,
                   matchExpressions=("list", O(required=["key", "operator"], key="str",
                                               operator="str", values=("list", "str"))))
OBJECT_META = O(name="str", generateName="str", namespace="str", labels=STRMAP,
                annotations=STRMAP)
ENV_VAR_SOURCE = O(
    fieldRef=O(required=["fieldPath"], fieldPath="str", apiVersion="str"),
    resourceFieldRef=O(required=["resource"], resource="str", containerName="str",
                       divisor="quantity"),
    configMapKeyRef=O(required=["key"], name="str", key="str", optional="bool"),
    secretKeyRef=O(required=["key"], name="str", key="str", optional="bool"))
ENV_VAR = O(required=["name"], name="str", value="str", valueFrom=ENV_VAR_SOURCE)
ENV_FROM = O(prefix="str", configMapRef=O(name="str", optional="bool"),
             secretRef=O(name="str", optional="bool"))
HANDLER_FIELDS = dict(
    exec=O(command=("list", "str")),
    tcpSocket=O(required=["port"], port="intstr", host="str"),
    httpGet=O(required=["port"], path="str", port="intstr", host="str", scheme="str",
              httpHeaders=("list", O(required=["name", "value"], name="str", value="str"))),
    grpc=O(required=["port"], port="int", service="str"))
PROBE = O(initialDelaySeconds="int", periodSeconds="int", timeoutSeconds="int",
          successThreshold="int", failureThreshold="int",
          terminationGracePeriodSeconds="int", **HANDLER_FIELDS)
SECURITY_CONTEXT = O(
    allowPrivilegeEscalation="bool", readOnlyRootFilesystem="bool", privileged="bool",
    runAsNonRoot="bool", runAsUser="int", runAsGroup="int",
    capabilities=O(add=("list", "str"), drop=("list", "str")),
    seccompProfile=O(required=["type"], type="str", localhostProfile="str"))
CONTAINER = O(
    required=["name"], name="str", image="str", imagePullPolicy="str",
    command=("list", "str"), args=("list", "str"), workingDir="str",
    env=("list", ENV_VAR), envFrom=("list", ENV_FROM),
    ports=("list", O(required=["containerPort"], name="str", containerPort="int",
                     protocol="str", hostPort="int", hostIP="str")),
    resources=O(requests=("map", "quantity"), limits=("map", "quantity")),
    readinessProbe=PROBE, livenessProbe=PROBE, startupProbe=PROBE,
    securityContext=SECURITY_CONTEXT,
    volumeMounts=("list", O(required=["name", "mountPath"], name="str", mountPath="str",
                            readOnly="bool", subPath="str")),
    terminationMessagePolicy="str", stdin="bool", tty="bool")
POD_AFFINITY_TERM = O(required=["topologyKey"], topologyKey="str",
                      labelSelector=LABEL_SELECTOR, namespaces=("list", "str"),
                      namespaceSelector=LABEL_SELECTOR)
WEIGHTED_TERM = O(required=["weight", "podAffinityTerm"], weight="int",
                  podAffinityTerm=POD_AFFINITY_TERM)
POD_AFFINITY = O(requiredDuringSchedulingIgnoredDuringExecution=("list", POD_AFFINITY_TERM),
                 preferredDuringSchedulingIgnoredDuringExecution=("list", WEIGHTED_TERM))
VOLUME = O(required=["name"], name="str",
           secret=O(secretName="str", defaultMode="int", optional="bool",
                    items=("list", O(required=["key", "path"], key="str", path="str",
                                     mode="int"))),
           configMap=O(name="str", defaultMode="int", optional="bool"),
           emptyDir=O(medium="str", sizeLimit="quantity"),
           persistentVolumeClaim=O(required=["claimName"], claimName="str", readOnly="bool"))
POD_SPEC = O(
    required=["containers"],
    containers=("list", CONTAINER), initContainers=("list", CONTAINER),
    restartPolicy="str", terminationGracePeriodSeconds="int",
    serviceAccountName="str", automountServiceAccountToken="bool",
    securityContext=O(runAsNonRoot="bool", runAsUser="int", runAsGroup="int",
                      fsGroup="int", fsGroupChangePolicy="str",
                      seccompProfile=O(required=["type"], type="str",
                                       localhostProfile="str")),
    affinity=O(podAntiAffinity=POD_AFFINITY, podAffinity=POD_AFFINITY, nodeAffinity="any"),
    topologySpreadConstraints=("list", O(
        required=["maxSkew", "topologyKey", "whenUnsatisfiable"], maxSkew="int",
        topologyKey="str", whenUnsatisfiable="str", labelSelector=LABEL_SELECTOR,
        minDomains="int", matchLabelKeys=("list", "str"))),
    volumes=("list", VOLUME), nodeSelector=STRMAP, priorityClassName="str",
    tolerations=("list", O(key="str", operator="str", value="str", effect="str",
                           tolerationSeconds="int")))
POD_TEMPLATE = O(metadata=OBJECT_META, spec=POD_SPEC)
PVC_SPEC = O(accessModes=("list", "str"), storageClassName="str",
             resources=O(requests=("map", "quantity"), limits=("map", "quantity")))


def top(spec_type, required=("apiVersion", "kind", "metadata"), **extra):
    return O(required=list(required), apiVersion="str", kind="str", metadata=OBJECT_META,
             spec=spec_type, **extra)


KINDS = {
    ("apps/v1", "StatefulSet"): top(O(
        required=["selector", "template"], serviceName="str", replicas="int",
        podManagementPolicy="str", selector=LABEL_SELECTOR, template=POD_TEMPLATE,
        updateStrategy=O(type="str", rollingUpdate=O(partition="int", maxUnavailable="intstr")),
        volumeClaimTemplates=("list", O(metadata=OBJECT_META, spec=PVC_SPEC)),
        persistentVolumeClaimRetentionPolicy=O(whenDeleted="str", whenScaled="str"),
        minReadySeconds="int", revisionHistoryLimit="int"), required=["apiVersion", "kind", "metadata", "spec"]),
    ("batch/v1", "Job"): top(O(
        required=["template"], completionMode="str", completions="int", parallelism="int",
        backoffLimit="int", ttlSecondsAfterFinished="int", activeDeadlineSeconds="int",
        template=POD_TEMPLATE, selector=LABEL_SELECTOR, manualSelector="bool"),
        required=["apiVersion", "kind", "metadata", "spec"]),
    ("v1", "Service"): top(O(
        clusterIP="str", type="str", publishNotReadyAddresses="bool", selector=STRMAP,
        ports=("list", O(required=["port"], name="str", port="int", targetPort="intstr",
                         protocol="str", nodePort="int", appProtocol="str")))),
    ("v1", "ConfigMap"): top(None, data=STRMAP, binaryData=STRMAP, immutable="bool"),
    ("v1", "Secret"): top(None, data=STRMAP, stringData=STRMAP, type="str", immutable="bool"),
    ("policy/v1", "PodDisruptionBudget"): top(O(
        minAvailable="intstr", maxUnavailable="intstr", selector=LABEL_SELECTOR,
        unhealthyPodEvictionPolicy="str"), required=["apiVersion", "kind", "metadata", "spec"]),
    ("networking.k8s.io/v1", "NetworkPolicy"): top(O(
        required=["podSelector"], podSelector=LABEL_SELECTOR, policyTypes=("list", "str"),
        ingress=("list", O(
            ports=("list", O(protocol="str", port="intstr", endPort="int")),
            **{"from": ("list", O(podSelector=LABEL_SELECTOR,
                                  namespaceSelector=LABEL_SELECTOR,
                                  ipBlock=O(required=["cidr"], cidr="str",
                                            **{"except": ("list", "str")})))})),
        egress="any"), required=["apiVersion", "kind", "metadata", "spec"]),
}
for k in KINDS.values():
    k.fields["metadata"] = O(required=["name"], **{f: t for f, t in OBJECT_META.fields.items()})
    if k.fields["spec"] is None:
        del k.fields["spec"]

QUANTITY = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[kMGTPE]i?|[munKMGTPE]|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def check(value, t, path, errs):
    if t == "any":
        return
    if value is None:
        errs.append("%s: null value" % path)
        return
    if t == "str":
        if not isinstance(value, str):
            errs.append("%s: expected a string, got %r" % (path, value))
    elif t == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            errs.append("%s: expected an integer, got %r" % (path, value))
    elif t == "bool":
        if not isinstance(value, bool):
            errs.append("%s: expected true or false, got %r" % (path, value))
    elif t == "intstr":
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            errs.append("%s: expected an integer or a string, got %r" % (path, value))
    elif t == "quantity":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or \
                (isinstance(value, str) and not QUANTITY.match(value)):
            errs.append("%s: %r is not a quantity" % (path, value))
    elif isinstance(t, tuple) and t[0] == "map":
        if not isinstance(value, dict):
            errs.append("%s: expected a map, got %r" % (path, value))
            return
        for k, v in value.items():
            check(v, t[1], "%s.%s" % (path, k), errs)
    elif isinstance(t, tuple) and t[0] == "list":
        if not isinstance(value, list):
            errs.append("%s: expected a list, got %r" % (path, value))
            return
        for i, v in enumerate(value):
            check(v, t[1], "%s[%d]" % (path, i), errs)
    elif isinstance(t, O):
        if not isinstance(value, dict):
            errs.append("%s: expected an object, got %r" % (path, value))
            return
        for k, v in value.items():
            if k not in t.fields:
                near = [f for f in t.fields if f.lower() == str(k).lower() or
                        _close(f, str(k))]
                errs.append("%s.%s: unknown field%s" % (
                    path, k, " (did you mean %s?)" % near[0] if near else ""))
                continue
            check(v, t.fields[k], "%s.%s" % (path, k), errs)
        for r in sorted(t.required):
            if r not in value:
                errs.append("%s: missing required field %s" % (path, r))
    else:
        raise AssertionError("bad schema type %r" % (t,))


def _close(a, b):
    """One edit apart (a typo)."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) == 1
    s, l = (a, b) if len(a) < len(b) else (b, a)
    return any(l[:i] + l[i + 1:] == s for i in range(len(l)))


# ---- production rules -----------------------------------------------------------

UNITS = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 1024, "Mi": 1024 ** 2,
         "Gi": 1024 ** 3, "Ti": 1024 ** 4}


def bytes_of(q):
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    if not m or m.group(2) not in UNITS:
        return None
    return float(m.group(1)) * UNITS[m.group(2)]


def psd_size(s):
    """psd's --max-memory syntax: 1536M, 1.5G, 64k, bytes (powers of 1024)."""
    m = re.fullmatch(r"([0-9.]+)([kKmMgGtT]?)", str(s))
    if not m:
        return None
    return float(m.group(1)) * 1024 ** "_kmgt".index((m.group(2) or "_").lower())


def rules(docs, errs):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
    shard_sel = {"app.kubernetes.io/name": "psd", "app.kubernetes.io/component": "shard"}
    sts = [d for d in by_kind.get("StatefulSet", []) if d["metadata"]["name"] == "psd"]
    if not sts:
        errs.append("no StatefulSet psd")
        return
    st = sts[0]
    tpl = st["spec"]["template"]
    ann = tpl.get("metadata", {}).get("annotations", {})
    for k, v in (("prometheus.io/scrape", "true"), ("prometheus.io/port", "9070"),
                 ("prometheus.io/path", "/metrics")):
        if ann.get(k) != v:
            errs.append("StatefulSet psd: pod annotation %s should be %r" % (k, v))
    spec = tpl["spec"]
    anti = spec.get("affinity", {}).get("podAntiAffinity", {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution", [])
    spread = [c for c in spec.get("topologySpreadConstraints", [])
              if c.get("whenUnsatisfiable") == "DoNotSchedule"]
    if not any(t.get("labelSelector", {}).get("matchLabels") == shard_sel for t in anti) and not spread:
        errs.append("StatefulSet psd: no required pod anti-affinity nor a DoNotSchedule "
                    "topology spread for the shards")
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in by_kind.get("ConfigMap", [])}
    for c in spec["containers"]:
        where = "StatefulSet psd container %s" % c["name"]
        img = c.get("image", "")
        if ":" not in img or img.endswith(":latest"):
            errs.append("%s: image %r has no pinned tag" % (where, img))
        for p in ("startupProbe", "readinessProbe", "livenessProbe"):
            if p not in c:
                errs.append("%s: no %s" % (where, p))
        lim = c.get("resources", {}).get("limits", {}).get("memory")
        req = c.get("resources", {}).get("requests", {})
        if lim is None or "memory" not in req or "cpu" not in req:
            errs.append("%s: resources need memory and cpu requests and a memory limit" % where)
            continue
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        for ef in c.get("envFrom", []):
            ref = ef.get("configMapRef", {}).get("name")
            if ref is not None and ref not in configmaps:
                errs.append("%s: envFrom names ConfigMap %s, which is not deployed" % (where, ref))
            env.update(configmaps.get(ref, {}))
        mm = env.get("PSD_MAX_MEMORY")
        if mm is None:
            errs.append("%s: PSD_MAX_MEMORY is not set" % where)
        elif psd_size(mm) is None or bytes_of(lim) is None or not psd_size(mm) < bytes_of(lim):
            errs.append("%s: PSD_MAX_MEMORY %s is not below the memory limit %s" % (where, mm, lim))
        if env.get("PSD_METRICS_LISTEN", "").rsplit(":", 1)[-1] != "9070":
            errs.append("%s: PSD_METRICS_LISTEN does not serve port 9070" % where)
        sp = c.get("startupProbe", {})
        if sp and sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3) < 600:
            errs.append("%s: the startupProbe allows less than 10 minutes for a restore" % where)
    for j in by_kind.get("Job", []):
        for c in j["spec"]["template"]["spec"].get("containers", []) + \
                j["spec"]["template"]["spec"].get("initContainers", []):
            img = c.get("image", "")
            if ":" not in img or img.endswith(":latest"):
                errs.append("Job %s container %s: image %r has no pinned tag" % (
                    j["metadata"]["name"], c["name"], img))
    pdbs = [p for p in by_kind.get("PodDisruptionBudget", [])
            if p["spec"].get("selector", {}).get("matchLabels") == shard_sel]
    if not pdbs or pdbs[0]["spec"].get("maxUnavailable") != 1:
        errs.append("no PodDisruptionBudget with maxUnavailable 1 for the shards")
    nps = [n for n in by_kind.get("NetworkPolicy", [])
           if n["spec"].get("podSelector", {}).get("matchLabels") == shard_sel]
    if not nps:
        errs.append("no NetworkPolicy for the shards")
    else:
        np = nps[0]["spec"]
        if "Ingress" not in np.get("policyTypes", []):
            errs.append("NetworkPolicy: policyTypes lacks Ingress")
        seen = {}
        for rule in np.get("ingress", []):
            ports = [p.get("port") for p in rule.get("ports", [])]
            peers = rule.get("from", [])
            if not ports or not peers:
                errs.append("NetworkPolicy: an ingress rule open to all ports or all peers")
                continue
            for port in ports:
                seen.setdefault(port, []).extend(peers)
        if set(seen) != {7070, 9070}:
            errs.append("NetworkPolicy: ports %s, expected exactly 7070 and 9070" % sorted(seen))
        if any(p.get("podSelector", {}).get("matchLabels", {}).get(
                "app.kubernetes.io/component") != "worker" for p in seen.get(7070, [])):
            errs.append("NetworkPolicy: 7070 open to something other than the workers")
        if any(p.get("podSelector", {}).get("matchLabels", {}).get(
                "app.kubernetes.io/name") != "prometheus" for p in seen.get(9070, [])):
            errs.append("NetworkPolicy: 9070 open to something other than Prometheus")


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().split("\n\n")[1])
        return 2
    text = open(sys.argv[1]).read()
    try:
        docs = load_all(text)
    except YamlError as e:
        print("k8s_validate: YAML: %s" % e)
        return 1
    errs = []
    for d in docs:
        if not isinstance(d, dict):
            errs.append("a document is not an object")
            continue
        key = (d.get("apiVersion"), d.get("kind"))
        name = "%s %s" % (key[1], (d.get("metadata") or {}).get("name", "?"))
        if key not in KINDS:
            errs.append("%s: %s/%s is not a kind this validator knows" % (name, key[0], key[1]))
            continue
        check(d, KINDS[key], name, errs)
    if not errs:
        rules(docs, errs)
    for e in errs:
        print("k8s_validate: %s" % e)
    if errs:
        return 1
    print("k8s_validate: %d objects valid (%s)" % (
        len(docs), ", ".join(sorted("%s %s" % (d["kind"], d["metadata"]["name"]) for d in docs))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
