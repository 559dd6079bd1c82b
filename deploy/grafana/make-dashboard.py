#!/usr/bin/env python3
"""make-dashboard.py -- writes deploy/grafana/psd.json, the Grafana dashboard
for psd's metrics (psd --metrics-listen). Edit the panels here and run

    python3 deploy/grafana/make-dashboard.py deploy/grafana/psd.json

tests/dashboard_test.sh checks that the JSON is what this writes, that it
is a well-formed dashboard, and that every metric it queries exists.
Import: Grafana > Dashboards > Import > upload psd.json, pick the
Prometheus data source.
"""
import json
panels = []
pid = [0]
y = [0]
def row(title):
    pid[0] += 1
    panels.append({"type": "row", "title": title, "id": pid[0], "collapsed": False,
                   "gridPos": {"x": 0, "y": y[0], "w": 24, "h": 1}, "panels": []})
    y[0] += 1
x_pos = [0]
def panel(title, targets, unit="short", kind="timeseries", w=8, h=8, desc="", stack=False, max_=None):
    pid[0] += 1
    if x_pos[0] + w > 24:
        x_pos[0] = 0
        y[0] += h
    p = {"type": kind, "title": title, "id": pid[0], "description": desc,
         "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "gridPos": {"x": x_pos[0], "y": y[0], "w": w, "h": h},
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
         "options": {},
         "targets": [{"datasource": {"type": "prometheus", "uid": "${datasource}"},
                      "expr": e, "legendFormat": l, "refId": chr(65 + i)}
                     for i, (e, l) in enumerate(targets)]}
    if kind == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                                                  "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
    else:
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto", "orientation": "auto"}
    if max_ is not None:
        p["fieldConfig"]["defaults"]["max"] = max_
    panels.append(p)
    x_pos[0] += w
def newrow(title):
    if x_pos[0] != 0:
        y[0] += 8
    x_pos[0] = 0
    row(title)

I = 'instance=~"$instance"'
R = "$__rate_interval"
newrow("Overview")
panel("Shards scraped", [('count(psd_build_info{%s})' % I, "shards")], kind="stat", w=4, h=4)
panel("Workers live", [('max(psd_workers_live{%s})' % I, "live"), ('max(psd_job_workers{%s})' % I, "of")], kind="stat", w=4, h=4)
panel("Push-pulls/s", [('sum(rate(psd_requests_total{%s,type="push_pull"}[%s]))' % (I, R), "push-pull/s")], unit="reqps", kind="stat", w=4, h=4)
panel("Push-pull p99", [('histogram_quantile(0.99, sum by (le) (rate(psd_request_duration_seconds_bucket{%s,type="push_pull"}[%s])))' % (I, R), "p99")], unit="s", kind="stat", w=4, h=4)
panel("Errors/s", [('sum(rate(psd_requests_total{%s,result="error"}[%s]))' % (I, R), "errors/s")], unit="reqps", kind="stat", w=4, h=4)
panel("Oldest checkpoint", [('max(psd_checkpoint_age_seconds{%s})' % I, "age")], unit="s", kind="stat", w=4, h=4)
y[0] += 4; x_pos[0] = 0
newrow("Throughput")
panel("Requests/s by type", [('sum by (type) (rate(psd_requests_total{%s,result!="dropped"}[%s]))' % (I, R), "{{type}}")], unit="reqps", stack=True)
panel("Requests/s by result", [('sum by (result) (rate(psd_requests_total{%s}[%s]))' % (I, R), "{{result}}")], unit="reqps")
panel("Bytes/s", [('sum(rate(psd_received_bytes_total{%s}[%s]))' % (I, R), "in (sockets)"),
                  ('sum(rate(psd_sent_bytes_total{%s}[%s]))' % (I, R), "out (sockets)"),
                  ('sum(rate(psd_lane_bytes_total{%s}[%s]))' % (I, R), "same-host lanes")], unit="Bps")
newrow("Latency (frame read to reply queued; held replies included)")
panel("Push-pull latency", [('histogram_quantile(%s, sum by (le) (rate(psd_request_duration_seconds_bucket{%s,type="push_pull"}[%s])))' % (q, I, R), "p" + q[2:].ljust(2, "0")) for q in ("0.5", "0.9", "0.99")], unit="s")
panel("Pull latency", [('histogram_quantile(%s, sum by (le) (rate(psd_request_duration_seconds_bucket{%s,type="pull"}[%s])))' % (q, I, R), "p" + q[2:].ljust(2, "0")) for q in ("0.5", "0.9", "0.99")], unit="s")
panel("Push latency", [('histogram_quantile(%s, sum by (le) (rate(psd_request_duration_seconds_bucket{%s,type="push"}[%s])))' % (q, I, R), "p" + q[2:].ljust(2, "0")) for q in ("0.5", "0.9", "0.99")], unit="s")
newrow("Synchronization")
panel("Sync rounds/s", [('sum by (instance) (rate(psd_sync_rounds_total{%s}[%s]))' % (I, R), "{{instance}}")], unit="ops")
panel("Round wait for the last worker", [('histogram_quantile(%s, sum by (le) (rate(psd_sync_round_wait_seconds_bucket{%s}[%s])))' % (q, I, R), "p" + q[2:].ljust(2, "0")) for q in ("0.5", "0.99")], unit="s",
      desc="Time from a sync round's first contribution to its completion: how long rounds wait for their slowest worker.")
