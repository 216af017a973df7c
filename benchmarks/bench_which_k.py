"""The "which k?" study, whole process: ``stabilitylab record --set pruning.levels=0``
against a plain PyTorch script doing the same 1 + 18 runs (``plain_which_k.py``).

    python benchmarks/bench_which_k.py [--repeats 2] [--compile auto|on|off]

Both sides run as subprocesses of this Python, interleaved, ``--repeats`` times each; the
row reports the median wall times (imports, data loading and, for ours, compilation and
recording every trajectory to Zarr included). Target: ours >= 4x faster.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _p in (str(_ROOT), str(_ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from common import machine, print_table

CLI = "import sys; from stabilitylab.cli.main import main; sys.exit(main(sys.argv[1:]))"
TARGET = 4.0


def _wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=_ROOT, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{cmd[1:3]} failed (exit {proc.returncode}): {tail[0]}")
    return elapsed


def measure(repeats: int = 2, compile: str = "auto") -> tuple[float, float]:
    ours, base = [], []
    with tempfile.TemporaryDirectory(prefix="stabilitylab-whichk-") as tmp:
        for i in range(repeats):
            store = str(Path(tmp) / f"k{i}.zarr")
            ours.append(_wall([sys.executable, "-c", CLI, "record", "--out", store, "--no-progress",
                               "--set", "pruning.levels=0", "--set", f"training.compile='{compile}'"]))
            base.append(_wall([sys.executable, str(_ROOT / "benchmarks" / "plain_which_k.py")]))
    return statistics.median(ours), statistics.median(base)


def rows(quick: bool = False, compile: str = "auto", repeats: int | None = None) -> list[dict]:
    ours, base = measure(repeats or (1 if quick else 2), compile)
    return [{
        "row": f"which k? study, whole process (compile={compile})",
        "ours": f"{ours:.1f} s", "baseline": f"{base:.1f} s (plain script)",
        "ratio": f"{base / ours:.2f}x", "target": f">= {TARGET:g}x",
        "met": "yes" if base / ours >= TARGET else "no",
    }]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    args = parser.parse_args()
    print(machine())
    print_table(rows(compile=args.compile, repeats=args.repeats))
