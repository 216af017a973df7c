"""Report rendering (``write_report``) on the default study, against the earlier encoder.

    python benchmarks/bench_report.py [--store runs/mnist1d-default.zarr] [--quick]

Ours: ``stabilitylab.report.write_report`` on the store (the default study, recorded and
analysed first), after one warm-up report (imports, font cache), best of a few runs.

Baseline, in the same process on the same store: the same report with each figure encoded
as the report did before: a full-colour PNG from ``savefig``, decoded again, quantized by
median cut and re-encoded with ``optimize=True``, the smaller of the two kept. The row also
prints how the time splits: reading the store, building the figures, drawing them (Agg),
and encoding, so what is left above the 5 s target is named. The split is measured in one
process, figure after figure; ``write_report`` itself draws its figures on two processes
where it can (``stabilitylab/report/render.py``), so its time is below the split's sum.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _p in (str(_ROOT), str(_ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from common import machine, print_table

TARGET_S = 5.0


def _earlier_png(fig, dpi: int) -> bytes:
    """The figure encoding the report used before (the baseline)."""
    from PIL import Image

    from stabilitylab.report.document import MAX_PNG_BYTES

    while True:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        buf.seek(0)
        with Image.open(buf) as im:
            small = io.BytesIO()
            im.convert("RGB").quantize(256).save(small, format="png", optimize=True)
        data = min(buf.getvalue(), small.getvalue(), key=len)
        if len(data) <= MAX_PNG_BYTES or dpi <= 50:
            return data
        dpi = int(dpi * 0.85)


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _split(store: str) -> str:
    """Seconds of reading, building, drawing and encoding, one report's figures."""
    from stabilitylab.report import document as D
    from stabilitylab.store import open_analysis, open_study

    t0 = time.perf_counter()
    study = D._in_memory(open_study(store), D.STUDY_LAZY_DIMS, D.STUDY_LAZY_NAMES)
    analysis = D._in_memory(open_analysis(store))
    read = time.perf_counter() - t0
    build = draw = encode = 0.0
    specs = D._figure_specs(study, analysis) + D._geometry_specs(study, analysis)
    for _, _, make in specs:
        t0 = time.perf_counter()
        fig = make()
        t1 = time.perf_counter()
        rgb = D._draw(fig, D.DPI)
        t2 = time.perf_counter()
        D._encode(rgb)
        t3 = time.perf_counter()
        build, draw, encode = build + t1 - t0, draw + t2 - t1, encode + t3 - t2
    return (f"{len(specs)} figures: reading {read:.2f} s, building {build:.2f} s, drawing "
            f"{draw:.2f} s, quantizing and encoding {encode:.2f} s")


def rows(store: str = "runs/mnist1d-default.zarr", quick: bool = False) -> list[dict]:
    from stabilitylab.report import document as D

    if not Path(store).exists():
        raise FileNotFoundError(f"{store}: record and analyse the default study first "
                                "(README's first command), or pass a store")
    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        D.write_report(store, out=Path(tmp) / "warm")  # imports, font cache
        ours = _best(lambda: D.write_report(store, out=Path(tmp) / "ours"), repeats)
        current = D._png
        D._png = _earlier_png
        try:
            base = _best(lambda: D.write_report(store, out=Path(tmp) / "base"), repeats)
        finally:
            D._png = current
    return [{
        "row": "report rendering (write_report, default study)",
        "ours": f"{ours:.2f} s ({_split(store)})",
        "baseline": f"{base:.2f} s (savefig PNG, decoded, median-cut quantized, optimized)",
        "ratio": f"{base / ours:.2f}x",
        "target": f"<= {TARGET_S:g} s",
        "met": "yes" if ours <= TARGET_S else "no",
    }]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default="runs/mnist1d-default.zarr")
    parser.add_argument("--quick", action="store_true", help="one run each, not best of 3")
    args = parser.parse_args(argv)
    table = rows(args.store, quick=args.quick)
    print(f"machine: {machine()}")
    print_table(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
