"""Crash safety of ``stabilitylab record``: SIGKILL, a kill inside a chunk write, disk full.

One tiny study is recorded uninterrupted (the baseline, also timed phase by phase),
then a second copy is interrupted again and again, each time resumed with
``record --resume --out SAME``:

1. SIGKILL half-way through pretraining        (time fraction of the baseline phase)
2. SIGKILL half-way through level 0            (time fraction)
3. SIGKILL 40% into level 1                     (time fraction)
4. os._exit inside the writer thread's write of a level-1 weights chunk, half the bytes
   in zarr's temporary file (what a kill mid-write leaves with zarr's atomic writes)
5. ENOSPC from the store at the 2nd level-1 weights chunk (and every write after):
   the CLI prints one ``error: cannot write store at ...: [Errno 28] ...`` line
6. os._exit after writing half a level-1 weights chunk *in place* (a store without
   atomic writes): a truncated chunk of an unfinished run
7. os._exit inside the final write of the consolidated root metadata

After every interruption the store must pass ``validate``, and every run marked
complete must have finite weights at T and finite metrics. The final store must
equal the baseline bit for bit (every array, NaN-aware; attrs but created_at/complete).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from stabilitylab.errors import StoreError
from stabilitylab.store import validate

pytestmark = pytest.mark.slow

DATA_ROOT = Path(__file__).resolve().parents[2] / "datasets" / "cache"
TINY = [
    "training.steps='40it'", "study.rewinds=['0it','10it']", "study.replicas=2",
    "pruning.levels=1", "data.num_samples=500", "model.channels=4",
    "training.eval_every='20it'", "training.log_every='5it'", "study.record='every:5'",
    f"data.root='{DATA_ROOT}'",
]
RUN_TIMEOUT = 300.0

# Runs the CLI; ROBUST_HOOK arms a fault in zarr's LocalStore file writer (_put), which
# the store writer's background thread calls for every chunk and metadata document.
HOOK = r'''
import os, re, sys, uuid
mode = os.environ.get("ROBUST_HOOK")
if mode:
    import errno
    import zarr.storage._local as L
    pat = re.compile(os.environ["ROBUST_MATCH"])
    cpat = re.compile(os.environ["ROBUST_CONTENT"].encode()) if os.environ.get("ROBUST_CONTENT") else None
    nth = int(os.environ.get("ROBUST_NTH", "1"))
    orig, hits = L._put, [0]
    def _put(path, value, exclusive=False):
        if pat.search(str(path).replace(os.sep, "/")):
            data = bytes(value.as_buffer_like())
            if cpat is None or cpat.search(data):
                hits[0] += 1
                if mode == "enospc" and hits[0] >= nth:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                if hits[0] == nth:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    target = path if mode == "inplace" else path.with_suffix(f".{uuid.uuid4().hex}.partial")
                    with open(target, "wb") as f:
                        f.write(data[: len(data) // 2])
                    os._exit(137)
        return orig(path, value, exclusive=exclusive)
    L._put = _put
from stabilitylab.cli.main import main
sys.exit(main(sys.argv[1:]))
'''

LEVEL1_WEIGHTS = r"/weights/c/\d+/1/\d+/\d+/\d+/\d+$"


def _newest(store: Path, pattern: str) -> float:
    times = [p.stat().st_mtime for p in store.glob(pattern) if p.is_file()]
    return max(times, default=0.0)


# phase markers: a file that a process writes when it reaches that point
MARKERS = {
    "created": "zarr.json",                        # store created / reopened: pretraining next
    "pretrained": "rewind_state_weights/c/*/*",    # written after pretraining
    "level1": "masks/c/*/1/*/*",                   # level-1 masks: written as level 1 starts
    "trained": "final_test_acc/c/*/1/*/*",         # level-1 finals: written after its training
}


def _record(store: Path, cwd: Path, *, resume: bool, hook: dict | None = None, kill=None) -> dict:
    """Run ``stabilitylab record`` in a subprocess, watching the store; ``kill(marks, t)``
    returning True sends SIGKILL. Returns rc, stderr, phase marks (s since start), ..."""
    args = ["record", "--out", str(store), "--no-progress", "--device", "cpu"]
    args += ["--resume"] if resume else []
    for s in TINY:
        args += ["--set", s]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROBUST_")}
    env.update(hook or {})
    out, err = cwd / "stdout.txt", cwd / "stderr.txt"
    start_wall, start = time.time() - 0.001, time.monotonic()
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, "-c", HOOK, *args], cwd=cwd, env=env, stdout=fo, stderr=fe)
        marks: dict[str, float] = {}
        killed_at = None
        while proc.poll() is None:
            t = time.monotonic() - start
            for name, pattern in MARKERS.items():
                if name not in marks and _newest(store, pattern) >= start_wall:
                    marks[name] = t
            if kill is not None and killed_at is None and kill(marks, t):
                proc.send_signal(signal.SIGKILL)
                killed_at = t
            if t > RUN_TIMEOUT:
                proc.kill()
                pytest.fail(f"record did not finish in {RUN_TIMEOUT} s")
            time.sleep(0.02)
    elapsed = time.monotonic() - start
    for name, pattern in MARKERS.items():  # markers reached too late for the polling loop
        if name not in marks and _newest(store, pattern) >= start_wall:
            marks[name] = elapsed
    return {"rc": proc.returncode, "stderr": err.read_text(), "stdout": out.read_text(),
            "marks": marks, "elapsed": elapsed, "killed_at": killed_at}


def _phase(marks: dict, t: float | None) -> str:
    if t is None:
        return "n/a"
    if marks.get("trained", 1e9) <= t:
        return "after level 1 (finals written)"
    if marks.get("level1", 1e9) <= t:
        return "level 1"
    if marks.get("pretrained", 1e9) <= t:
        return "level 0"
    if marks.get("created", 1e9) <= t:
        return "pretraining"
    return "startup (before the store was opened)"


def _check_crashed_store(store: Path) -> dict:
    """validate accepts it; every run marked complete is really complete. Returns a summary."""
    notes = validate(store)
    g = zarr.open_group(store, mode="r")
    status = np.asarray(g["status"][...])
    assert not (status == 3).any(), "nothing diverges in this study"
    for idx in zip(*np.nonzero(status == 2)):
        idx = tuple(int(i) for i in idx)
        w_T = np.asarray(g["weights"][idx + (-1, slice(None))])
        assert np.isfinite(w_T).all() and np.abs(w_T).sum() > 0, f"run {idx}: weights at T"
        for name in ("final_test_acc", "final_test_loss", "final_train_eval_acc", "final_train_eval_loss"):
            assert np.isfinite(g[name][idx]), f"run {idx}: {name}"
        for name in ("test_acc", "test_loss", "train_eval_acc", "train_eval_loss", "train_loss", "train_acc"):
            assert np.isfinite(g[name][idx + (-1,)]), f"run {idx}: {name} at the last step"
    dense = int(g["dense_status"][0])
    if dense == 2:
        w_T = np.asarray(g["dense_weights"][-1, :])
        assert np.isfinite(w_T).all() and np.abs(w_T).sum() > 0
        assert np.isfinite(g["dense_final_test_acc"][0])
    planned = int((status != 0).sum())
    return {"dense": {0: "absent", 1: "incomplete", 2: "complete"}[dense],
            "runs complete": f"{int((status == 2).sum())}/{planned}",
            "store complete": bool(g.attrs["complete"]),
            "partial files": len(list(store.rglob("*.partial"))),
            "validate": notes[1]}


def _arrays_equal(a: Path, b: Path) -> None:
    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    names_a, names_b = sorted(n for n, _ in ga.arrays()), sorted(n for n, _ in gb.arrays())
    assert names_a == names_b
    for name in names_a:
        x, y = np.asarray(ga[name][...]), np.asarray(gb[name][...])
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), f"{name} differs"
    skip = {"created_at", "complete"}
    attrs_a = {k: v for k, v in ga.attrs.items() if k not in skip}
    attrs_b = {k: v for k, v in gb.attrs.items() if k not in skip}
    assert json.dumps(attrs_a, sort_keys=True) == json.dumps(attrs_b, sort_keys=True)
    assert ga.attrs["complete"] is True and gb.attrs["complete"] is True


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The uninterrupted study, and how long each phase took."""
    cwd = tmp_path_factory.mktemp("baseline")
    store = cwd / "study.zarr"
    r = _record(store, cwd, resume=False)
    assert r["rc"] == 0, r["stderr"]
    m = r["marks"]
    assert {"created", "pretrained", "level1", "trained"} <= set(m), m
    phases = {"pretraining": m["pretrained"] - m["created"], "level 0": m["level1"] - m["pretrained"],
              "level 1": m["trained"] - m["level1"], "closing": r["elapsed"] - m["trained"],
              "total": r["elapsed"]}
    validate(store, deep=True)
    return store, phases


