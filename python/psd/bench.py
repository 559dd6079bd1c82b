"""The Python worker of psd-bench: the C benchmark's worker loop, through
the psd package, so that psd-bench --python can print the Python rows
beside the C ones (same shards, same tensor, same measurement).

    python -m psd.bench --servers LIST --elements N --mode push-pull
                        --depth D --seconds S

creates tensor "bench" (glorot_uniform, Adam), pulls it once (connections,
lazy block init), then keeps `depth` operations in flight for S seconds and
prints one line: ops/s, p50 and p99 latency in microseconds (depth 1 only;
nan otherwise). Depth 1 uses the blocking call, as a trainer would.
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

import psd


def run(servers: str, n: int, mode: str, depth: int, seconds: float) -> tuple:
    c = psd.Client(servers, rank=-1)
    c.create("bench", (n,), init="glorot_uniform", optimizer="adam")
    g = [(1e-3 * ((np.arange(n) % 13) - 6)).astype(np.float32) for _ in range(depth)]
    v = [np.empty(n, np.float32) for _ in range(depth)]
    c.pull("bench", out=v[0])
    clock = time.perf_counter
    lat = []
    ops = 0
    if depth == 1:
        g0, v0 = g[0], v[0]
        if mode == "push-pull":
            call = lambda: c.push_pull("bench", g0, v0)  # noqa: E731
        elif mode == "push":
            call = lambda: c.push("bench", g0)  # noqa: E731
        else:
            call = lambda: c.pull("bench", v0)  # noqa: E731
        t0 = clock()
        t = t0
        while t - t0 < seconds:
            call()
            t1 = clock()
            lat.append(t1 - t)
            t = t1
            ops += 1
        el = t - t0
    else:
        start = {"push-pull": lambda i: c.push_pull_async("bench", g[i], v[i]),
                 "push": lambda i: c.push_async("bench", g[i]),
                 "pull": lambda i: c.pull_async("bench", v[i])}[mode]
        ring = [start(i) for i in range(depth)]
        t0 = clock()
        slot = 0
        while clock() - t0 < seconds:
            ring[slot].wait()
            ops += 1
            ring[slot] = start(slot)
            slot = (slot + 1) % depth
        for f in ring:
            f.wait()
        el = clock() - t0
    c.close()
    if not lat:
        return ops / el, math.nan, math.nan
    lat.sort()
    return ops / el, lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m psd.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--servers", required=True)
    ap.add_argument("--elements", type=int, required=True)
    ap.add_argument("--mode", choices=("push", "pull", "push-pull"), default="push-pull")
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=2.0)
    a = ap.parse_args(argv)
    ops, p50, p99 = run(a.servers, a.elements, a.mode, a.depth, a.seconds)
    print(f"{ops:.3f} {p50:.3f} {p99:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
