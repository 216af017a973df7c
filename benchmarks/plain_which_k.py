"""The baseline of the ``which_k`` row: the "which k?" study as a plain PyTorch script.

    python benchmarks/plain_which_k.py

What a researcher would write in an afternoon: one ``nn.Module`` (the default study's
1-D conv net built from ``nn.Conv1d``) and ``torch.optim.SGD`` (lr 0.1, momentum 0.9),
MNIST-1D from stabilitylab's data loader, one run at a time, nothing recorded. It trains
the dense run for T = 1500 steps, keeping the weights and the momentum at every rewind
point k in {0, 25, 50, 100, 200, 400}, then 3 copies from each W_k for T - k steps under
their own data orders (the same 1 + 18 runs as ``stabilitylab record --set
pruning.levels=0``), evaluating test accuracy every 500 steps and at T, as the study does.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

T, BATCH, REWINDS, COPIES, EVAL_EVERY = 1500, 100, (0, 25, 50, 100, 200, 400), 3, 500


def net(channels=25, classes=10) -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(1, channels, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(channels * 5, classes))


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return acc


def train(model, opt, data, start: int, seed: int, snapshots=None) -> float:
    x, y = data.train_x, data.train_y
    per_epoch = x.shape[0] // BATCH
    g = torch.Generator().manual_seed(seed)
    perm, epoch = None, -1
    acc = float("nan")
    for step in range(start, T):
        if snapshots is not None and step in REWINDS:
            snapshots[step] = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
        if step // per_epoch != epoch:
            epoch = step // per_epoch
            perm = torch.randperm(x.shape[0], generator=g)
        idx = perm[(step % per_epoch) * BATCH:(step % per_epoch + 1) * BATCH]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % EVAL_EVERY == 0 or step + 1 == T:
            acc = accuracy(model, data.test_x, data.test_y)
    return acc


def main() -> None:
    from stabilitylab.config import load_config
    from stabilitylab.data import load_dataset

    start = time.perf_counter()
    data = load_dataset(load_config().data, "cpu")
    torch.manual_seed(0)
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    snapshots: dict = {}
    dense = train(model, opt, data, 0, seed=0, snapshots=snapshots)
    accs = []
    for k in REWINDS:
        for c in range(COPIES):
            m = net()
            m.load_state_dict(snapshots[k][0])
            o = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
            o.load_state_dict(snapshots[k][1])
            accs.append(train(m, o, data, k, seed=100 + c))
    print(f"dense {dense:.3f}; {len(accs)} copies, mean accuracy {sum(accs) / len(accs):.3f}; "
          f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
