"""Fixtures of the psd Python tests: real psd shards on ephemeral loopback
ports, started and stopped by PID.

The shard binary is $PSD_BIN, else the repository's build/server/psd. Each
test's shards log into pytest's tmp_path. Nothing waits on a timer to decide
an outcome: a shard is up once it logs its port; held calls are held by
construction (a sync round missing a worker's push, a barrier missing a
worker) and released by the test.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PSD_BIN = os.environ.get("PSD_BIN") or str(ROOT / "build" / "server" / "psd")
WAIT_S = float(os.environ.get("PSD_TEST_WAIT_S", "120"))  # a hang becomes a failure


class Shard:
    def __init__(self, log: Path, args: list[str]):
        self.log = log
        self.logf = open(log, "wb")
        self.proc = subprocess.Popen([PSD_BIN, "--listen", "127.0.0.1:0", *args],
                                     stdout=subprocess.DEVNULL, stderr=self.logf)
        self.port = 0
        deadline = time.monotonic() + WAIT_S
        while self.port == 0:
            m = re.search(rb"listening on 127\.0\.0\.1:(\d+)", log.read_bytes())
            if m:
                self.port = int(m.group(1))
            elif self.proc.poll() is not None:
                raise RuntimeError(f"psd exited: {log.read_text()}")
            elif time.monotonic() > deadline:
                raise RuntimeError(f"psd did not start: {log.read_text()}")
            else:
                time.sleep(0.01)  # pace only: the log line decides
        self.addr = f"127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


@pytest.fixture
def shards(tmp_path):
    """shards(n, *args) -> server list string of n new shards."""
    started: list[Shard] = []

    def start(n: int = 1, *args: str) -> str:
        new = [Shard(tmp_path / f"psd-{len(started) + i}.log", list(args)) for i in range(n)]
        started.extend(new)
        return ",".join(s.addr for s in new)

    start.started = started
    yield start
    for s in started:
        s.stop()


@pytest.fixture
def cluster(shards):
    """Two fresh shards."""
    return shards(2)
