"""Out-of-core scaling of the trajectory-reading analysis: time and peak RSS at 1×, 4×, 16×.

    python benchmarks/bench_scaling.py [--quick] [--scales 1,4,16]

Work: ``analyze --measures trajectory divergence`` (the groups that read whole
trajectories; divergence's barriers along training included) on a synthetic store
(:func:`stabilitylab.testing.make_fake_store` with the default study's conv1d layout,
its 6 rewind points, 3 replicas, levels 0-2 with both controls, 50-step chunks) whose
recorded steps are ``scale`` × those of the default study (~200 steps: T = 1500·scale,
every 8). Each analysis runs in a fresh process; peak RSS is that process's
``ru_maxrss``, and the row also gives its growth above the RSS before analysing.
Targets (issue #26): time at most linear in the size, peak RSS at 16× ≤ 2× the RSS at 1×.
``--quick``: 2 rewind points and 2 replicas (a smaller 1×), same scales.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _p in (str(_ROOT), str(_ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

BASE_T, EVERY = 1500, 8


def _layout() -> list[dict]:
    import torch

    from stabilitylab.config import load_config
    from stabilitylab.models import build_model
    from stabilitylab.train.functional import StackedModel

    cfg = load_config(None)
    model = build_model(cfg.model, (1, 40), 10, generator=torch.Generator().manual_seed(0))
    return StackedModel(model).layout()


def _make(path: str, scale: int, quick: bool) -> None:
    from stabilitylab.testing import make_fake_store

    make_fake_store(path, levels=2, rewinds=(0, 400) if quick else (0, 25, 50, 100, 200, 400),
                    replicas=2 if quick else 3, total_steps=BASE_T * scale, record_every=EVERY,
                    controls=("random_prune", "reinit"), step_chunk=50, param_layout=_layout())


def _analyze(path: str) -> dict:
    import resource
    import time

    from stabilitylab.analysis.run import analyze_store

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    out = analyze_store(path, measures=["trajectory", "divergence"], progress=False, n_boot=10)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mib": peak, "before_mib": before,
            "profile": out["profile"]}


def _child(args) -> int:
    if args.child == "make":
        _make(args.path, args.scale, args.quick)
        return 0
    print(json.dumps(_analyze(args.path)))
    return 0


def _run(*argv: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(_ROOT))
    done = subprocess.run([sys.executable, __file__, *argv], check=True, capture_output=True,
                          text=True, env=env)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def rows(quick: bool = False, scales=(1, 4, 16)) -> list[dict]:
    import zarr

    results = {}
    tmp = tempfile.mkdtemp(prefix="stabilitylab-scaling-")
    try:
        for s in scales:
            path = os.path.join(tmp, f"x{s}.zarr")
            _run("--child", "make", "--path", path, "--scale", str(s), *(["--quick"] * quick))
            steps = zarr.open_group(path, mode="r")["weights"].shape
            res = json.loads(_run("--child", "analyze", "--path", path))
            res["shape"] = steps
            results[s] = res
            shutil.rmtree(path, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    first = results[scales[0]]
    out = []
    for s, r in results.items():
        gb = 4 * _prod(r["shape"]) / 1e9
        out.append({
            "row": f"scaling {s}x ({r['shape'][-2]} steps, {gb:.2f} GB of weights)",
            "ours": f"{r['seconds']:.1f} s; peak RSS {r['peak_mib']:.0f} MiB "
                    f"(+{r['peak_mib'] - r['before_mib']:.0f} over the idle process)",
            "baseline": f"{scales[0]}x: {first['seconds']:.1f} s, {first['peak_mib']:.0f} MiB",
            "ratio": f"time {r['seconds'] / first['seconds']:.2f}x, "
                     f"RSS {r['peak_mib'] / first['peak_mib']:.2f}x",
            "target": f"time <= {s / scales[0]:g}x, RSS <= 2x",
            "met": "yes" if r["seconds"] <= s / scales[0] * first["seconds"]
            and r["peak_mib"] <= 2 * first["peak_mib"] else "no",
        })
    return out


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--scales", default="1,4,16")
    p.add_argument("--child", choices=["make", "analyze"], help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--scale", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args)
    from common import machine, print_table

    print(f"machine: {machine()}")
    print_table(rows(args.quick, tuple(int(s) for s in args.scales.split(","))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
