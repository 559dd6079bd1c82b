"""Ctrl-C, threads and close() while calls are held by construction: a sync
round that lacks rank 1's push, a barrier that lacks rank 1, a shard that
accepts but never answers. SIGINT is sent to this process by a helper
thread once the call is seen waiting (Client.waiting), so the interrupt
always lands inside the blocked call."""
from __future__ import annotations

import gc
import os
import signal
import socket
import threading
import time
import weakref

import numpy as np
import pytest

import psd
from conftest import WAIT_S


def until(cond, what):
    deadline = time.monotonic() + WAIT_S
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {WAIT_S} s for {what}")
        time.sleep(0.002)  # pace only


@pytest.fixture
def pair(shards):
    """Ranks 0 and 1 of a sync job of 2 workers, and a tensor 'h' (sgd, lr 1,
    zeros, 3 blocks over 2 shards)."""
    servers = shards(2)
    w0 = psd.Client(servers, rank=0, num_workers=2, staleness=0)
    w1 = psd.Client(servers, rank=1, num_workers=2, staleness=0)
    w0.create("h", 3000, init="zeros", optimizer="sgd", lr=1.0, block_size=1024)
    yield w0, w1
    w0.close()
    w1.close()


def interrupt_when(cond, sent):
    def run():
        until(cond, "the call to be in flight")
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)
    t = threading.Thread(target=run)
    t.start()
    return t


def report(sent, caught, what):
    # A figure, not an assertion: the target is 100 ms (20 ms slices).
    print(f"\n{what}: KeyboardInterrupt {1e3 * (caught - sent[0]):.1f} ms after SIGINT")


def test_ctrl_c_interrupts_a_held_push_pull_and_its_reply_lands_safely(pair):
    w0, w1 = pair
    grad = np.ones(3000, np.float32)
    out = np.zeros(3000, np.float32)
    gref, oref = weakref.ref(grad), weakref.ref(out)
    sent = []
    th = interrupt_when(lambda: w0.waiting == 1, sent)
    with pytest.raises(KeyboardInterrupt):
        w0.push_pull("h", grad, out)
    report(sent, time.monotonic(), "push_pull")
    th.join()
    assert w1.lookup("h").version == 0  # the round was still open: only the signal ended it
    del grad, out
    gc.collect()
    assert gref() is not None and oref() is not None  # the interrupted call holds them
    w1.push("h", np.full(3000, 3.0, np.float32))  # completes the round: the late reply comes
    # The late reply precedes ping's on each connection; the next call after
    # that collects the orphan.
    w0.ping()
    np.testing.assert_array_equal(w0.pull("h"), np.full(3000, -2.0, np.float32))
    gc.collect()
    assert gref() is None and oref() is None
    # Both go on with the next round.
    f = w1.push_async("h", np.ones(3000, np.float32))
    np.testing.assert_array_equal(w0.push_pull("h", np.ones(3000, np.float32)),
                                  np.full(3000, -3.0, np.float32))
    f.wait()


def test_ctrl_c_interrupts_a_barrier(pair):
    w0, w1 = pair
    sent = []
    th = interrupt_when(lambda: w0.waiting == 1, sent)
    with pytest.raises(KeyboardInterrupt):
        w0.barrier()
    report(sent, time.monotonic(), "barrier")
    th.join()
    w1.barrier()  # rank 0's interrupted barrier still counts: this one completes
    f = w0.barrier_async()
    w1.barrier()
    f.wait()


def test_ctrl_c_interrupts_a_future_wait_which_can_wait_again(pair):
    w0, w1 = pair
    f = w0.push_async("h", np.ones(3000, np.float32))
    sent = []
    th = interrupt_when(lambda: w0.waiting == 1, sent)
    with pytest.raises(KeyboardInterrupt):
        f.wait()
    report(sent, time.monotonic(), "Future.wait")
    th.join()
    assert not f.done()
    with pytest.raises(TimeoutError):
        f.wait(timeout=0.05)  # still held: rank 1 has not pushed
    w1.push("h", np.ones(3000, np.float32))
    assert f.wait() is None and f.done() and f.version == 1


def test_ctrl_c_interrupts_a_connect():
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    accepted = []

    def accept():
        conn, _ = lst.accept()  # a "shard" that never says a word
        accepted.append(conn)
    threading.Thread(target=accept).start()
    sent = []
    th = interrupt_when(lambda: accepted, sent)
    with pytest.raises(KeyboardInterrupt):
        psd.Client("127.0.0.1:%d" % lst.getsockname()[1], connect_timeout=30)
    report(sent, time.monotonic(), "connect")
    th.join()
    accepted[0].close()
    lst.close()


def test_gil_is_released_while_waiting(pair):
    """rank 0 waits in push_pull; rank 1's push, made by Python code on
    another thread, is what releases it: with the GIL held by the wait, this
    would never return."""
    w0, w1 = pair
    progress = []

    def other():
        until(lambda: w0.waiting == 1, "rank 0's push-pull")
        progress.extend(range(1000))  # plain Python work while rank 0 waits
        w1.push("h", np.full(3000, 3.0, np.float32))
    t = threading.Thread(target=other)
    t.start()
    out = w0.push_pull("h", np.ones(3000, np.float32))
    t.join()
    assert len(progress) == 1000
    np.testing.assert_array_equal(out, np.full(3000, -2.0, np.float32))


def test_threads_share_a_client(cluster):
    c = psd.Client(cluster)
    n, steps = 8, 40
    for i in range(n):
        c.create(f"t{i}", 5000, init="zeros", optimizer="sgd", lr=1.0, block_size=2048)
    c.create("shared", 5000, init="zeros", optimizer="sgd", lr=1.0, block_size=2048)
    errors = []

    def worker(i):
        try:
            g = np.full(5000, float(i + 1), np.float32)
            out = np.empty(5000, np.float32)
            for s in range(steps):
                c.push_pull(f"t{i}", g, out)
                if out[0] != -(s + 1) * (i + 1) or out[-1] != out[0]:
                    errors.append(f"thread {i} step {s}: {out[0]}")
                c.push("shared", np.ones(5000, np.float32))
                c.pull_async(f"t{i}").wait()
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(repr(e))
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    np.testing.assert_array_equal(c.pull("shared"), np.full(5000, -n * steps, np.float32))
    c.close()


def test_close_while_calls_are_in_flight(pair):
    w0, w1 = pair
    out = np.zeros(3000, np.float32)
    oref = weakref.ref(out)
    fut = w0.push_pull_async("h", np.ones(3000, np.float32), out)
    del out
    blocked = []

    def blocked_call():
        try:
            w0.barrier()
        except psd.Error as e:
            blocked.append(e)
    t = threading.Thread(target=blocked_call)
    t.start()
    until(lambda: w0.waiting == 1, "the barrier to wait")
    w0.close()
    t.join()
    assert len(blocked) == 1 and isinstance(blocked[0], psd.ClosedError)
    with pytest.raises(psd.ClosedError):
        fut.wait()
    del fut
    gc.collect()
    assert oref() is None  # released once the handle was closed
