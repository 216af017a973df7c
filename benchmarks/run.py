"""The benchmark suite: one command, one table.

    python benchmarks/run.py [--quick] [--rows replicas,efficiency,recording,barrier,interpolation,scaling,report,end_to_end,cuda]

Each row measures both sides in this process (end_to_end and collector: in subprocesses), after a
warm-up, on the same work, and prints the ratio next to its target. ``--quick`` cuts
step counts and shortens the studies so the whole suite takes a few minutes; use the
full run (no ``--quick``) on a quiet machine for numbers to report. See
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _p in (str(_ROOT), str(_ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch
from common import machine, print_table

ROWS = ("replicas", "which_k", "conv", "efficiency", "recording", "barrier", "interpolation",
        "scaling", "group_bounds", "collector", "report", "plane", "pca", "curve", "end_to_end",
        "cuda")


def _replicas(quick: bool) -> list[dict]:
    from bench_replicas import rows

    return rows((16, 64), steps=50 if quick else 200)


def _module_rows(name: str):
    def run(quick: bool) -> list[dict]:
        return importlib.import_module(f"bench_{name}").rows(quick=quick)
    return run


RUNNERS = {"replicas": _replicas, **{n: _module_rows(n) for n in ROWS if n != "replicas"}}


def machine_line() -> str:
    line = f"machine: {machine()}"
    if torch.cuda.is_available():
        line += f"; GPU: {torch.cuda.get_device_name()}"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (minutes); not for reporting")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated subset of {','.join(ROWS)} (default: all)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNNERS]
    if unknown:
        parser.error(f"unknown row {unknown[0]!r}; choose from {', '.join(ROWS)}")
    table: list[dict] = []
    failed = False
    for name in names:
        print(f"[{name}] running...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            table += RUNNERS[name](args.quick)
        except Exception as e:  # noqa: BLE001 - one failing row must not hide the others
            failed = True
            traceback.print_exc()
            table.append({"row": name, "ours": f"error: {type(e).__name__}: {' '.join(str(e).split())[:80]}",
                          "met": "error"})
        print(f"[{name}] {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    print(machine_line() + (" (--quick: short runs, indicative only)" if args.quick else ""))
    print_table(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
