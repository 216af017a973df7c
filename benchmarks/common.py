"""Shared helpers for the benchmarks: timing, the plain-loop baseline, table printing.

Every row measures both sides in the same process, after warm-up, on the same work.
"""

from __future__ import annotations

import platform
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def timed(fn, *, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls of ``fn`` (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def mlp(widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def synthetic_data(n: int, shape: tuple[int, ...], classes: int = 10, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return types.SimpleNamespace(
        train_x=torch.randn(n, *shape, generator=g).to(device),
        train_y=torch.randint(0, classes, (n,), generator=g).to(device),
        test_x=torch.randn(1000, *shape, generator=g).to(device),
        test_y=torch.randint(0, classes, (1000,), generator=g).to(device),
        num_classes=classes,
    )


def plain_loop(models: list[nn.Module], data, steps: int, batch: int, lr=0.1, momentum=0.9,
               precision="fp32"):
    """The competent baseline: one replica at a time, nn.Module + torch.optim.SGD,
    in-memory tensors, a fresh random batch per step (no per-example transforms)."""
    n = data.train_x.shape[0]
    device = data.train_x.device
    for model in models:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        g = torch.Generator(device=device).manual_seed(0)
        for _ in range(steps):
            idx = torch.randint(0, n, (batch,), generator=g, device=device)
            loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def ratio_row(row: str, ours: str, baseline: str, ratio: float,
              target: float | None = None) -> dict:
    """One :func:`print_table` row: ``ratio`` is baseline time / ours; with a ``target``
    (at least that ratio) the row says whether it was met, else that it is reported."""
    return {"row": row, "ours": ours, "baseline": baseline, "ratio": f"{ratio:.2f}x",
            "target": f">= {target:g}x" if target is not None else "reported",
            "met": ("yes" if ratio >= target else "no") if target is not None else "—"}


def print_table(rows: list[dict]) -> None:
    cols = ["row", "ours", "baseline", "ratio", "target", "met"]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    line = " | ".join(c.ljust(widths[c]) for c in cols)
    print(line)
    print("-|-".join("-" * widths[c] for c in cols))
    for r in rows:
        print(" | ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols))


def reset_peak_rss() -> None:
    """Reset this process's peak resident set size (Linux: ``clear_refs`` 5), if possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _status_mb(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in MiB, None if unreadable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process since the last :func:`reset_peak_rss`, MiB."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Current resident set size of this process, MiB."""
    now = _status_mb("VmRSS")
    return float("nan") if now is None else now


#: The default study's store, as README's first command records it.
DEFAULT_STORE = "runs/mnist1d-default.zarr"


def recorded_store(store: str) -> str:
    """``store`` as an absolute path: as given where it exists, else under the repository
    (the default's place); a one-line FileNotFoundError where neither exists."""
    for path in (Path(store), Path(__file__).resolve().parents[1] / store):
        if path.exists():
            return str(path.resolve())
    raise FileNotFoundError(f"{store}: record the default study first (README's first "
                            "command), or pass a store")


def store_main(rows, argv=None) -> int:
    """``main`` of a row module that takes one optional argument, a store: the machine line
    and ``rows(store)``'s table."""
    argv = sys.argv[1:] if argv is None else argv
    print(f"machine: {machine()}")
    print_table(rows(argv[0] if argv else DEFAULT_STORE))
    return 0