def _at(marker: str, fraction: float, duration: float):
    return lambda marks, t: marker in marks and t >= marks[marker] + fraction * duration


def test_kill_and_resume_until_done_is_bitwise_identical(baseline, tmp_path, capsys):
    base, phases = baseline
    store = tmp_path / "study.zarr"
    plan = [
        ("SIGKILL 50% into pretraining", {"kill": _at("created", 0.5, phases["pretraining"])}),
        ("SIGKILL 50% into level 0", {"kill": _at("pretrained", 0.5, phases["level 0"])}),
        ("SIGKILL 40% into level 1", {"kill": _at("level1", 0.4, phases["level 1"])}),
        ("os._exit inside the 3rd level-1 weights chunk write (atomic temp file)",
         {"hook": {"ROBUST_HOOK": "atomic", "ROBUST_MATCH": LEVEL1_WEIGHTS, "ROBUST_NTH": "3"}}),
        ("ENOSPC from the 2nd level-1 weights chunk write on",
         {"hook": {"ROBUST_HOOK": "enospc", "ROBUST_MATCH": LEVEL1_WEIGHTS, "ROBUST_NTH": "2"}}),
        ("os._exit after half of the 1st level-1 weights chunk written in place (non-atomic)",
         {"hook": {"ROBUST_HOOK": "inplace", "ROBUST_MATCH": LEVEL1_WEIGHTS, "ROBUST_NTH": "1"}}),
        ("os._exit inside the write of the consolidated root metadata",
         {"hook": {"ROBUST_HOOK": "atomic", "ROBUST_MATCH": r"\.zarr/zarr\.json$",
                    "ROBUST_CONTENT": r'"consolidated_metadata":\s*\{'}}),
    ]
    report = ["baseline phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items())]
    for i, (what, how) in enumerate(plan):
        r = _record(store, tmp_path, resume=i > 0, **how)
        hook = how.get("hook", {}).get("ROBUST_HOOK")
        if hook == "enospc":
            assert r["rc"] == 2, r["stderr"]
            lines = r["stderr"].strip().splitlines()
            assert len(lines) == 1, r["stderr"]
            assert lines[0] == f"error: cannot write store at {store}: [Errno 28] No space left on device"
        elif hook is not None:
            assert r["rc"] == 137, (what, r["rc"], r["stderr"][-2000:])
        else:
            assert r["killed_at"] is not None or r["rc"] == 0, r["stderr"][-2000:]
            if r["killed_at"] is not None:
                assert r["rc"] == -signal.SIGKILL
        state = _check_crashed_store(store)
        if hook == "inplace":  # the half-written chunk is of an unfinished run: only a deep
            with pytest.raises(StoreError, match="truncated or corrupt"):  # check sees it
                validate(store, deep=True)
        else:
            validate(store, deep=True)
        where = _phase(r["marks"], r["killed_at"])
        report.append(f"{i + 1}. {what}: rc={r['rc']} after {r['elapsed']:.1f}s"
                      + (f" (killed at {r['killed_at']:.1f}s, in {where})" if r["killed_at"] else "")
                      + f" -> {state}")
    r = _record(store, tmp_path, resume=True)
    assert r["rc"] == 0, r["stderr"]
    report.append(f"final resume: rc=0 after {r['elapsed']:.1f}s -> {_check_crashed_store(store)}")
    validate(store, deep=True)
    assert not list(store.rglob("*.partial")), "resume removes the temporary files of killed writes"
    _arrays_equal(base, store)
    with capsys.disabled():
        print("\nkill points:\n  " + "\n  ".join(report))
