"""psd.torch: train PyTorch models through psd.

Two ways, as with BytePS and Horovod:

- :class:`ServerOptimizer`: the shards run the optimizer. Every parameter is
  a psd tensor; as backward produces each gradient, a hook pushes it and
  asks for the new weights (an asynchronous push-pull per parameter, so the
  transfers of the last layers overlap the backward pass of the first ones);
  ``step()`` waits for them and the new weights land in the parameters.
- :func:`DistributedOptimizer`: averaging only. The shards hold psd tensors
  with ``optimizer="none"`` (``psd --optimizer none``): in sync mode a
  push-pull returns the round's rank-ordered average of the workers'
  gradients, written into ``p.grad``; then the wrapped torch optimizer
  steps locally. Any torch optimizer and LR scheduler work unchanged, and
  every worker ends each step with bit-identical parameters.

:func:`broadcast_parameters` makes every worker start from rank 0's values.
Tensors cross without copies: psd reads ``p.grad`` and writes ``p.data``
through their numpy views.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch

from . import Client, Future

__all__ = ["ServerOptimizer", "DistributedOptimizer", "broadcast_parameters"]

NamedTensors = Union[torch.nn.Module, Mapping[str, torch.Tensor],
                     Iterable[Tuple[str, torch.Tensor]]]


def _named(params: NamedTensors) -> List[Tuple[str, torch.Tensor]]:
    if isinstance(params, torch.nn.Module):
        return list(params.state_dict(keep_vars=True).items())
    if isinstance(params, Mapping):
        return list(params.items())
    return list(params)


def _shape(t: torch.Tensor) -> Tuple[int, ...]:
    return tuple(t.shape) if t.dim() > 0 else (1,)


def _root_sets_then_all_pull(client: Client, pairs: List[Tuple[str, torch.Tensor]],
                             root_rank: int = 0) -> None:
    """The root writes every tensor's values into psd, the workers meet at a
    barrier, then every other worker reads them back into its tensors."""
    is_root = client.rank in (root_rank, -1)
    if is_root:
        futs = [client.set_async(name, _float32(t)) for name, t in pairs]
        for f in futs:
            f.wait()
    if client.rank >= 0 and client.num_workers > 1:
        client.barrier()
    if not is_root:
        _pull_into(client, pairs)


def _float32(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()


def _pull_into(client: Client, pairs: List[Tuple[str, torch.Tensor]]) -> None:
    futs = []
    for name, t in pairs:
        if t.dtype == torch.float32 and t.is_contiguous():
            futs.append((client.pull_async(name, out=t.data), None, None))
        else:
            tmp = torch.empty(t.shape, dtype=torch.float32)
            futs.append((client.pull_async(name, out=tmp), t, tmp))
    for f, t, tmp in futs:
        f.wait()
        if t is not None:
            with torch.no_grad():
                t.copy_(tmp)


def broadcast_parameters(params: NamedTensors, client: Client, root_rank: int = 0, *,
                         prefix: str = "broadcast.") -> None:
    """Give every worker root_rank's values of ``params`` (a module, its
    state_dict, or (name, tensor) pairs): the root sets psd tensors named
    ``prefix + name``, the others pull them. Every worker of the job calls
    it with the same names in the same order."""
    pairs = [(prefix + n, t) for n, t in _named(params)]
    for name, t in pairs:
        client.create(name, _shape(t), init="zeros", optimizer="sgd", allow_symmetric=True)
    _root_sets_then_all_pull(client, pairs, root_rank)


class _Hooks:
    """Gradient-accumulator hooks that start a push-pull as soon as a
    parameter's gradient is complete (after ``passes`` backward passes)."""

    def __init__(self, params: List[Tuple[str, torch.nn.Parameter]],
                 start: Callable[[int], Future], passes: int) -> None:
        self.params = params
        self.start = start
        self.passes = passes
        self.counts = [0] * len(params)
        self.futures: List[Optional[Future]] = [None] * len(params)
        self.handles = []
        for i, (_, p) in enumerate(params):
            # The AccumulateGrad node runs once p.grad holds this pass's sum.
            acc = p.expand_as(p).grad_fn.next_functions[0][0]
            self.handles.append((acc, acc.register_hook(self._hook(i))))

    def _hook(self, i: int) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            self.counts[i] += 1
            if self.counts[i] > self.passes:
                name = self.params[i][0]
                raise RuntimeError(
                    f"psd: {name} got gradients from more backward passes than "
                    f"backward_passes_per_step={self.passes} before step()")
            if self.counts[i] == self.passes:
                self.futures[i] = self.start(i)
        return hook

    def finish(self, start_missing: Callable[[int], Future]) -> None:
        """Start what the hooks did not (no gradient, or hooks bypassed),
        wait for everything, and reset for the next step."""
        for i, f in enumerate(self.futures):
            if f is None:
                self.futures[i] = start_missing(i)
        try:
            for f in self.futures:
                f.wait()
        finally:
            self.futures = [None] * len(self.params)
            self.counts = [0] * len(self.params)

    def remove(self) -> None:
        for _, h in self.handles:
            h.remove()
        self.handles = []


