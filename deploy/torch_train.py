#!/usr/bin/env python3
"""torch_train.py -- psd-train's job in PyTorch: a 784-256-128-10 ReLU MLP on
Fashion-MNIST (Debian's dataset-fashion-mnist), one worker process.

Three ways to make the workers agree, chosen with --trainer:
  server  psd.torch.ServerOptimizer: psd's shards run Adam; the gradient
          hooks push-pull layer by layer while backward runs
  dist    psd.torch.DistributedOptimizer: psd's shards average the
          gradients (optimizer "none"), torch.optim.Adam steps locally
  ddp     torch.nn.parallel.DistributedDataParallel over gloo, no psd
Everything else is the same: the data (pixels / 255, standardized with the
training set's mean and deviation, as psd-train does; worker r takes images
r, r+W, r+2W, ...), the model and its initial values (torch's default init
from --seed, the same on every worker), the batch per worker, the epochs,
Adam's learning rate, one torch thread per process.

Rank 0 evaluates on the test set after every epoch and prints
  epoch E/N loss L train_acc A test_acc T elapsed S
then `final test accuracy: T`; --csv appends (config,epoch,elapsed,test_acc,
loss) rows. deploy/run-local.sh --trainer torch runs it against psd shards;
deploy/torch-vs-ddp.sh runs all three and compares them.
"""
from __future__ import annotations

import argparse
import gzip
import os
import struct
import sys
import time

import numpy as np
import torch

DATA_DIR = "/usr/share/datasets/fashion-mnist"


def idx(path: str) -> np.ndarray:
    """An IDX file (gzipped or not), as psd-train's reader takes it."""
    if not os.path.exists(path) and path.endswith(".gz"):
        path = path[:-3]
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(data_dir: str, split: str, limit: int, rank: int, workers: int):
    try:
        x = idx(f"{data_dir}/{split}-images-idx3-ubyte.gz")
        y = idx(f"{data_dir}/{split}-labels-idx1-ubyte.gz")
    except FileNotFoundError:
        sys.exit(f"torch_train: no {split} images in {data_dir} "
                 "(install dataset-fashion-mnist or pass --data DIR)")
    if limit > 0:
        x, y = x[:limit], y[:limit]
    x = x.reshape(len(x), -1).astype(np.float32) / 255.0
    return x, y.astype(np.int64), x[rank::workers], y[rank::workers].astype(np.int64)


def model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 128), torch.nn.ReLU(),
                               torch.nn.Linear(128, 10))


def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def setup(a, net):
    """The optimizer of the chosen trainer, and the client to close (psd)."""
    if a.trainer == "ddp":
        torch.distributed.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{a.ddp_port}", rank=a.rank,
            world_size=a.workers)
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        return ddp, torch.optim.Adam(ddp.parameters(), lr=a.lr), None
    import psd
    import psd.torch as pt
    client = psd.Client(a.servers, rank=a.rank, num_workers=a.workers, staleness=0,
                        job=a.job, identity=f"torch_train {a.trainer} rank {a.rank}")
    if a.trainer == "server":
        opt = pt.ServerOptimizer(net.named_parameters(), client, optimizer="adam", lr=a.lr,
                                 init=a.psd_init, prefix="torch.")
    else:
        pt.broadcast_parameters(net, client, prefix="torch.init.")
        opt = pt.DistributedOptimizer(torch.optim.Adam(net.parameters(), lr=a.lr), client,
                                      net.named_parameters(), prefix="torch.grad.")
    return net, opt, client


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trainer", choices=("server", "dist", "ddp"), required=True)
    ap.add_argument("--rank", type=int, default=int(os.environ.get("PS_WORKER_RANK", 0)))
    ap.add_argument("--workers", type=int, default=int(os.environ.get("PS_NUM_WORKERS", 1)))
    ap.add_argument("--servers", default=os.environ.get("PS_SERVERS"))
    ap.add_argument("--job", default=None)
    ap.add_argument("--ddp-port", type=int, default=29500)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=64, help="minibatch per worker")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--train-limit", type=int, default=0)
    ap.add_argument("--test-limit", type=int, default=0)
    ap.add_argument("--data", default=DATA_DIR)
    ap.add_argument("--psd-init", default=None,
                    help="server: psd's initializer for every tensor instead of the module's "
                    "values")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--config", default=None, help="the csv's config column (the trainer)")
    a = ap.parse_args()
    torch.set_num_threads(1)

    full_x, _, xs, ys = load(a.data, "train", a.train_limit, a.rank, a.workers)
    mean, std = float(full_x.mean(dtype=np.float64)), float(full_x.std(dtype=np.float64))
    total = len(full_x)
    x = torch.from_numpy((xs - mean) / std)
    y = torch.from_numpy(ys)
    del full_x
    if a.rank == 0:
        _, _, tx, ty = load(a.data, "t10k", a.test_limit, 0, 1)
        tx, ty = torch.from_numpy((tx - mean) / std), torch.from_numpy(ty)
    # Every worker takes the same number of steps (the smallest share's).
    steps = total // a.workers // a.batch
    if steps < 1:
        sys.exit("torch_train: too few images for the workers and the batch")

    net = model(a.seed)
    fwd, opt, client = setup(a, net)
    gen = torch.Generator().manual_seed(a.seed * 7919 + a.rank)
    config = a.config or a.trainer
    t0 = time.monotonic()
    acc = 0.0
    for epoch in range(1, a.epochs + 1):
        perm = torch.randperm(len(x), generator=gen)
        loss_sum, correct = 0.0, 0
        for s in range(steps):
            i = perm[s * a.batch:(s + 1) * a.batch]
            opt.zero_grad()
            out = fwd(x[i])
            loss = torch.nn.functional.cross_entropy(out, y[i])
            loss.backward()
            opt.step()
            loss_sum += float(loss)
            correct += int((out.argmax(1) == y[i]).sum())
        if client is not None:
            client.barrier()
        else:
            torch.distributed.barrier()
        if a.rank == 0:
            acc = accuracy(net, tx, ty)
            el = time.monotonic() - t0
            print(f"epoch {epoch}/{a.epochs} loss {loss_sum / steps:.4f} "
                  f"train_acc {correct / (steps * a.batch):.4f} test_acc {acc:.4f} "
                  f"elapsed {el:.1f}s", flush=True)
            if a.csv:
                with open(a.csv, "a") as f:
                    f.write(f"{config},{epoch},{el:.2f},{acc:.4f},{loss_sum / steps:.4f}\n")
    if a.rank == 0:
        print(f"final test accuracy: {acc:.4f}", flush=True)
    if client is not None:
        client.close()
    else:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
