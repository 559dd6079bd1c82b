"""psd.Client against real shards: round trips, buffers, async forms."""
from __future__ import annotations

import gc
import subprocess
import weakref
from pathlib import Path

import numpy as np
import pytest

import psd
from conftest import PSD_BIN


def sgd(c, name, shape, lr=1.0, init="zeros", **kw):
    kw.setdefault("allow_symmetric", True)
    c.create(name, shape, init=init, optimizer="sgd", lr=lr, **kw)


def test_round_trips(cluster):
    with psd.Client(cluster) as c:
        assert c.num_shards == 2 and c.rank == -1 and not c.closed
        c.ping()
        c.create("w", (30, 20), init="glorot_uniform", optimizer="sgd", lr=0.5, seed=7,
                 block_size=128)
        w0 = c.pull("w")
        assert w0.dtype == np.float32 and w0.shape == (30, 20)
        assert 0.01 < np.abs(w0).max() < 0.5
        g = ((np.arange(600) % 7) - 3).astype(np.float32).reshape(30, 20)
        assert c.push("w", g) is None
        w1 = c.pull("w")
        np.testing.assert_allclose(w1, w0 - 0.5 * g, rtol=0, atol=1e-6)

        # push_pull returns the values after its own update, into out.
        out = np.empty((600,), np.float32)  # any shape of the same size
        assert c.push_pull("w", g, out=out) is out
        np.testing.assert_array_equal(out.reshape(30, 20), c.pull("w"))
        # grad and out may be the same buffer.
        both = g.copy()
        before = c.pull("w")
        c.push_pull("w", both, out=both)
        np.testing.assert_allclose(both, before - 0.5 * g, atol=1e-6)

        # a range of the flattened tensor
        part = c.pull_range("w", 100, count=250)
        np.testing.assert_array_equal(part, c.pull("w").ravel()[100:350])
        dst = np.zeros(10, np.float32)
        assert c.pull_range("w", 590, out=dst) is dst
        np.testing.assert_array_equal(dst, c.pull("w").ravel()[590:])

        info = c.lookup("w")
        assert isinstance(info, psd.TensorInfo)
        assert (info.name, info.shape, info.numel, info.version) == ("w", (30, 20), 600, 3)
        assert info.spec["optimizer"] == "sgd" and info.spec["lr"] == 0.5
        assert info.spec["seed"] == 7 and info.spec["block_size"] == 128
        # The spec round-trips: creating it again is idempotent.
        c.create("w", info.shape, **info.spec)
        assert [t.name for t in c.list()] == ["w"]
        assert c.stats(1)["shard_index"] == 1
        assert c.clock() == 1 and c.clock() == 2
        m = c.metrics()
        assert m["calls"]["push_pull"]["calls"] == 2 and m["push_pull_requests"] >= 2
    assert c.closed
    with pytest.raises(psd.ClosedError):
        c.pull("w")


def test_async_forms(cluster):
    c = psd.Client(cluster)
    f = c.create_async("a", 1000, init="uniform", limit=1.0, optimizer="sgd", lr=1.0, seed=1)
    assert f.wait() is None and f.done()
    pulls = [c.pull_async("a") for _ in range(8)]
    vals = [p.wait() for p in pulls]
    for v in vals[1:]:
        np.testing.assert_array_equal(v, vals[0])
    g = np.full(1000, 0.25, np.float32)
    futs = [c.push_pull_async("a", g) for _ in range(4)] + [c.push_async("a", g)]
    for f in futs:
        f.wait()
    assert futs[-1].version is not None
    np.testing.assert_allclose(c.pull("a"), vals[0] - 5 * 0.25, atol=1e-6)
    assert c.lookup_async("a").wait().numel == 1000
    assert len(c.list_async().wait()) == 1
    assert "shard_index" in c.stats_async(0).wait()
    assert c.ping_async().wait() is None
    assert c.clock_async().wait() == 1
    assert c.pull_range_async("a", 10, count=5).wait().shape == (5,)
    # A failed future raises its error on every wait.
    f = c.pull_async("a", out=np.empty(999, np.float32))
    for _ in range(2):
        with pytest.raises(psd.ShapeError, match="999"):
            f.wait()
    assert f.done() and f.version == 0
    c.close()
    c.close()  # idempotent


def test_torch_tensors_without_copies(cluster):
    torch = pytest.importorskip("torch")
    with psd.Client(cluster) as c:
        sgd(c, "t", (4, 5), lr=1.0)
        p = torch.nn.Parameter(torch.zeros(4, 5))
        c.pull("t", out=p.data)
        g = torch.ones(4, 5)
        d = p.data  # a new view object at every access
        assert c.push_pull("t", g, out=d) is d
        assert torch.equal(p.data, -torch.ones(4, 5))
        # A tensor that requires grad is read through a detached view.
        c.push("t", p)
        assert torch.equal(torch.from_numpy(c.pull("t")), torch.zeros(4, 5))
        with pytest.raises(TypeError, match="float64"):
            c.push("t", torch.zeros(4, 5, dtype=torch.float64))
        with pytest.raises(TypeError, match="non-contiguous"):
            c.pull("t", out=torch.zeros(5, 4).t())


