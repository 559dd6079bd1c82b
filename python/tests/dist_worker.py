"""One worker of test_torch's DistributedOptimizer job (run as a process):
its own initial values and its own data, broadcast_parameters from rank 0,
then Adam through psd.torch.DistributedOptimizer with a StepLR schedule.
Writes its final parameters' bytes and its learning rate to OUT."""
from __future__ import annotations

import sys

import numpy as np
import torch

import psd
import psd.torch as pt


def main(servers: str, rank: int, workers: int, steps: int, out: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(100 + rank)  # every worker starts elsewhere: the broadcast fixes it
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    c = psd.Client(servers, rank=rank, num_workers=workers, staleness=0)
    pt.broadcast_parameters(net, c)
    opt = pt.DistributedOptimizer(torch.optim.Adam(net.parameters(), lr=0.01), c,
                                  net.named_parameters())
    assert isinstance(opt, torch.optim.Adam)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    g = torch.Generator().manual_seed(rank)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(16, 8, generator=g), torch.randn(16, 4, generator=g)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss))
    flat = np.concatenate([p.detach().numpy().ravel() for p in net.parameters()])
    np.save(out, flat)
    with open(out + ".lr", "w") as f:
        f.write(f"{opt.param_groups[0]['lr']!r}\n")
    c.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