class ServerOptimizer:
    """The shards optimize: every parameter becomes a psd tensor.

    ``ServerOptimizer(model.named_parameters(), client, optimizer="adam",
    lr=1e-3, init=None, **spec)``. ``optimizer``, ``lr`` and ``spec`` are
    Client.create's (docs/math.md; psd's momentum with ``heavy_ball=True,
    beta1=mu`` is torch's SGD momentum, rmsprop's ``beta1`` torch's alpha).
    ``init=None`` keeps the module's own initial values (rank 0 sets them,
    the others pull them); an initializer name ("he_normal", ...) uses
    psd's, and every worker pulls the result. ``prefix`` is put before
    every tensor name. ``step()`` waits for the push-pulls the backward
    hooks started (or starts them), writes the new weights into the
    parameters and ends the worker's iteration (``client.clock()``)."""

    def __init__(self, named_parameters: Iterable[Tuple[str, torch.nn.Parameter]],
                 client: Client, optimizer: str = "adam", lr: Optional[float] = None,
                 init: Optional[str] = None, *, prefix: str = "", overlap: bool = True,
                 backward_passes_per_step: int = 1, clock: bool = True, **spec: Any) -> None:
        self.client = client
        self.params = [(prefix + n, p) for n, p in named_parameters if p.requires_grad]
        if not self.params:
            raise ValueError("ServerOptimizer: no parameter requires a gradient")
        self.clock = clock
        for name, p in self.params:
            kw = dict(spec)
            if init is None:
                kw.update(init="zeros", allow_symmetric=True)
            else:
                kw["init"] = init
            client.create(name, _shape(p), optimizer=optimizer, lr=lr, **kw)
        if init is None:
            _root_sets_then_all_pull(client, self.params)
        else:
            _pull_into(client, self.params)
        self._hooks = _Hooks(self.params, self._push_pull, backward_passes_per_step) \
            if overlap else None

    def _push_pull(self, i: int) -> Future:
        name, p = self.params[i]
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        # The new weights go straight into the parameter's memory.
        return self.client.push_pull_async(name, grad, out=p.data)

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        loss = closure() if closure is not None else None
        if self._hooks is not None:
            self._hooks.finish(self._push_pull)
        else:
            futs = [self._push_pull(i) for i in range(len(self.params))]
            for f in futs:
                f.wait()
        if self.clock:
            self.client.clock()
        return loss

    def zero_grad(self, set_to_none: bool = False) -> None:
        for _, p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_()
                p.grad.zero_()

    def state_dict(self) -> Dict[str, Any]:
        """The psd tensors' current values (pulled), by tensor name."""
        futs = {name: self.client.pull_async(name) for name, _ in self.params}
        return {"tensors": {n: torch.from_numpy(f.wait()) for n, f in futs.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Rank 0 sets the psd tensors from ``state`` (a state_dict()), then
        every worker pulls them into its parameters."""
        tensors = state["tensors"]
        pairs = [(name, torch.as_tensor(tensors[name]).reshape(p.shape))
                 for name, p in self.params]
        _root_sets_then_all_pull(self.client, pairs)
        _pull_into(self.client, self.params)

    def remove_hooks(self) -> None:
        if self._hooks is not None:
            self._hooks.remove()
            self._hooks = None

    def __repr__(self) -> str:
        return f"psd.torch.ServerOptimizer({len(self.params)} tensors on {self.client.servers})"


class _DistributedMixin:
    """Methods DistributedOptimizer adds to a subclass of the wrapped
    optimizer's class (so isinstance and LR schedulers see a torch
    optimizer of the same kind)."""

    def _psd_setup(self, client: Client, named_parameters: Optional[Iterable],
                   prefix: str, passes: int) -> None:
        if client.rank < 0 or client.staleness != 0:
            raise ValueError("DistributedOptimizer averages in sync mode: the client must be a "
                             "worker (rank >= 0) with staleness=0")
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        if named_parameters is not None:
            names = {id(p): n for n, p in named_parameters}
            missing = [p for p in params if id(p) not in names]
            if missing:
                raise ValueError(f"DistributedOptimizer: {len(missing)} parameters of the "
                                 "optimizer are not in named_parameters")
            named = [(prefix + names[id(p)], p) for p in params]
        else:
            named = [(f"{prefix}{i}", p) for i, p in enumerate(params)]
        self._psd_client = client
        self._psd_params = named
        for name, p in named:
            client.create(name, _shape(p), init="zeros", optimizer="none")
        self._psd_hooks = _Hooks(named, self._psd_average, passes)

    def _psd_average(self, i: int) -> Future:
        name, p = self._psd_params[i]
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        # The round's average replaces the gradient in place.
        return self._psd_client.push_pull_async(name, p.grad, out=p.grad)

    def synchronize(self) -> None:
        """Average every gradient across the workers (waits for the hooks'
        push-pulls and makes the missing ones)."""
        self._psd_hooks.finish(self._psd_average)

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        self.synchronize()
        return super().step(closure)  # type: ignore[misc]


def DistributedOptimizer(optimizer: torch.optim.Optimizer, client: Client,
                         named_parameters: Optional[Iterable[Tuple[str, Any]]] = None, *,
                         prefix: str = "grad.", backward_passes_per_step: int = 1
                         ) -> torch.optim.Optimizer:
    """Wrap a torch optimizer: gradients are averaged across the workers
    through psd (tensors ``prefix + name`` with optimizer "none"), then
    ``optimizer``'s own step runs. Returns an optimizer of a subclass of
    ``optimizer``'s class with the same parameter groups and state. Start
    every worker from the same values (broadcast_parameters)."""
    cls = type(optimizer.__class__.__name__, (_DistributedMixin, optimizer.__class__), {})
    dist = cls.__new__(cls)
    optimizer.__class__.__init__(dist, optimizer.param_groups)  # hyperparameters per group
    dist.defaults = optimizer.defaults
    dist.state.update(optimizer.state)
    dist._psd_setup(client, named_parameters, prefix, backward_passes_per_step)
    return dist