panel("SSP pulls held", [('sum(psd_ssp_held_pulls{%s})' % I, "held now"), ('sum(rate(psd_ssp_held_pulls_total{%s}[%s]))' % (I, R), "held/s")])
panel("Worker lag behind the fastest (clocks)", [('max by (rank) (psd_worker_lag_clocks{%s})' % I, "rank {{rank}}")], unit="short")
panel("Worker clocks", [('max by (rank) (psd_worker_clock{%s})' % I, "rank {{rank}}")], unit="short")
panel("Workers", [('max(psd_workers_live{%s})' % I, "live"), ('max(psd_workers_joined{%s})' % I, "joined"),
                  ('max(psd_job_workers{%s})' % I, "job size"),
                  ('sum(increase(psd_worker_departures_total{%s}[5m]))' % I, "departed (5m)")])
newrow("Memory and connections")
panel("Memory by category", [('sum by (category) (psd_memory_bytes{%s})' % I, "{{category}}")], unit="bytes", stack=True)
panel("Memory against the ceiling", [('psd_memory_used_bytes{%s}' % I, "used {{instance}}"),
                                     ('psd_memory_limit_bytes{%s}' % I, "limit {{instance}}"),
                                     ('sum(rate(psd_memory_refusals_total{%s}[%s]))' % (I, R), "refusals/s")],
      unit="bytes", desc="Memory held against --max-memory; refusals are requests answered RESOURCE_EXHAUSTED.")
panel("Connections and lanes", [('sum(psd_connections{%s})' % I, "connections"), ('sum(psd_lanes{%s})' % I, "lanes"),
                                ('sum(rate(psd_connections_accepted_total{%s}[%s]))' % (I, R), "accepted/s")])
panel("Tensors and blocks", [('max(psd_tensors{%s})' % I, "tensors"), ('sum(psd_blocks_touched{%s})' % I, "blocks held")])
newrow("Event loop, limits and authentication")
panel("Event-loop stalls", [('histogram_quantile(%s, sum by (le) (rate(psd_loop_stall_seconds_bucket{%s}[%s])))' % (q, I, R), "p" + q[2:].ljust(2, "0")) for q in ("0.5", "0.99")] +
      [('max(psd_loop_worst_stall_seconds{%s})' % I, "worst ever")], unit="s",
      desc="Busy time of the loop's turns: how long a request may wait before psd looks at it.")
panel("Turns of 10 ms or more /s", [('sum(rate(psd_loop_stall_seconds_count{%s}[%s])) - sum(rate(psd_loop_stall_seconds_bucket{%s,le="0.01"}[%s]))' % (I, R, I, R), "turns >= 10 ms/s"),
                                   ('sum(rate(psd_loop_yields_total{%s}[%s]))' % (I, R), "yields/s")], unit="ops")
panel("Refused and closed connections", [('sum by (reason) (rate(psd_connections_refused_total{%s}[%s]))' % (I, R), "refused: {{reason}}"),
                                         ('sum by (reason) (rate(psd_connections_closed_total{%s}[%s]))' % (I, R), "closed: {{reason}}")], unit="ops")
panel("Authentication", [('sum by (result) (rate(psd_authentications_total{%s}[%s]))' % (I, R), "{{result}}"),
                         ('sum(rate(psd_requests_denied_total{%s}[%s]))' % (I, R), "denied requests"),
                         ('sum(psd_auth_addresses_refused{%s})' % I, "addresses refused now")], unit="ops")
newrow("Checkpoints")
panel("Checkpoint age", [('psd_checkpoint_age_seconds{%s}' % I, "{{instance}}")], unit="s")
panel("Last checkpoint duration", [('psd_checkpoint_last_duration_seconds{%s}' % I, "{{instance}}")], unit="s")
panel("Last checkpoint size", [('psd_checkpoint_last_size_bytes{%s}' % I, "{{instance}}")], unit="bytes")
panel("Checkpoint failures", [('sum by (instance) (increase(psd_checkpoint_failures_total{%s}[1h]))' % I, "{{instance}}")])
y[0] += 8; x_pos[0] = 0

dash = {
    "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                  "pluginId": "prometheus", "pluginName": "Prometheus"}],
    "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": "9.0.0"},
                   {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
                   {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
                   {"type": "panel", "id": "stat", "name": "Stat", "version": ""}],
    "title": "psd parameter server",
    "uid": "psd-overview",
    "description": "psd shards: throughput, latency quantiles, sync round wait, worker lag, memory, checkpoints, event-loop stalls (metrics of psd --metrics-listen).",
    "tags": ["psd", "parameter-server"],
    "timezone": "browser",
    "editable": True,
    "graphTooltip": 1,
    "schemaVersion": 38,
    "version": 1,
    "refresh": "10s",
    "time": {"from": "now-1h", "to": "now"},
    "timepicker": {},
    "annotations": {"list": []},
    "links": [],
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
        {"name": "instance", "label": "Shard", "type": "query",
         "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "query": {"query": "label_values(psd_build_info, instance)", "refId": "instance"},
         "definition": "label_values(psd_build_info, instance)",
         "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "hide": 0,
         "refresh": 2, "regex": "", "sort": 1, "options": []}]},
    "panels": panels,
}
import sys
json.dump(dash, open(sys.argv[1], "w"), indent=2)
open(sys.argv[1], "a").write("\n")
