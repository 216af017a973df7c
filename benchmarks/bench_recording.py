"""Cost of recording full trajectories: the default study with recording on vs off.

    python benchmarks/bench_recording.py [--quick]

Both sides train the same study (``stabilitylab.load_config()``: the default MNIST-1D
study; ``--quick``: the same study shortened to 300 steps, rewinds 0 and 100,
2 replicas) into a fresh store in a temporary folder, after a small warm-up study. "On" is
``record_study`` as shipped: every recorded step of every run goes through the
engine's recorder into the store's weights array. "Off" is the same work without
trajectories. When the runner offers ``record_study(..., record_weights=False)`` the
whole study is timed both ways. Until then (the runner reads IMP masks back from the
recorded final weights, so it cannot simply skip recording), the comparison is made
group by group inside one recording: each ``train_group`` call the runner makes is
first repeated on a copy of its plan with ``recorder=None`` ("off"), then run as asked
("on", including the wait until its trajectory writes are on disk, so the overlap of
writing with later training is not credited). Both sums cover the same groups.
Ratio = time(on) / time(off); the target is <= 1.10x.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _p in (str(_ROOT), str(_ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from common import machine, print_table

from stabilitylab.config import load_config

QUICK = ["training.steps='300it'", "study.rewinds=['0it','100it']", "study.replicas=2"]
WARMUP = ["training.steps='40it'", "study.rewinds=['0it','10it']", "study.replicas=2",
          "pruning.levels=1", "training.eval_every='20it'"]


def _drain(recorder) -> None:
    """Wait until the store's background writer has written everything queued so far."""
    writer = getattr(recorder, "writer", recorder)  # the runner's dense recorder wraps the writer
    sync = getattr(writer, "_sync", None) or getattr(writer, "flush", None)
    if sync is not None:
        sync()


@contextlib.contextmanager
def _paired(times: dict):
    """Train every recorded group of the study twice in this process: first with
    recorder=None (timed as "off", result discarded), then as the runner asked (timed as
    "on", including the wait for its trajectory writes). Patches ``train_group`` in each
    loaded ``stabilitylab`` module that imported the engine's function."""
    from stabilitylab.train import engine

    real = engine.train_group

    def train_group(stacked, plan, data, resolved, *, recorder=None, on_progress=None, **kw):
        if recorder is None:
            return real(stacked, plan, data, resolved, on_progress=on_progress, **kw)
        _drain(recorder)  # earlier writes must not overlap the "off" side
        off_plan = copy.deepcopy(plan)  # the update may touch the plan's optimizer state
        start = time.perf_counter()
        real(stacked, off_plan, data, resolved, recorder=None, **kw)
        times["off"] += time.perf_counter() - start
        start = time.perf_counter()
        result = real(stacked, plan, data, resolved, recorder=recorder, on_progress=on_progress, **kw)
        _drain(recorder)
        times["on"] += time.perf_counter() - start
        return result

    patched = [m for name, m in list(sys.modules.items())
               if name.startswith("stabilitylab.") and getattr(m, "train_group", None) is real]
    for m in patched:
        m.train_group = train_group
    try:
        yield
    finally:
        for m in patched:
            m.train_group = real


def _runner():
    import stabilitylab.study  # noqa: F401
    from stabilitylab.study import runner

    with contextlib.suppress(ImportError):  # where the runner's groups are trained, if split out
        __import__("stabilitylab.study.execution")
    return runner


def record_native(cfg, record: bool) -> float:
    """Wall time of ``record_study(cfg, record_weights=record)`` into a temporary store."""
    runner = _runner()
    with tempfile.TemporaryDirectory(prefix="stabilitylab-bench-") as tmp:
        start = time.perf_counter()
        runner.record_study(cfg, Path(tmp) / "study.zarr", progress=False, device="cpu",
                            record_weights=record)
        return time.perf_counter() - start


def record_paired(cfg) -> tuple[float, float]:
    """(on, off): summed train_group times of the study's groups with and without a recorder."""
    runner = _runner()
    times = {"on": 0.0, "off": 0.0}
    with tempfile.TemporaryDirectory(prefix="stabilitylab-bench-") as tmp, _paired(times):
        runner.record_study(cfg, Path(tmp) / "study.zarr", progress=False, device="cpu")
    return times["on"], times["off"]


def rows(quick: bool = False, repeat: int = 1) -> list[dict]:
    cfg = load_config(None, QUICK if quick else [])
    native = "record_weights" in inspect.signature(_runner().record_study).parameters
    on, off = float("inf"), float("inf")
    if native:
        record_native(load_config(None, WARMUP), True)  # warm-up: imports, allocator, store code
        for _ in range(repeat):  # alternate, keep the best of each
            off = min(off, record_native(cfg, False))
            on = min(on, record_native(cfg, True))
        how = "whole study, record_weights=False"
    else:
        record_paired(load_config(None, WARMUP))
        for _ in range(repeat):
            t_on, t_off = record_paired(cfg)
            on, off = min(on, t_on), min(off, t_off)
        how = "same groups, recorder=None"
    study = "default study" + (" (quick: 300 it, k=0,100, 2 reps)" if quick else "")
    return [{
        "row": f"recording: {study}",
        "ours": f"{on:.1f} s recorded",
        "baseline": f"{off:.1f} s not recorded ({how})",
        "ratio": f"{on / off:.2f}x",
        "target": "<= 1.10x",
        "met": "yes" if on / off <= 1.10 else "no",
    }]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    print(machine())
    print_table(rows(args.quick, args.repeat))
