"""psd.torch against torch.optim: the same model trained by the shards'
optimizer and by torch's, step by step, from the same values."""
from __future__ import annotations

import copy

import numpy as np
import pytest

import psd

torch = pytest.importorskip("torch")
import psd.torch as pt  # noqa: E402

torch.set_num_threads(1)


def model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def batches(n):
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(32, 8, generator=g), torch.randn(32, 4, generator=g)) for _ in range(n)]


def version(c, name):
    """Updates applied to every block of the tensor (a pull's version)."""
    f = c.pull_async(name)
    f.wait()
    return f.version


def rel_diff(a, b):
    return float((a - b).norm() / b.norm())


CASES = {
    "adam": (dict(optimizer="adam", lr=0.01),
             lambda ps: torch.optim.Adam(ps, lr=0.01)),
    "sgd-momentum": (dict(optimizer="momentum", lr=0.05, heavy_ball=True, beta1=0.9),
                     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)),
    "rmsprop": (dict(optimizer="rmsprop", lr=0.01, beta1=0.99, eps=1e-8),
                lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.99, eps=1e-8)),
}


@pytest.mark.parametrize("overlap", [True, False], ids=["hooks", "step"])
@pytest.mark.parametrize("case", list(CASES))
def test_server_optimizer_matches_torch_optim(shards, case, overlap):
    spec, make_ref = CASES[case]
    c = psd.Client(shards(2), rank=0, num_workers=1, staleness=0)
    net = model()
    opt = pt.ServerOptimizer(net.named_parameters(), c, init="glorot_uniform", seed=5,
                             overlap=overlap, **spec)
    ref = copy.deepcopy(net)  # starts from the values psd initialized
    ref_opt = make_ref(ref.parameters())
    for x, y in batches(100):
        for m, o in ((net, opt), (ref, ref_opt)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    worst = max(rel_diff(p, q) for p, q in zip(net.parameters(), ref.parameters()))
    print(f"\n{case} ({'hooks' if overlap else 'step'}): largest relative difference "
          f"after 100 steps {worst:.2e}")
    assert worst <= 1e-6
    moved = sum(rel_diff(p, q) for p, q in zip(net.parameters(), model().parameters()))
    assert moved > 0.01  # it did train
    assert {version(c, n) for n, _ in net.named_parameters()} == {100}
    c.close()


def test_server_optimizer_state_dict(shards):
    c = psd.Client(shards(1), rank=0, num_workers=1, staleness=0)
    net = model()
    opt = pt.ServerOptimizer(net.named_parameters(), c, optimizer="sgd", lr=0.1,
                             init="he_normal", prefix="m.")
    sd = opt.state_dict()
    assert sorted(sd["tensors"]) == ["m.0.bias", "m.0.weight", "m.2.bias", "m.2.weight"]
    for (name, p) in net.named_parameters():
        assert torch.equal(sd["tensors"]["m." + name].reshape(p.shape), p.detach())
    c.close()


def test_server_optimizer_refuses_a_second_gradient(shards):
    c = psd.Client(shards(1), rank=0, num_workers=1, staleness=0)
    net = model()
    opt = pt.ServerOptimizer(net.named_parameters(), c, optimizer="sgd", lr=0.1,
                             init="he_normal")
    x, y = batches(1)[0]
    torch.nn.functional.mse_loss(net(x), y).backward()
    with pytest.raises(RuntimeError, match="backward_passes_per_step"):
        torch.nn.functional.mse_loss(net(x), y).backward()
    opt.remove_hooks()
    c.close()


def test_accumulation_over_two_passes_is_one_update(shards):
    c = psd.Client(shards(1), rank=0, num_workers=1, staleness=0)
    net = model()
    opt = pt.ServerOptimizer(net.named_parameters(), c, optimizer="sgd", lr=0.1,
                             init="he_normal", backward_passes_per_step=2)
    before = [p.detach().clone() for p in net.parameters()]
    (x1, y1), (x2, y2) = batches(2)
    torch.nn.functional.mse_loss(net(x1), y1).backward()
    torch.nn.functional.mse_loss(net(x2), y2).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    opt.step()
    for p, b, g in zip(net.parameters(), before, grads):
        np.testing.assert_allclose(p.detach().numpy(), (b - 0.1 * g).numpy(), atol=1e-6)
    assert {version(c, n) for n, _ in net.named_parameters()} == {1}
    c.close()


def test_distributed_optimizer_is_bit_identical_on_4_workers(shards, tmp_path):
    """4 processes, each from its own initial values and data: after
    broadcast_parameters and 12 steps of Adam on gradients averaged by the
    shards (optimizer none), every worker holds the same bytes."""
    import subprocess
    import sys
    from pathlib import Path
    servers = shards(2)
    worker = Path(__file__).with_name("dist_worker.py")
    outs = [str(tmp_path / f"w{r}.npy") for r in range(4)]
    procs = [subprocess.Popen([sys.executable, str(worker), servers, str(r), "4", "12", outs[r]])
             for r in range(4)]
    for p in procs:
        assert p.wait() == 0
    finals = [np.load(o) for o in outs]
    for f in finals[1:]:
        assert f.tobytes() == finals[0].tobytes()
    lrs = {open(o + ".lr").read() for o in outs}
    assert lrs == {"0.0025\n"}  # StepLR(5, 0.5) after 12 steps, on the wrapped optimizer
    # It trained from rank 0's values (not from rank 1's own seed).
    torch.manual_seed(100)
    start = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    flat0 = np.concatenate([p.detach().numpy().ravel() for p in start.parameters()])
    assert 0 < np.abs(finals[0] - flat0).max() < 1


def test_server_optimizer_keeps_the_modules_values_and_loads_a_state(shards):
    c = psd.Client(shards(2), rank=0, num_workers=1, staleness=0)
    net = model()
    start = copy.deepcopy(net)
    opt = pt.ServerOptimizer(net.named_parameters(), c, optimizer="adam", lr=0.01)  # init=None
    for p, q in zip(net.parameters(), start.parameters()):
        assert torch.equal(p, q)  # the module's own values, now on the shards
    ref = copy.deepcopy(net)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    data = batches(20)
    for x, y in data[:10]:
        for m, o in ((net, opt), (ref, ref_opt)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    assert max(rel_diff(p, q) for p, q in zip(net.parameters(), ref.parameters())) <= 1e-6
    saved = opt.state_dict()
    for x, y in data[10:]:
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    opt.load_state_dict(saved)
    for (name, p) in net.named_parameters():
        assert torch.equal(p.detach(), saved["tensors"][name].reshape(p.shape))
    c.close()


def test_broadcast_parameters_from_a_tool(shards):
    """A single process (a tool, rank -1) may broadcast too: it is the root."""
    c = psd.Client(shards(1))
    net = model()
    pt.broadcast_parameters(net, c)
    other = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    sd = net.state_dict()
    for name, t in other.state_dict().items():
        c.pull("broadcast." + name, out=t)
        assert torch.equal(t, sd[name])
    c.close()
