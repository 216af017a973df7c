"""CUDA rows: ResNet-20 and VGG-16 on CIFAR-10-shaped synthetic data, batch 128.

    python benchmarks/bench_cuda.py [--quick] [--steps 30] [--channels-last auto|on|off]
                                    [--compile on|off|auto] [--models resnet20,vgg16]

* speedup: our batched engine with 8 replicas (fp32, and bf16 autocast) vs a plain
  FP32 PyTorch loop (nn.Module + torch.optim.SGD, one replica at a time); replica-steps/s;
  the engine's step compiled (``--compile on``, the default; compiled before timing, the
  compilation time is shown) or eager. Peak GPU memory per replica of the timed engine
  runs is shown beside each row. Targets: ResNet-20 R=8 >= 10x, bf16 >= 5% of peak at R=32.
* efficiency: achieved TFLOP/s of the engine in bf16 at 8 and 32 replicas, as a fraction
  of the GPU's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s; other GPUs: a measured
  8192² bf16 matmul). FLOPs per replica-step are counted with
  ``torch.utils.flop_counter.FlopCounterMode`` on one forward + backward of one replica.

Self-contained on purpose: it imports torch, ``benchmarks/common.py`` and
``stabilitylab.{config,models,train}`` only (never the store, zarr or dask), so it runs
on a machine with torch alone plus this source tree (it puts the repo root on
``sys.path`` itself). Without CUDA it prints one "no CUDA device" row.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _p in (str(_ROOT), str(_ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch
from common import machine, plain_loop, print_table, synthetic_data, timed

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, by device-name substring.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
                    "H100 NVL": 835.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}

STEPS = 30
QUICK_STEPS = 10
BATCH = 128


def _resolved(steps: int, precision: str, name: str = "resnet20"):
    from stabilitylab.config import load_config
    from stabilitylab.study.resolve import resolve_study

    return resolve_study(load_config(PRESETS[name], [
        f"training.steps='{steps}it'", f"training.batch_size={BATCH}", "training.lr=0.1",
        "training.warmup='0it'", "training.milestones=[]", "study.rewinds=['0it']",
        f"training.eval_every='{steps}it'", f"training.log_every='{steps}it'",
        "data.train_eval_size=1", "data.augment=false", f"training.precision='{precision}'",
        "training.weight_decay=0.0",
    ]))


PRESETS = {"resnet20": "resnet20_cifar10", "vgg16": "vgg16_cifar10"}


def _net(name: str, seed: int, device):
    from stabilitylab.config import load_config
    from stabilitylab.models import build_model

    cfg = load_config(PRESETS[name]).model
    g = torch.Generator().manual_seed(seed)
    return build_model(cfg, (3, 32, 32), 10, generator=g).to(device)


def _engine(stacked, models, data, resolved, channels_last, compile="on"):
    from stabilitylab.train.engine import GroupPlan, train_group

    params, buffers = stacked.stack(models)
    r = len(models)
    plan = GroupPlan(runs=list(range(r)), start_steps=[0] * r, data_seeds=list(range(r)),
                     params=params, buffers=buffers)
    return train_group(stacked, plan, data, resolved, channels_last=channels_last,
                       compile=compile)


def _timed_engine(stacked, models, data, resolved, channels_last, compile):
    """(seconds, compile seconds, peak GPU MiB per replica) of the engine on ``models``."""
    import time

    start = time.perf_counter()
    _engine(stacked, models, data, resolved, channels_last, compile)  # warm-up: compiles
    torch.cuda.synchronize()
    warm = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    t = timed(lambda: _engine(stacked, models, data, resolved, channels_last, compile), repeat=2)
    mem = torch.cuda.max_memory_allocated() / 2**20 / len(models)
    return t, max(0.0, warm - t), mem


def flops_per_replica_step(model, device) -> float:
    """FLOPs of one forward + backward of one replica on a batch of BATCH (counted, not estimated)."""
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(model).train()
    x = torch.randn(BATCH, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (BATCH,), device=device)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(m(x), y).backward()
    return float(counter.get_total_flops())


def bf16_peak_tflops() -> tuple[float, str]:
    name = torch.cuda.get_device_name()
    for key, peak in BF16_PEAK_TFLOPS.items():
        if key in name:
            return peak, f"{name} datasheet"
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t = timed(lambda: [a @ b for _ in range(10)], repeat=3)
    return 10 * 2 * 8192**3 / t / 1e12, f"{name} measured 8192² bf16 matmul"


def rows(quick: bool = False, steps: int | None = None, channels_last: bool | None = None,
         compile: str = "on", models=("resnet20", "vgg16")) -> list[dict]:
    if not torch.cuda.is_available():
        return [{"row": "cuda (ResNet-20 / VGG-16, CIFAR-shaped, B=128)",
                 "ours": "skipped: no CUDA device", "baseline": "", "ratio": "", "target": ">= 10x",
                 "met": "n/a"}]
    from stabilitylab.train.functional import StackedModel

    steps = steps or (QUICK_STEPS if quick else STEPS)
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    data = synthetic_data(5000, (3, 32, 32), device=device)
    data.test_x, data.test_y = data.test_x[:1], data.test_y[:1]
    out = []
    peak, source = bf16_peak_tflops()
    for name in models:
        # -- speedup at R=8 ---------------------------------------------------------------------
        r8 = 8
        nets = [_net(name, i, device) for i in range(r8)]
        stacked = StackedModel(nets[0])
        base = timed(lambda nets=nets: plain_loop([copy.deepcopy(m) for m in nets], data, steps, BATCH),
                     repeat=2)
        base_rate = r8 * steps / base
        for precision in ("fp32", "bf16"):
            resolved = _resolved(steps, precision, name)
            ours, comp, mem = _timed_engine(stacked, nets, data, resolved, channels_last, compile)
            out.append({
                "row": f"cuda {name} R={r8} {precision} B=128 (compile={compile})",
                "ours": f"{r8 * steps / ours:,.0f} rep-steps/s; compile {comp:.0f} s; "
                        f"{mem:.0f} MiB/replica",
                "baseline": f"{base_rate:,.0f} rep-steps/s (fp32 loop)",
                "ratio": f"{base / ours:.2f}x", "target": ">= 10x" if name == "resnet20" else "reported",
                "met": ("yes" if base / ours >= 10 else "no") if name == "resnet20" else "",
            })
        # -- efficiency in bf16 at R=8, 32 ----------------------------------------------------
        flops = flops_per_replica_step(nets[0], device)
        resolved = _resolved(steps, "bf16", name)
        for r in (8, 32):
            reps = [nets[i % r8] for i in range(r)]
            t, comp, mem = _timed_engine(stacked, reps, data, resolved, channels_last, compile)
            tflops = r * steps * flops / t / 1e12
            out.append({
                "row": f"cuda {name} efficiency R={r} bf16 ({flops / 1e9:.1f} GFLOP/rep-step)",
                "ours": f"{tflops:.1f} TFLOP/s; {mem:.0f} MiB/replica",
                "baseline": f"{peak:.0f} TFLOP/s peak ({source})",
                "ratio": f"{100 * tflops / peak:.1f}% of peak",
                "target": ">= 5% at R=32" if r == 32 else "reported",
                "met": ("yes" if 100 * tflops / peak >= 5 else "no") if r == 32 else "",
            })
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="on")
    parser.add_argument("--models", default="resnet20,vgg16")
    args = parser.parse_args()
    cl = {"auto": None, "on": True, "off": False}[args.channels_last]  # auto = the engine's default (off)
    print(machine())
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
    print_table(rows(args.quick, args.steps, cl, args.compile, tuple(args.models.split(","))))
