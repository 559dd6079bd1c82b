"""psd: the Python client of the psd parameter server.

A C extension (psd._core) over libpsd, the worker library C trainers link::

    import numpy as np, psd

    with psd.Client("127.0.0.1:7070", rank=0, num_workers=1) as c:
        c.create("w", (256, 784), init="he_normal", optimizer="adam", lr=1e-3)
        w = c.pull("w")                      # numpy float32, shape (256, 784)
        g = np.ones_like(w)
        c.push_pull("w", g, out=w)           # push a gradient, new weights into w

Arrays cross without a copy: C-contiguous float32 numpy arrays and CPU torch
tensors (through their numpy() view). Other dtypes and layouts raise
TypeError unless the client was made with ``convert=True``. Every call
releases the GIL while it waits, and Ctrl-C interrupts it. Errors are
psd.Error subclasses, one per PS_E* code. PyTorch integration: psd.torch.
"""
from __future__ import annotations

import json as _json
from dataclasses import dataclass, field
from typing import Any, Callable, Tuple

import numpy as _np

from . import _core
from ._errors import *  # noqa: F401,F403  (the exception classes)
from ._errors import ERRORS, Error

__version__ = _core.LIBPSD_VERSION

Client = _core.Client
Future = _core.Future
strerror = _core.strerror


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the shards describe it. ``spec`` holds the same keywords
    Client.create takes, so ``c.create(i.name, i.shape, **i.spec)`` is
    idempotent."""

    name: str
    shape: Tuple[int, ...]
    numel: int
    version: int
    spec: dict = field(default_factory=dict)


def _describe(obj: Any) -> str:
    """What an unacceptable buffer is, for the TypeError."""
    dtype = getattr(obj, "dtype", None)
    kind = type(obj).__module__.split(".")[0] + "." + type(obj).__qualname__
    if dtype is None:
        return f"a {kind}"
    what = [str(dtype)]
    device = getattr(obj, "device", None)
    if device is not None and getattr(device, "type", "cpu") != "cpu":
        what.insert(0, f"{device}")
    contiguous = getattr(obj, "is_contiguous", None)
    flags = getattr(obj, "flags", None)
    if (callable(contiguous) and not contiguous()) or (
            flags is not None and not flags["C_CONTIGUOUS"]):
        what.insert(0, "non-contiguous")
    if flags is not None and not flags["WRITEABLE"]:
        what.insert(0, "read-only")
    shape = tuple(getattr(obj, "shape", ()))
    return f"a {' '.join(what)} {kind} of shape {shape}"


def _as_numpy(obj: Any) -> _np.ndarray:
    if type(obj).__module__.startswith("torch"):
        return obj.detach().cpu().numpy()
    return _np.asarray(obj)


def _to_float32(obj: Any) -> _np.ndarray:
    """convert=True, for an input: one contiguous float32 copy."""
    return _np.ascontiguousarray(_as_numpy(obj), dtype=_np.float32)


def _staging(obj: Any) -> Tuple[_np.ndarray, Callable[[_np.ndarray], None]]:
    """convert=True, for an output: a float32 array psd writes into, and
    the function that copies it into obj once the call is done."""
    if type(obj).__module__.startswith("torch"):
        import torch
        tmp = _np.empty(tuple(obj.shape), dtype=_np.float32)

        def finish(a: _np.ndarray) -> None:
            with torch.no_grad():
                obj.copy_(torch.from_numpy(a))
        return tmp, finish
    target = _np.asarray(obj)
    if not target.flags["WRITEABLE"]:
        raise TypeError(f"psd: out is {_describe(obj)}, and psd cannot write into it")
    tmp = _np.empty(target.shape, dtype=_np.float32)

    def finish(a: _np.ndarray) -> None:
        _np.copyto(target, a, casting="unsafe")
    return tmp, finish


def _empty(shape: Tuple[int, ...]) -> _np.ndarray:
    return _np.empty(shape, dtype=_np.float32)


_core._setup(errors=dict(ERRORS), error_base=Error, tensor_info=TensorInfo, empty=_empty,
             to_float32=_to_float32, staging=_staging, describe=_describe,
             json_loads=_json.loads)

__all__ = ["Client", "Future", "TensorInfo", "strerror", "Error"] + \
    [c.__name__ for c in ERRORS.values()]