def test_other_dtypes_and_layouts_are_refused_or_converted(cluster):
    with psd.Client(cluster) as c:
        sgd(c, "x", (3, 4))
        for bad in (np.ones((3, 4)), np.ones((4, 3), np.float32).T, [1.0] * 12,
                    np.ones(12, np.float32).astype(">f4")):
            with pytest.raises(TypeError, match="C-contiguous float32"):
                c.push("x", bad)
        ro = np.zeros(12, np.float32)
        ro.flags.writeable = False
        with pytest.raises(TypeError, match="read-only"):
            c.pull("x", out=ro)
        c.push("x", ro)  # an input may be read-only
    with psd.Client(cluster, convert=True) as c:
        assert c.convert
        c.push("x", np.ones((3, 4)))  # float64, converted once
        out = np.zeros((4, 3)).T      # float64 and not contiguous: filled after the call
        assert c.pull("x", out=out) is out
        np.testing.assert_array_equal(out, -np.ones((3, 4)))
        ints = np.zeros((3, 4), np.int64)
        c.push_pull("x", [[1.0] * 4] * 3, out=ints)
        np.testing.assert_array_equal(ints, np.full((3, 4), -2))


def test_buffers_stay_alive_while_in_flight(shards):
    """A sync push-pull of rank 0 is held until rank 1 pushes: its buffers,
    dropped by the caller, stay alive until the reply has come."""
    servers = shards(1)
    w0 = psd.Client(servers, rank=0, num_workers=2, staleness=0)
    w1 = psd.Client(servers, rank=1, num_workers=2, staleness=0)
    sgd(w0, "k", 4096)
    grad = np.ones(4096, np.float32)
    out = np.zeros(4096, np.float32)
    gref, oref = weakref.ref(grad), weakref.ref(out)
    fut = w0.push_pull_async("k", grad, out)
    del grad, out, fut
    gc.collect()
    assert gref() is not None and oref() is not None  # held by the call
    w1.push("k", np.full(4096, 3.0, np.float32))  # completes the round
    # The late reply precedes ping's on the connection; any call after that
    # collects the orphan.
    w0.ping()
    np.testing.assert_array_equal(w0.pull("k"), np.full(4096, -2.0, np.float32))
    gc.collect()
    assert gref() is None and oref() is None
    w0.close()
    w1.close()


def test_fork_child_cannot_use_the_parents_client(cluster):
    import os
    with psd.Client(cluster) as c:
        sgd(c, "f", 10)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                c.pull("f")
                code = 2
            except psd.ClosedError:
                code = 0
            except BaseException:
                code = 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert c.pull("f").shape == (10,)  # the parent's client is untouched


def test_set_delete_reset_tune(cluster):
    with psd.Client(cluster) as c:
        sgd(c, "s", (4, 5), lr=1.0)
        vals = np.arange(20, dtype=np.float32).reshape(4, 5)
        assert c.set("s", vals) is None
        np.testing.assert_array_equal(c.pull("s"), vals)
        c.set("s", np.full(3, -1.0, np.float32), offset=7)
        expect = vals.ravel().copy()
        expect[7:10] = -1
        np.testing.assert_array_equal(c.pull("s").ravel(), expect)
        c.set_async("s", vals, zero_state=True).wait()
        with pytest.raises(psd.InvalidArgumentError, match="NaN"):
            c.set("s", np.full(20, np.nan, np.float32))
        with pytest.raises(TypeError, match="set of 's': values"):
            c.set("s", np.ones(20))
        c.tune("s", lr=0.5)
        assert c.lookup("s").spec["lr"] == 0.5
        np.testing.assert_array_equal(c.push_pull("s", np.ones((4, 5), np.float32)), vals - 0.5)
        with pytest.raises(TypeError, match="only optimizer fields"):
            c.tune("s", seed=3)
        with pytest.raises(psd.SpecError):
            c.tune(None, lr=-1.0)
        c.reset("s")
        np.testing.assert_array_equal(c.pull("s"), np.zeros((4, 5), np.float32))
        c.delete("s")
        with pytest.raises(psd.NotFoundError):
            c.pull("s")
        sgd(c, "s", 3)  # the name is free again, with another shape
        assert c.pull("s").shape == (3,)


def test_delete_and_reset_table(cluster):
    """A sparse table made and read with psctl (the binding has no rows calls),
    emptied and deleted from Python."""
    psctl = str(Path(PSD_BIN).resolve().parents[1] / "client" / "psctl")

    def ctl(*args):
        return subprocess.run([psctl, "-s", cluster, *args], check=True,
                              capture_output=True, text=True).stdout

    ctl("create-table", "emb", "--dim", "2", "--optimizer", "sgd")
    first = ctl("pull-rows", "emb", "--keys", "1,2,3,4,5")
    with psd.Client(cluster) as c:
        def rows():
            return [t["rows"] for s in range(c.num_shards) for t in c.stats(s)["tables"]
                    if t["name"] == "emb"]

        assert sum(rows()) == 5
        assert c.reset_table("emb") is None
        assert rows() == [0, 0]
        assert ctl("pull-rows", "emb", "--keys", "1,2,3,4,5") == first  # made again from the init
        sgd(c, "dense", 3)
        with pytest.raises(psd.BadRequestError, match="is a table, not a tensor"):
            c.delete("emb")
        with pytest.raises(psd.BadRequestError, match="is a tensor, not a table"):
            c.delete_table("dense")
        with pytest.raises(TypeError, match="delete_table"):
            c.delete_table(3)
        c.delete_table("emb")
        assert rows() == []
        with pytest.raises(psd.NotFoundError, match="no shard knows a table"):
            c.delete_table("emb")
        with pytest.raises(psd.NotFoundError, match="no table named 'emb'"):
            c.reset_table("emb")
        assert c.pull("dense").shape == (3,)  # the tensor is untouched
