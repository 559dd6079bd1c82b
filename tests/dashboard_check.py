#!/usr/bin/env python3
"""dashboard_check.py DASHBOARD.json METRICS.txt [RULES_OUT.yml]

Checks deploy/grafana/psd.json (stdlib only): valid JSON; a dashboard with a
title, a uid, a schemaVersion and panels; every panel with a type, a title,
a grid position inside the 24 columns and a unique id; every query panel
with targets that have an expr and a unique refId, on the ${datasource}
variable; the variables the queries use are defined; every psd_* metric
named in a query exists in METRICS.txt (a scrape of psd: a family's TYPE
line, or a histogram's _bucket/_sum/_count); the panels cover throughput,
latency quantiles, round wait, worker lag, memory, checkpoints and loop
stalls. With RULES_OUT, writes each query as a recording rule (Grafana's
$variables replaced) for `promtool check rules` to parse the PromQL.
"""
import json
import re
import sys

def fail(msg):
    print("dashboard_check: FAIL: %s" % msg)
    sys.exit(1)

dash_path, metrics_path = sys.argv[1], sys.argv[2]
try:
    d = json.load(open(dash_path))
except ValueError as e:
    fail("%s is not JSON: %s" % (dash_path, e))
for k in ("title", "uid", "schemaVersion", "panels", "templating"):
    if k not in d:
        fail("no %s" % k)
variables = {v["name"] for v in d["templating"]["list"]}
families = {}
for line in open(metrics_path):
    m = re.match(r"# TYPE (\S+) (\S+)", line)
    if m:
        families[m.group(1)] = m.group(2)
if not families:
    fail("%s holds no metric families" % metrics_path)

ids, exprs, titles = set(), [], []
for p in d["panels"]:
    for k in ("type", "title", "id", "gridPos"):
        if k not in p:
            fail("a panel without %s: %s" % (k, p.get("title")))
    if p["id"] in ids:
        fail("panel id %s twice" % p["id"])
    ids.add(p["id"])
    g = p["gridPos"]
    if not all(isinstance(g.get(k), int) for k in "xywh") or g["x"] < 0 or g["w"] < 1 or g["x"] + g["w"] > 24:
        fail("panel %r: grid position %s outside the 24 columns" % (p["title"], g))
    if p["type"] == "row":
        continue
    titles.append(p["title"].lower())
    if p.get("datasource", {}).get("uid") != "${datasource}":
        fail("panel %r is not on the ${datasource} variable" % p["title"])
    refs = set()
    if not p.get("targets"):
        fail("panel %r has no queries" % p["title"])
    for t in p["targets"]:
        if not t.get("expr") or not t.get("refId") or t["refId"] in refs:
            fail("panel %r: a query without an expr or with a repeated refId" % p["title"])
        refs.add(t["refId"])
        exprs.append((p["title"], t["expr"]))

used = set()
for title, e in exprs:
    for v in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", e):
        if not v.startswith("__") and v not in variables:
            fail("panel %r uses $%s, which is not a variable" % (title, v))
    for name in re.findall(r"\bpsd_[A-Za-z0-9_]+", e):
        used.add(name)
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name in families:
            continue
        if base != name and families.get(base) == "histogram":
            continue
        fail("panel %r queries %s, which psd does not export" % (title, name))

joined = " ".join(e for _, e in exprs)
need = {
    "throughput": "psd_requests_total",
    "latency quantiles": "histogram_quantile(0.99, sum by (le) (rate(psd_request_duration_seconds_bucket",
    "round wait": "psd_sync_round_wait_seconds_bucket",
    "worker lag": "psd_worker_lag_clocks",
    "memory": "psd_memory_bytes",
    "checkpoints": "psd_checkpoint_age_seconds",
    "loop stalls": "psd_loop_",
}
for what, needle in need.items():
    if needle not in joined:
        fail("no panel shows %s (%s)" % (what, needle))

if len(sys.argv) > 3:
    with open(sys.argv[3], "w") as f:
        f.write("groups:\n  - name: dashboard\n    rules:\n")
        for i, (_, e) in enumerate(exprs):
            q = e.replace("$__rate_interval", "1m").replace("$instance", ".*")
            f.write("      - record: dashboard:query_%d\n        expr: %s\n" % (i, json.dumps(q)))
print("dashboard_check: ok: %d panels, %d queries, %d psd metrics, all exported" % (
    len(ids), len(exprs), len(used)))
