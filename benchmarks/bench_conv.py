"""Convolutions under replica batching: which formulation is fastest (CPU, conv1d).

    python benchmarks/bench_conv.py [--replicas 18] [--steps 50] [--no-compile]

The default study's 1-D conv net (3 convs of 25 channels, kernels 5/3/3, stride 2,
MNIST-1D length 40, batch 100), R replicas, forward + backward of the summed loss,
each formulation eager and under ``torch.compile``:

* ``vmap grouped``: ``vmap(functional_call)`` over ``nn.Conv1d``; PyTorch lowers the
  vmapped convolution with per-replica weights to one grouped convolution (groups=R);
* ``folded groups=R``: the same grouped convolution written out without vmap, replicas
  folded into channels, (B, R*C, L) activations;
* ``batched GEMM``: ``MatmulConv1d`` under vmap (im2col by shifted views, one bmm), the
  engine's conv1d today.

Ratios are against ``vmap grouped`` eager, measured in this process.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _p in (str(_ROOT), str(_ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch
import torch.nn.functional as F
from common import machine, print_table
from torch import nn
from torch.func import functional_call, grad, vmap

from stabilitylab.models.conv1d import Conv1dNet

B, C, L, CLASSES = 100, 25, 40, 10


def nn_conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(1, C, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv1d(C, C, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(C, C, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(C * 5, CLASSES))


def vmapped(model):
    template = copy.deepcopy(model).to("meta")
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p, x, y):
        return F.cross_entropy(functional_call(template, (p, {}), (x,)), y)

    g = vmap(grad(loss))
    return params, g


def folded_step(R):
    """Replicas as channel groups: weights (R*O, C, k), one grouped conv per layer."""
    specs = [(1, C, 5, 2, 2), (C, C, 3, 2, 1), (C, C, 3, 2, 1)]
    ws = [torch.randn(R * o, i, k) * 0.1 for i, o, k, _, _ in specs]
    bs = [torch.zeros(R * o) for _, o, _, _, _ in specs]
    fc_w, fc_b = torch.randn(R, CLASSES, C * 5) * 0.1, torch.zeros(R, CLASSES)
    params = ws + bs + [fc_w, fc_b]

    def loss(params, x, y):  # x (R, B, 1, L) -> (B, R*1, L)
        ws, bs, (fw, fb) = params[:3], params[3:6], params[6:]
        h = x.permute(1, 0, 2, 3).reshape(B, R, L)
        for (_, o, _, s, p), w, b in zip(specs, ws, bs):
            h = torch.relu(F.conv1d(h, w, b, stride=s, padding=p, groups=R))
        h = h.reshape(B, R, C * 5).transpose(0, 1)  # (R, B, C*5), channel-major per replica
        logits = torch.baddbmm(fb[:, None, :], h, fw.transpose(1, 2))
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / B

    def step(params, x, y):
        return torch.autograd.grad(loss(params, x, y), params)

    return [p.requires_grad_() for p in params], step


def time_it(fn, steps) -> float:
    fn()
    fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def rows(quick: bool = False, replicas: int = 18, steps: int | None = None,
         compile: bool = True) -> list[dict]:
    steps = steps or (10 if quick else 50)
    R = replicas
    x = torch.randn(R, B, 1, L)
    y = torch.randint(0, CLASSES, (R, B))
    cases = {}
    for name, model in (("vmap grouped", nn_conv_net()), ("batched GEMM", Conv1dNet(1, L, C, CLASSES))):
        p, g = vmapped(model)
        stacked = {n: t[None].expand(R, *t.shape).clone() for n, t in p.items()}
        cases[name] = (lambda g=g, s=stacked: g(s, x, y), g, stacked)
    fparams, fstep = folded_step(R)
    cases["folded groups=R"] = (lambda: fstep(fparams, x, y), None, None)
    out, base = [], None
    for name, (fn, g, stacked) in cases.items():
        eager = time_it(fn, steps)
        base = base or eager
        row = {"row": f"conv1d R={R} {name}", "ours": f"{eager * 1e3:.2f} ms/step eager",
               "baseline": "vmap grouped, eager", "ratio": f"{base / eager:.2f}x",
               "target": "fastest kept", "met": "-"}
        out.append(row)
        if compile:
            if g is not None:
                cfn = torch.compile(lambda s, g=g: g(s, x, y), dynamic=False)
                ctime = time_it(lambda c=cfn, s=stacked: c(s), steps)
            else:
                cfn = torch.compile(lambda: fstep(fparams, x, y), dynamic=False)
                ctime = time_it(cfn, steps)
            out.append({**row, "ours": f"{ctime * 1e3:.2f} ms/step compiled",
                        "ratio": f"{base / ctime:.2f}x"})
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=18)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    print(machine())
    print_table(rows(replicas=args.replicas, steps=args.steps, compile=not args.no_compile))
