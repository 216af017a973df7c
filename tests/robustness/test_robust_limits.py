"""Resource limits before allocation, ``record --dry-run``, and small input slips.

Every refusal is one ``error:`` line naming the estimate and the limit, comes in
seconds, and writes nothing (no store, no dataset cache) into the working directory.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from _tiny import TINY
from stabilitylab.cli.main import main


def _sets(items):
    return [a for s in items for a in ("--set", s)]


@pytest.fixture
def work(tmp_path, monkeypatch):
    wd = tmp_path / "wd"
    wd.mkdir()
    monkeypatch.chdir(wd)
    return wd


def _fails(argv, capsys, match: str, *, within: float = 30.0) -> str:
    capsys.readouterr()
    t = time.monotonic()
    rc = main([str(a) for a in argv])
    took = time.monotonic() - t
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert rc == 2, (rc, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert match in lines[0], lines[0]
    assert took < within, f"{took:.1f} s"
    return lines[0]


def _empty(wd: Path) -> None:
    assert not list(wd.iterdir()), sorted(p.name for p in wd.iterdir())


@pytest.mark.parametrize("value", ["1000000000", str(2**63 - 1), "1000000"])
def test_huge_replica_counts_are_refused_before_anything(value, work, capsys):
    line = _fails(["record", "--out", "x.zarr", "--set", f"study.replicas={value}"], capsys,
                  "estimated store size")
    assert "exceeds --max-store-gb 100" in line
    _empty(work)


def test_huge_model_and_dataset_are_refused(work, capsys):
    _fails(["record", "--out", "x.zarr", "--set", "model.channels=1000000000"], capsys,
           "model 'conv1d' is too large to build")
    line = _fails(["record", "--out", "x.zarr", "--set", "data.num_samples=1000000000000"], capsys,
                  "estimated memory")
    assert "available on this machine" in line
    _empty(work)


def test_max_store_gb_is_a_cap_the_user_sets(work, capsys):
    line = _fails(["record", "--out", "x.zarr", "--max-store-gb", "0.00001", *_sets(TINY)], capsys,
                  "exceeds --max-store-gb 1e-05")
    assert "estimated store size" in line and "kB (uncompressed)" in line
    _fails(["record", "--out", "x.zarr", "--max-store-gb", "0", *_sets(TINY)], capsys,
           "--max-store-gb: must be > 0")
    _empty(work)


def test_dry_run_prints_the_plan_and_writes_nothing(work, capsys):
    capsys.readouterr()
    assert main(["record", "--dry-run", "--out", "x.zarr", *_sets(TINY)]) == 0
    out = capsys.readouterr().out
    assert "dry run: would record to x.zarr" in out
    for key in ("groups: 3 tasks", "runs: 16 + the dense run; recorded steps per run: 9",
                "compute: 600 replica-steps", "store: at most", "memory: about",
                "limits: fits (nothing written)"):
        assert key in out, out
    _empty(work)
    # the counts are those of the plan record follows
    from stabilitylab.config import load_config
    from stabilitylab.study.estimate import estimate
    from stabilitylab.study.plan import all_runs, plan_tasks
    from stabilitylab.study.resolve import resolve_study

    resolved = resolve_study(load_config(None, TINY))
    est = estimate(resolved)
    assert est.replica_steps == sum(t.replica_steps(resolved) for t in plan_tasks(resolved)) == 600
    assert est.n_runs == len(all_runs(resolved)) and est.n_tasks == len(plan_tasks(resolved))


def test_two_hundred_thousand_rewind_points_are_checked_in_linear_time(work, capsys):
    """Quadratic checks took minutes here; linear ones a few seconds."""
    rewinds = "[" + ",".join(f"'{k}it'" for k in range(200_000)) + "]"
    overrides = ["training.steps='400000it'", f"study.rewinds={rewinds}", "study.record='endpoints'",
                 "training.log_every='100it'", "model.channels=2", "data.num_samples=500",
                 "pruning.levels=0"]
    capsys.readouterr()
    t = time.monotonic()
    rc = main(["record", "--dry-run", "--out", "x.zarr", *_sets(overrides)])
    out, err = capsys.readouterr()
    assert time.monotonic() - t < 60 and "200000 points" in out, (out, err)
    assert rc == 2 and "estimated store size" in err  # 400,000 runs of 200,002 steps each
    _empty(work)

    from stabilitylab.store.create import check_key

    levels, rewinds_idx = {0: 0}, {k: i for i, k in enumerate(range(200_000))}
    t = time.monotonic()
    for k in range(200_000):
        for r in range(2):
            check_key(("imp", 0, k, r), levels, rewinds_idx, 2)
    assert time.monotonic() - t < 10


def test_absurd_alphas_are_refused_before_any_allocation(work, capsys):
    from stabilitylab.store.testing import make_fake_store

    make_fake_store(work / "s.zarr")
    _fails(["analyze", "s.zarr", "--alphas", "1000000000", "--no-progress"], capsys,
           "--alphas: at most 10000 interpolation points, got 1000000000", within=10)


# -- 8. small ones ---------------------------------------------------------------------------------

def test_empty_out_dotdot_through_a_missing_folder_and_infinite_lr(work, capsys):
    _fails(["record", "--out", "", *_sets(TINY)], capsys, "--out: empty path")
    (work / "a").mkdir()
    _fails(["record", "--out", "a/nosuch/../x.zarr", *_sets(TINY)], capsys,
           "a/nosuch does not exist (a path cannot go through a missing folder and '..')")
    assert sorted(p.name for p in work.rglob("*")) == ["a"]  # no nosuch/, no x.zarr, no data
    for value in ("inf", "-inf"):
        _fails(["record", "--out", "x.zarr", "--set", f"training.lr={value}"], capsys,
               f"training.lr: must be a finite number, got {value}")
    _fails(["record", "--out", "x.zarr", "--set", "training.weight_decay=inf"], capsys,
           "training.weight_decay: must be a finite number")
    assert sorted(p.name for p in work.rglob("*")) == ["a"]


def test_plan_names_one_control_level_in_the_singular():
    """Issue 27: the plan said "controls ... at levels 2"."""
    from stabilitylab.study.estimate import estimate, plan_lines
    from stabilitylab.study.resolve import load_study

    for extra, want in (([], "at level 2"), (["study.control_levels=[1, 2]"], "at levels 1, 2")):
        r = load_study(None, extra)
        assert plan_lines(r, estimate(r, 0), 0)[0].endswith(want)
