"""Crash safety of ``stabilitylab record``: SIGKILL, a kill inside a chunk write, disk full.

One tiny study is recorded uninterrupted (the baseline, timed phase by phase by
watching the store folder). Two more copies are interrupted again and again, each
interruption resumed with ``record --resume --out SAME``:

by time (best effort: the 2 cores are shared, so a kill can land late; the report
says where each one landed):
  SIGKILL 50% into pretraining, 50% into level 0, 40% into level 1 (fractions of the
  baseline's phase durations, scaled by this process's startup speed)

deterministic (a hook in the subprocess):
  SIGKILL after 50% of the pretraining steps; after 50% of the level-0 replica-steps;
  os._exit inside the writer thread's write of a level-1 weights chunk with half the
  bytes in zarr's temporary file (what a kill mid-write leaves with atomic writes);
  ENOSPC from the 2nd level-1 weights chunk on (one ``error: cannot write store at
  ...: [Errno 28] No space left on device`` line, exit 2); os._exit after half a chunk
  written in place (a store without atomic writes); os._exit inside the final write of
  the consolidated root metadata

After every interruption the store must pass ``validate``, and every run marked
complete must have finite weights at T and finite metrics. Each final store must
equal the baseline bit for bit (every array, NaN-aware; attrs but created_at/complete).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from _tiny import TINY

from stabilitylab.core.errors import StoreError
from stabilitylab.store import validate

pytestmark = pytest.mark.slow

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
if os.environ.get("ROBUST_KILL_PHASE"):
    import signal
    import stabilitylab.study.execution as T
    phase, fraction = os.environ["ROBUST_KILL_PHASE"], float(os.environ["ROBUST_KILL_FRACTION"])
    orig_train = T.train_group
    def train_group(stacked, plan, data, resolved, *, on_progress=None, **kw):
        kind, level = plan.runs[0].kind, plan.runs[0].level
        if (kind == "dense") == (phase == "dense") and (phase == "dense" or int(phase) == level):
            work = sum(resolved.total_steps - s for s in plan.start_steps)
            done = [0]
            def progress(n):
                done[0] += n
                if done[0] >= fraction * work:
                    os.kill(os.getpid(), signal.SIGKILL)
                if on_progress is not None:
                    on_progress(n)
            return orig_train(stacked, plan, data, resolved, on_progress=progress, **kw)
        return orig_train(stacked, plan, data, resolved, on_progress=on_progress, **kw)
    T.train_group = train_group
from stabilitylab.cli.main import main
sys.exit(main(sys.argv[1:]))
'''

LEVEL1_WEIGHTS = r"/weights/c/\d+/1/\d+/\d+/\d+/\d+$"


def _newest(store: Path, pattern: str) -> float:
    times = [p.stat().st_mtime for p in store.glob(pattern) if p.is_file()]
    return max(times, default=0.0)


def _creation_finished(store: Path) -> bool:
    """The root metadata says ``created: true`` (it says ``false`` while the arrays are laid out)."""
    try:
        return json.loads((store / "zarr.json").read_text()).get("attributes", {}).get("created") is True
    except (OSError, ValueError):  # absent, or caught mid-write
        return False


# phase markers: a file that a process writes when it reaches that point
MARKERS = {
    "created": "zarr.json",                        # store created / reopened (and its creation
                                                   # finished, _creation_finished): pretraining next
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
                if name not in marks and _newest(store, pattern) >= start_wall and (
                        name != "created" or _creation_finished(store)):
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
        if name not in marks and _newest(store, pattern) >= start_wall and (
                name != "created" or _creation_finished(store)):
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
    """validate accepts it (or says its creation was interrupted, which a resume replaces);
    every run marked complete is really complete. Returns a summary."""
    try:
        notes = validate(store)
    except StoreError as e:
        if "its creation was interrupted" not in str(e):
            raise
        return {"store": "creation interrupted"}
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
    phases = {"startup": m["created"],
              "pretraining": m["pretrained"] - m["created"], "level 0": m["level1"] - m["pretrained"],
              "level 1": m["trained"] - m["level1"], "closing": r["elapsed"] - m["trained"],
              "total": r["elapsed"]}
    validate(store, deep=True)
    return store, phases


def _at(marker: str, fraction: float, phases: dict, phase: str):
    """Kill ``fraction`` of the baseline's ``phase`` duration after ``marker``, scaled by
    this process's speed (its startup time over the baseline's: the 2 cores are shared)."""
    def due(marks, t):
        if marker not in marks or "created" not in marks:
            return False
        load = min(max(marks["created"] / phases["startup"], 0.3), 5.0)
        return t >= marks[marker] + fraction * phases[phase] * load
    return due


def _interrupt_resume_compare(base: Path, phases: dict, plan: list, tmp_path: Path, capsys) -> None:
    """Run ``plan`` (interruption after interruption, each resuming the last), then a
    final resume; check the store after each step and compare it with ``base``."""
    store = tmp_path / "study.zarr"
    report = ["baseline phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items())]
    for i, (what, how) in enumerate(plan):
        if "kill" in how and i > 0 and zarr.open_group(store, mode="r").attrs["complete"]:
            report.append(f"{what}: skipped (a timed kill came too late on this loaded machine "
                          "and the study finished)")
            continue
        r = _record(store, tmp_path, resume=i > 0, **how)
        hook = how.get("hook", {}).get("ROBUST_HOOK")
        if "ROBUST_KILL_PHASE" in how.get("hook", {}):
            assert r["rc"] == -signal.SIGKILL, (what, r["rc"], r["stderr"][-2000:], report)
        elif hook == "enospc":
            assert r["rc"] == 2, (what, r["stderr"], report)
            lines = r["stderr"].strip().splitlines()
            assert len(lines) == 1, r["stderr"]
            assert lines[0] == f"error: cannot write store at {store}: [Errno 28] No space left on device"
        elif hook is not None:
            assert r["rc"] == 137, (what, r["rc"], r["stderr"][-2000:], report)
        else:  # a timed kill can come too late on a suddenly faster machine: then rc is 0
            assert r["killed_at"] is not None or r["rc"] == 0, r["stderr"][-2000:]
            if r["killed_at"] is not None:
                assert r["rc"] == -signal.SIGKILL
        state = _check_crashed_store(store)
        if state.get("store") == "creation interrupted":  # a timed kill that landed early
            assert hook is None and "kill" in how, (what, r["stderr"][-2000:], report)
        elif hook == "inplace":  # the half-written chunk is of an unfinished run: only a deep
            with pytest.raises(StoreError, match="truncated or corrupt"):  # check sees it
                validate(store, deep=True)
        else:
            validate(store, deep=True)
        where = _phase(r["marks"], r["killed_at"])
        report.append(f"{what}: rc={r['rc']} after {r['elapsed']:.1f}s"
                      + (f" (killed at {r['killed_at']:.1f}s, in {where})" if r["killed_at"] else "")
                      + f" -> {state}")
    r = _record(store, tmp_path, resume=True)
    assert r["rc"] == 0, r["stderr"]
    report.append(f"final resume: rc=0 after {r['elapsed']:.1f}s -> {_check_crashed_store(store)}")
    validate(store, deep=True)
    assert not list(store.rglob("*.partial")), "resume removes the temporary files of killed writes"
    _arrays_equal(base, store)
    # In the log (shown for a failing test, or with --log-cli-level=INFO), not on the console.
    logging.getLogger(__name__).info("kill points:\n  %s", "\n  ".join(report))


def test_sigkill_at_time_fractions_then_resume_is_bitwise_identical(baseline, tmp_path, capsys):
    """Kill points 1-3: SIGKILL at fractions of the baseline's phase durations."""
    base, phases = baseline
    plan = [
        ("SIGKILL 50% into pretraining (by time)", {"kill": _at("created", 0.5, phases, "pretraining")}),
        ("SIGKILL 50% into level 0 (by time)", {"kill": _at("pretrained", 0.5, phases, "level 0")}),
        ("SIGKILL 40% into level 1 (by time)", {"kill": _at("level1", 0.4, phases, "level 1")}),
    ]
    _interrupt_resume_compare(base, phases, plan, tmp_path, capsys)


def test_faults_inside_writes_then_resume_is_bitwise_identical(baseline, tmp_path, capsys):
    """Kill points 4-9: SIGKILL at a fraction of a phase's training steps, and
    deterministic faults inside the store's file writes."""
    base, phases = baseline
    plan = [
        ("SIGKILL after 50% of the pretraining steps",
         {"hook": {"ROBUST_KILL_PHASE": "dense", "ROBUST_KILL_FRACTION": "0.5"}}),
        ("SIGKILL after 50% of the level-0 replica-steps",
         {"hook": {"ROBUST_KILL_PHASE": "0", "ROBUST_KILL_FRACTION": "0.5"}}),
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
    _interrupt_resume_compare(base, phases, plan, tmp_path, capsys)
