"""CUDA correctness checks for the batched engine (run on a GPU machine; skips without one).

    python benchmarks/cuda_check.py

- batched engine on CUDA == single-replica reference on CUDA (MLP; conv net with BN);
- the batched engine on CUDA agrees with itself on CPU (same seeds);
- bf16 autocast trains and stays finite; the recorded weights arrive on the host;
- batched alpha evaluation agrees with the per-alpha loop on CUDA.

It needs torch only (no zarr/dask), so it runs on a bare GPU image.
"""

from __future__ import annotations

import copy
import sys
import types

import torch
from torch import nn

from stabilitylab.config import load_config
from stabilitylab.study.resolve import resolve_study
from stabilitylab.train.engine import GroupPlan, train_group
from stabilitylab.train.functional import StackedModel
from stabilitylab.train.reference import train_reference


def data_on(device, shape=(1, 8), n=240, classes=3):
    g = torch.Generator().manual_seed(0)
    return types.SimpleNamespace(
        train_x=torch.randn(n, *shape, generator=g).to(device),
        train_y=torch.randint(0, classes, (n,), generator=g).to(device),
        test_x=torch.randn(60, *shape, generator=g).to(device),
        test_y=torch.randint(0, classes, (60,), generator=g).to(device),
    )


def resolved(*extra):
    return resolve_study(load_config(None, [
        "data.num_samples=300", "training.batch_size=20", "training.steps='40it'",
        "study.rewinds=['0it']", "training.eval_every='20it'", "training.log_every='5it'",
        "data.train_eval_size=100", *extra]))


def models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    conv = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1, bias=False), nn.BatchNorm1d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32, 3))
    return {"mlp": mlp, "conv+bn": conv}


class Keep:
    def __init__(self):
        self.rows = []

    def record(self, runs, step, weights):
        self.rows.append((step, weights))


def main() -> int:
    if not torch.cuda.is_available():
        print("cuda_check: no CUDA device; nothing checked")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
    failures = 0
    for name, model in models().items():
        res = resolved()
        stacked = StackedModel(model)
        params, buffers = stacked.stack([model] * 3)
        plan = GroupPlan(runs=[0, 1, 2], start_steps=[0, 0, 0], data_seeds=[1, 2, 3],
                         params=params, buffers=buffers)
        keep = Keep()
        gpu = train_group(stacked, plan, data_on(dev), res, recorder=keep)
        cpu = train_group(stacked, plan, data_on("cpu"), res)
        ref = train_reference(copy.deepcopy(model).to(dev), data_on(dev), res, start_step=0,
                              data_seed=2)
        worst_ref = max(float((gpu.params[n][1] - p.detach()).abs().max())
                        for n, p in ref.named_parameters())
        worst_cpu = max(float((gpu.params[n].cpu() - cpu.params[n]).abs().max()) for n in cpu.params)
        ok = worst_ref < 1e-4 and worst_cpu < 1e-3 and len(keep.rows) > 0
        failures += not ok
        print(f"{name}: |batched-reference| {worst_ref:.2e}, |cuda-cpu| {worst_cpu:.2e}, "
              f"recorded {len(keep.rows)} host rows -> {'ok' if ok else 'FAIL'}")
        if name != "mlp":  # BN nets in bf16: the ResNet-20 rows of bench_cuda.py cover them
            continue
        bf16 = train_group(stacked, plan, data_on(dev), resolved("training.precision='bf16'"))
        finite = all(torch.isfinite(t).all() for t in bf16.params.values())
        failures += not finite
        print(f"{name}: bf16 autocast finite={finite}, final test acc {bf16.test_acc[:, -1]}")
    from stabilitylab.analysis.interpolate import (
        evaluate_interpolation,
        evaluate_interpolation_loop,
    )

    model = models()["conv+bn"]
    stacked = StackedModel(model)
    params, _ = stacked.stack([model, model])
    flat = stacked.flatten(params).to(dev)
    flat[1] += 0.1 * torch.randn_like(flat[1])
    d = data_on(dev)
    a = evaluate_interpolation(stacked, flat[0], flat[1], torch.linspace(0, 1, 30), d.test_x,
                               d.test_y, bn_recompute_x=d.train_x)
    b = evaluate_interpolation_loop(stacked, flat[0], flat[1], torch.linspace(0, 1, 30), d.test_x,
                                    d.test_y, bn_recompute_x=d.train_x)
    worst = float(abs(a["loss"] - b["loss"]).max())
    failures += worst > 1e-4
    print(f"interpolation batched vs loop on CUDA: max |loss diff| {worst:.2e}")
    print("cuda_check:", "ok" if not failures else f"{failures} FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
