"""Seconds in Python's cyclic garbage collector during one `analyze` (issue #26).

    python benchmarks/bench_collector.py [STORE]   # default runs/mnist1d-default.zarr

``stabilitylab analyze STORE --no-report --no-progress`` runs in two fresh interpreters, one
after the other: as shipped (the imports made with the collector paused and frozen,
``stabilitylab.core.memory``), and with those helpers made no-ops, which is how ``analyze``
ran before them (the baseline). Each times every collection with ``gc.callbacks``, the last
one as the interpreter exits included. The analysis is written to a copy of the store in a
temporary directory, so STORE is only read.

The row prints the collector's seconds (and the full collections' among them) and the
whole process's wall time of each side; the ratio is baseline / ours of the collector's
seconds. The wall times come from two single runs on a possibly noisy machine: they show
the order of things, not the change (see README's speed section).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(_ROOT / "benchmarks"))

_RUN = r"""
import atexit, gc, json, os, sys, time
spent, full, started = [0.0], [0.0], {}
out = sys.argv[2]
def save(path=out, spent=spent, full=full, dumps=json.dumps, fd_open=os.open,
         write=os.write, close=os.close, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
    fd = fd_open(path, flags, 0o644)  # everything bound now: usable while exiting
    write(fd, dumps({"collector": spent[0], "full": full[0]}).encode())
    close(fd)
def timing(phase, info, clock=time.perf_counter):
    if phase == "start":
        started["t"] = clock()
        return
    d = clock() - started["t"]
    spent[0] += d
    if info["generation"] == 2:  # saved after each full one: the exiting interpreter's too
        full[0] += d
        save()
gc.callbacks.append(timing)
atexit.register(save)
if sys.argv[1] == "baseline":  # the helpers as no-ops: analyze as it ran before them
    import contextlib
    import stabilitylab.core.memory as memory
    none = contextlib.nullcontext
    memory.collector_paused = memory.long_lived_frozen = memory.long_lived_imports = none
    gc.freeze = lambda: None
from stabilitylab.cli.main import main
sys.argv[:] = ["stabilitylab", *sys.argv[3:]]
sys.exit(main(None))
"""


def _side(side: str, store: Path, scratch: Path) -> dict:
    copy = scratch / f"{side}.zarr"
    shutil.copytree(store, copy, ignore=shutil.ignore_patterns("analysis"))
    out = scratch / f"{side}.json"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", _RUN, side, str(out), "analyze", str(copy),
                    "--no-report", "--no-progress"], check=True, cwd=str(scratch),
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    values = json.loads(out.read_text())
    return values | {"wall": wall}


def rows(store: str = "runs/mnist1d-default.zarr", quick: bool = False) -> list[dict]:
    from common import recorded_store

    path = Path(recorded_store(store))
    with tempfile.TemporaryDirectory() as tmp:
        base = _side("baseline", path, Path(tmp))
        ours = _side("ours", path, Path(tmp))
    return [{
        "row": "collector during analyze",
        "ours": f"{ours['collector']:.2f} s ({ours['full']:.2f} s full collections); "
                f"process {ours['wall']:.1f} s",
        "baseline": f"{base['collector']:.2f} s ({base['full']:.2f} s full collections); "
                    f"process {base['wall']:.1f} s (collector not paused or frozen)",
        "ratio": f"{base['collector'] / max(ours['collector'], 1e-9):.1f}x",
        "target": "reported",
        "met": "-",
    }]


def main(argv=None) -> int:
    from common import store_main

    return store_main(rows, argv)


if __name__ == "__main__":
    raise SystemExit(main())
