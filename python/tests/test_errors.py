"""Every PS_E* code is a psd.Error subclass carrying the sentence; the ones
a real shard or the library can be made to return are raised for real."""
from __future__ import annotations

import os
import re
import socket

import numpy as np
import pytest

import psd
from conftest import ROOT


def header_codes() -> dict[str, int]:
    text = (ROOT / "common" / "include" / "psd_types.h").read_text()
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"(PS_E[A-Z]+) = (-\d+)", text)}


def test_every_code_has_its_class():
    codes = header_codes()
    assert len(codes) >= 25
    assert set(psd.ERRORS) == set(codes.values())
    for name, code in codes.items():
        cls = psd.ERRORS[code]
        assert issubclass(cls, psd.Error) and cls.code == code and cls.errname == name
        assert cls.__name__ in psd.__all__ and getattr(psd, cls.__name__) is cls
        e = cls("what the shard said", code)
        assert str(e) == "what the shard said" and e.code == code
        assert str(cls()) == psd.strerror(code)  # no sentence: the code's name
    # Built-in bases where they mean the same thing.
    assert issubclass(psd.NotFoundError, LookupError)
    assert issubclass(psd.ShapeError, ValueError) and issubclass(psd.SpecError, ValueError)
    assert issubclass(psd.TimedOutError, TimeoutError)
    assert issubclass(psd.ConnectError, ConnectionError)
    assert issubclass(psd.AuthError, PermissionError)


def test_errors_from_real_shards(shards):
    servers = shards(1, "--max-memory", "2M")
    c = psd.Client(servers)
    with pytest.raises(psd.InvalidArgumentError, match="name is empty"):
        c.create("", 3)
    c.create("w", 1000, init="zeros", optimizer="sgd", lr=1.0)
    with pytest.raises(psd.NotFoundError, match="no tensor named 'nope'"):
        c.pull("nope")
    with pytest.raises(psd.ExistsError, match="different spec.*lr"):
        c.create("w", 1000, init="zeros", optimizer="sgd", lr=2.0)
    with pytest.raises(psd.SpecError, match="lr must be in"):
        c.create("q", 10, optimizer="sgd", lr=-1)
    with pytest.raises(psd.ShapeError, match="count 999"):
        c.push("w", np.ones(999, np.float32))
    with pytest.raises(psd.GradientError, match="NaN"):
        c.push("w", np.full(1000, np.nan, np.float32))
    with pytest.raises(psd.ServerIOError, match="without --data-dir"):
        c.checkpoint()
    c.create("big", 1 << 22, init="zeros", optimizer="sgd")
    with pytest.raises(psd.ResourceError, match="memory ceiling"):
        c.pull("big")
    with pytest.raises(ValueError, match="unknown optimizer"):
        c.create("z", 3, optimizer="nadam")
    with pytest.raises(TypeError, match="unexpected keyword argument 'lrr'"):
        c.create("z", 3, lrr=0.1)

    w0 = psd.Client(servers, rank=0, num_workers=2, staleness=0)
    with pytest.raises(psd.WrongShardError, match="job mismatch"):
        psd.Client(servers, rank=1, num_workers=3)
    with pytest.raises(psd.PermissionDeniedError, match="rank 0 is held"):
        psd.Client(servers, rank=0, num_workers=2)
    w1 = psd.Client(servers, rank=1, num_workers=2, staleness=0)
    # rank 0's sync push is held until rank 1 pushes; a second push of the
    # same block in the same round is refused meanwhile.
    held = w0.push_async("w", np.ones(1000, np.float32))
    with pytest.raises(psd.BusyError, match="already pushed"):
        w0.push("w", np.ones(1000, np.float32))
    w1.push("w", np.ones(1000, np.float32))
    held.wait()
    w0.close()
    # The call's own deadline: rank 1 never pushes, so this push cannot
    # complete (only this handle has the short deadline).
    t0 = psd.Client(servers, rank=0, num_workers=2, staleness=0, timeout=0.3)
    with pytest.raises(psd.TimedOutError, match="timed out after 300 ms"):
        t0.push("w", np.ones(1000, np.float32))
    t0.close()
    w1.close()
    with pytest.raises(psd.ClosedError):
        w1.ping()
    c.close()
    with pytest.raises(psd.ClosedError):
        c.pull("w")


def test_connect_and_auth_errors(shards, tmp_path):
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    port = lst.getsockname()[1]
    lst.close()  # nothing listens there now
    with pytest.raises(psd.ConnectError, match=f"127.0.0.1:{port}"):
        psd.Client(f"127.0.0.1:{port}", connect_timeout=0.5)
    with pytest.raises(psd.InvalidArgumentError, match="bad server list"):
        psd.Client("no-port-here")

    good, bad = tmp_path / "worker.token", tmp_path / "wrong.token"
    for f, tok in ((good, "a-worker-token-of-enough-bytes"), (bad, "another-token-of-enough-bytes")):
        f.write_text(tok)
        os.chmod(f, 0o600)
    servers = shards(1, "--token-file", f"worker={good}")
    with psd.Client(servers, rank=0, num_workers=1, token_file=good) as c:
        c.ping()
    with pytest.raises(psd.AuthError):
        psd.Client(servers, rank=0, num_workers=1, token_file=bad)


def test_jobs_and_a_job_ended(shards):
    servers = shards(1)
    a, b = psd.Client(servers, job="a"), psd.Client(servers, job="b")
    assert a.job == "a"
    a.create("w", 3, init="zeros", optimizer="sgd", allow_symmetric=True)
    assert [t.name for t in a.list()] == ["w"] and b.list() == []
    b.create("v", 3, init="zeros", optimizer="sgd", allow_symmetric=True)
    assert [t.name for t in b.list()] == ["v"] and [t.name for t in a.list()] == ["w"]
    w0 = psd.Client(servers, job="j", rank=0, num_workers=2, staleness=0)
    w1 = psd.Client(servers, job="j", rank=1, num_workers=2, staleness=0)
    w0.create("h", 10, init="zeros", optimizer="sgd", allow_symmetric=True)
    held = w0.push_async("h", np.ones(10, np.float32))  # rank 1 never pushes
    assert {"a", "b", "j"} <= {j["name"] for j in a.jobs()}
    a.job_end("j")
    with pytest.raises(psd.JobEndedError):
        held.wait()
    for c in (a, b, w0, w1):
        c.close()
