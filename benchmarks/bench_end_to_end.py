"""End to end: the default study recorded and analyzed by the command-line tool, wall time.

    python benchmarks/bench_end_to_end.py [--quick]

Runs, as subprocesses of this Python (so imports and start-up are counted),
``stabilitylab record --out TMP --no-progress`` then
``stabilitylab analyze TMP --no-report --no-progress`` into a temporary folder and
reports each wall time. Targets for the default study on 2 idle CPU cores: record
<= 60 s, analyze <= 15 s. ``--quick`` shortens the study (300 steps, rewinds 0 and 100,
2 replicas); its time is reported but not held to the target.
"""

from __future__ import annotations

import argparse
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

QUICK = ["training.steps='300it'", "study.rewinds=['0it','100it']", "study.replicas=2"]
TARGET_RECORD_S, TARGET_ANALYZE_S = 60.0, 15.0
CLI = "import sys; from stabilitylab.cli.main import main; sys.exit(main(sys.argv[1:]))"


def _run(args: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, cwd=_ROOT,
                          check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"stabilitylab {args[0]} failed (exit {proc.returncode}): {tail[0]}")
    return elapsed


def rows(quick: bool = False) -> list[dict]:
    overrides = [a for o in (QUICK if quick else []) for a in ("--set", o)]
    with tempfile.TemporaryDirectory(prefix="stabilitylab-e2e-") as tmp:
        store = str(Path(tmp) / "study.zarr")
        t_record = _run(["record", "--out", store, "--no-progress", *overrides])
        t_analyze = _run(["analyze", store, "--no-report", "--no-progress"])
    met = t_record <= TARGET_RECORD_S and t_analyze <= TARGET_ANALYZE_S
    return [{
        "row": "end-to-end: default study" + (" (quick)" if quick else ""),
        "ours": f"record {t_record:.0f} s + analyze {t_analyze:.0f} s",
        "baseline": "-", "ratio": "-",
        "target": "record <= 60 s, analyze <= 15 s" + (" (full study only)" if quick else ""),
        "met": "n/a" if quick else ("yes" if met else "no"),
    }]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(machine())
    print_table(rows(args.quick))
