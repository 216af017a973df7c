"""Re-analyzing never loses the previous analysis, and two analyzes never mix.

A child process replaces a copy's analysis and is SIGKILLed at a chosen moment of the write
(while the new group is written, including its very first file, the moment ``mode="w"``
used to have deleted the old group; before, between and after the swapping renames); the
store's analysis then still opens with the previous values (or, once swapped, the new
ones), ``validate`` names what was left, and the next write clears it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import xarray as xr
from stabilitylab.cli.main import main

import stabilitylab
from stabilitylab.store import validate
from stabilitylab.store.analysis_group import NEW_PREFIX, OLD_PREFIX
from stabilitylab.store.lock import ANALYSIS_LOCK_NAME
from stabilitylab.store.writer import write_analysis

KILL = r'''
import os, shutil, signal, sys
from pathlib import Path
import zarr.storage
import stabilitylab
from stabilitylab.store.writer import write_analysis

store, source, moment = sys.argv[1:4]
new = stabilitylab.open_analysis(source).load()
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if moment.startswith("file"):  # just after the n-th file of the new group
    n, seen, set_ = int(moment[4:]), [0], zarr.storage.LocalStore.set
    async def counting_set(self, key, value, *a, **k):
        await set_(self, key, value, *a, **k)
        if key.startswith(".analysis-new-"):
            seen[0] += 1
            if seen[0] == n:
                die()
    zarr.storage.LocalStore.set = counting_set
elif moment in ("before-swap", "mid-swap"):
    calls, rename = [0], os.rename
    def counting_rename(a, b):
        calls[0] += 1
        if calls[0] == (1 if moment == "before-swap" else 2):
            die()
        return rename(a, b)
    os.rename = counting_rename
elif moment == "deleting-old":
    rmtree = shutil.rmtree
    def killing_rmtree(p, *a, **k):
        if Path(p).name.startswith(".analysis-old-"):
            die()
        return rmtree(p, *a, **k)
    shutil.rmtree = killing_rmtree
write_analysis(store, new)
print("not killed", flush=True)
'''


@pytest.fixture(scope="module")
def two_analyses(tiny_analyzed, tmp_path_factory):
    """The tiny analyzed study, and a copy whose analysis differs (the 'new' one)."""
    src, _ = tiny_analyzed
    other = tmp_path_factory.mktemp("other") / "other.zarr"
    shutil.copytree(src, other)
    new = stabilitylab.open_analysis(src).load()
    new["instability"] = new.instability + 1.0
    new.attrs["alphas"] = 7
    write_analysis(other, new)
    return src, other


def _leftovers(store) -> list[str]:
    return [n for n in validate(store) if n.startswith("warning: ")]


def _hidden(store) -> list[str]:
    return [p for p in os.listdir(store) if p.startswith((NEW_PREFIX, OLD_PREFIX))]


@pytest.mark.parametrize("moment", ["file1", "file12", "before-swap", "mid-swap", "deleting-old"])
def test_killed_analysis_write_keeps_an_analysis_whole(two_analyses, tmp_path, moment):
    src, other = two_analyses
    store = tmp_path / "s.zarr"
    shutil.copytree(src, store)
    before = stabilitylab.open_analysis(store).load()
    new = stabilitylab.open_analysis(other).load()
    proc = subprocess.run([sys.executable, "-c", KILL, str(store), str(other), moment],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    after = stabilitylab.open_analysis(store).load()
    xr.testing.assert_identical(after, new if moment == "deleting-old" else before)
    left = "\n".join(_leftovers(store))
    want = {"mid-swap": ["leftover .analysis-new-", "the 'analysis' group is missing"],
            "deleting-old": ["leftover .analysis-old-"]}.get(moment, ["leftover .analysis-new-"])
    assert left.count("\n") == len(want) - 1 and all(w in left for w in want), left
    write_analysis(store, new)  # the next write puts it right
    assert _leftovers(store) == [] and _hidden(store) == []
    xr.testing.assert_identical(stabilitylab.open_analysis(store).load(), new)


def test_interrupted_write_removes_its_new_group(two_analyses, tmp_path, monkeypatch):
    import zarr.storage

    src, other = two_analyses
    store = tmp_path / "s.zarr"
    shutil.copytree(src, store)
    before = stabilitylab.open_analysis(store).load()
    new = stabilitylab.open_analysis(other).load()
    seen, set_ = [0], zarr.storage.LocalStore.set

    async def interrupted_set(self, key, value, *a, **k):
        seen[0] += 1
        if seen[0] == 10:  # Ctrl-C in the middle of the write (Python raises it in the main thread)
            os.kill(os.getpid(), signal.SIGINT)
        return await set_(self, key, value, *a, **k)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", interrupted_set)
    with pytest.raises(KeyboardInterrupt):
        write_analysis(store, new)
    monkeypatch.undo()
    xr.testing.assert_identical(stabilitylab.open_analysis(store).load(), before)
    assert _hidden(store) == [] and _leftovers(store) == []


# -- one analyze at a time -----------------------------------------------------------------------

HOLD = r'''
import sys, time
from stabilitylab.store.lock import ANALYSIS_LOCK_NAME, acquire
lock = acquire(sys.argv[1], sys.argv[1], ANALYSIS_LOCK_NAME)
print("locked", flush=True)
time.sleep(120)
'''


def test_second_analyze_is_refused_naming_the_pid(tiny_analyzed, tmp_path, capsys):
    src, _ = tiny_analyzed
    store = tmp_path / "s.zarr"
    shutil.copytree(src, store)
    before = stabilitylab.open_analysis(store).load()
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        capsys.readouterr()
        rc = main(["analyze", str(store), "--no-progress", "--no-report", "--device", "cpu"])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1, err
        assert f"error: store is being analyzed by pid {proc.pid} on " in err, err
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    xr.testing.assert_identical(stabilitylab.open_analysis(store).load(), before)
    assert (store / ANALYSIS_LOCK_NAME).exists()  # the dead holder's lock: stale, taken over


def test_two_concurrent_analyzes_one_refuses_and_the_analysis_is_whole(tiny_analyzed, tmp_path):
    src, _ = tiny_analyzed
    store = tmp_path / "s.zarr"
    shutil.copytree(src, store)
    shutil.rmtree(store / "analysis")
    argv = [sys.executable, "-m", "stabilitylab.cli.main", "analyze", str(store), "--no-progress",
            "--no-report", "--device", "cpu", "--measures", "interpolation"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([*argv, "--alphas", str(a)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
             for a in (5, 9)]
    outs = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in outs)
    assert codes in ([0, 2], [0, 0]), outs  # [0, 0]: the second started after the first ended
    for rc, _, err in outs:
        if rc == 2:
            # "by pid N on HOST since T", or "by another process" when the refusal falls in the
            # moment between the winner's flock and its writing of the owner record
            assert err.count("\n") == 1 and re.search(
                r"store is being analyzed by (pid \d+ on |another process;)", err), err
    an = stabilitylab.open_analysis(store).load()
    winner = [a for (rc, _, _), a in zip(outs, (5, 9)) if rc == 0][-1]
    assert an.attrs["alphas"] in (5, 9) and an.sizes["alpha"] == an.attrs["alphas"]
    assert {"instability", "final_test_acc_std", "density"} <= set(an.data_vars)
    assert {"threshold", "partial", "absent"} <= set(an.attrs)
    if codes == [0, 2]:
        assert an.attrs["alphas"] == winner
    assert _hidden(store) == []
