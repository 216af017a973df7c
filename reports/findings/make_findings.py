"""Regenerate the findings report: record and analyze every study, collect, write the report.

    python reports/findings/make_findings.py            # everything (about 40 min on 2 cores)
    python reports/findings/make_findings.py --jobs 1   # one study at a time
    python reports/findings/make_findings.py report     # re-render from results.csv only
    python reports/findings/make_findings.py run collect report --conditions chaos_conv
                                                        # one condition's studies, then the report

Phases (default: all four, in order):

* ``tune``: the learning-rate sweep behind the studies' ``training.lr`` values: for each
  optimizer in ``findings.toml``'s ``[tuning]``, dense training only (T steps, 3 runs) at
  each learning rate, on a seed that no study uses; writes ``tuning.csv``. The report
  checks that each study's lr is the sweep's best.
* ``run``: for every condition in ``findings.toml`` and every seed, ``stabilitylab record``
  the study into ``runs/findings/<condition>-s<seed>.zarr`` and ``stabilitylab analyze`` it.
  Stores that are complete and analysed are skipped; incomplete ones are resumed, so an
  interrupted regeneration picks up where it stopped. ``--jobs N`` runs N studies at once,
  each on one thread (independent studies parallelise better than one study's levels).
* ``collect``: read every store and its analysis with xarray and write the tidy table
  ``reports/findings/results.csv`` (committed: the report can be re-rendered without
  the stores).
* ``report``: statistics, figures and ``reports/findings/README.md`` from results.csv.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import tomllib

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = HERE / "results.csv"
TUNING = HERE / "tuning.csv"

sys.path.insert(0, str(HERE))  # common/collect/render/document sit beside this file
from common import seeds_of, store_path


def _sweep_conditions(sweep: dict, where: str) -> list[dict]:
    """A ``[[sweep]]`` of findings.toml as plain conditions: one per combination of its axes'
    values, named ``<name>-<tag>-<tag>...``, each with the sweep's ``set`` overrides plus its
    values' own, ``sweep`` (the sweep's name) and ``axes`` (axis -> tag)."""
    for key in ("name", "config", "label", "questions", "axes"):
        if key not in sweep:
            raise SystemExit(f"error: {where}: [[sweep]] needs {key!r}")
    combos: list[tuple[dict, list[str]]] = [({}, list(sweep.get("set", [])))]
    for axis, values in sweep["axes"].items():
        if not isinstance(values, dict) or not values:
            raise SystemExit(f"error: {where}: sweep {sweep['name']!r} axis {axis!r} must map "
                             "tags to lists of overrides")
        combos = [({**tags, axis: tag}, [*sets, *extra]) for tags, sets in combos
                  for tag, extra in values.items()]
    rest = {k: v for k, v in sweep.items() if k not in ("name", "config", "axes", "set")}
    return [{**rest, "name": "-".join([sweep["name"], *tags.values()]), "study": sweep["config"],
             "overrides": tuple(sets), "sweep": sweep["name"], "axes": tags}
            for tags, sets in combos]


def load_plan(path: Path = HERE / "findings.toml") -> dict:
    """The plan: ``condition`` lists every condition, each sweep expanded into its own."""
    with open(path, "rb") as f:
        plan = tomllib.load(f)
    for sweep in plan.get("sweep", []):
        plan["condition"] += _sweep_conditions(sweep, path.name)
    names = [c["name"] for c in plan["condition"]]
    if len(set(names)) != len(names):
        raise SystemExit(f"error: {path.name}: two conditions are named alike")
    for c in plan["condition"]:
        c["config"] = HERE / "studies" / f"{c.get('study', c['name'])}.toml"
        c["overrides"] = tuple(c.get("overrides", ()))
        if not c["config"].is_file():
            raise SystemExit(f"error: {path.name}: condition {c['name']!r} has no {c['config']}")
    return plan


def condition_config(cond: dict):
    """The config of a condition: its TOML with its overrides."""
    from stabilitylab.config import load_config

    return load_config(cond["config"], cond["overrides"])


def expected_id(config: Path, seed: int, overrides: tuple[str, ...] = ()) -> str:
    from stabilitylab.config import load_config
    from stabilitylab.study.resolve import study_id

    return study_id(load_config(config, [f"study.seed={seed}", *overrides]))


def _state(store: Path, study_id: str) -> str:
    """'missing', 'stale' (recorded from another config), 'incomplete', 'recorded'
    (complete, no analysis) or 'analyzed'."""
    if not store.exists():
        return "missing"
    import zarr

    try:
        root = zarr.open_group(store, mode="r")
        if root.attrs.get("study_id") != study_id:
            return "stale"
        if not root.attrs.get("complete", False):
            return "incomplete"
        return "analyzed" if "analysis" in root.group_keys() else "recorded"
    except Exception:  # noqa: BLE001 - unreadable counts as incomplete; --resume decides
        return "incomplete"


def _discard(store: Path) -> None:
    """Remove a generated store (and the CSV folder analyze wrote beside it)."""
    for p in (store, store.with_name(store.name + ".analysis")):
        if p.exists():
            shutil.rmtree(p)


def _command() -> str:
    """The installed ``stabilitylab`` script (not ``python -m``: run from the repository
    root, that would import the source folder, which lacks the installed ``cli`` mapping)."""
    beside = Path(sys.executable).with_name("stabilitylab")
    found = str(beside) if beside.is_file() else shutil.which("stabilitylab")
    if not found:
        raise SystemExit("error: the stabilitylab command is not installed; run `pip install -e .` first")
    return found


def _cli(args: list[str], env: dict, log: Path) -> None:
    with open(log, "a") as out:
        out.write(f"$ stabilitylab {' '.join(args)}\n")
        out.flush()
        rc = subprocess.call([_command(), *args], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    if rc != 0:
        raise RuntimeError(f"stabilitylab {args[0]} exited {rc}; see {log}")


def _env(threads: int) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def run_one(cond: dict, seed: int, runs: Path, threads: int) -> tuple[str, float]:
    store = store_path(runs, cond["name"], seed)
    log = store.with_suffix(".log")
    t0 = time.perf_counter()
    state = _state(store, expected_id(cond["config"], seed, cond["overrides"]))
    if state == "stale":  # the condition's TOML changed since: the store no longer matches it
        print(f"  {store.name}: recorded from an older {cond['config'].name}; recording again", flush=True)
        _discard(store)
    if state in ("missing", "stale", "incomplete"):
        args = ["record", str(cond["config"]), "--out", str(store), "--set", f"study.seed={seed}",
                "--no-progress"]
        for o in cond["overrides"]:
            args += ["--set", o]
        _cli(args + (["--resume"] if state == "incomplete" else []), _env(threads), log)
    if state != "analyzed":
        measures = list(cond.get("measures", []))
        _cli(["analyze", str(store), "--no-report", "--no-progress",
              *(["--measures", *measures] if measures else [])], _env(threads), log)
    return state, time.perf_counter() - t0


# -- learning-rate tuning ------------------------------------------------------------------------

TUNE_OVERRIDES = ("pruning.levels=0", "study.rewinds=['0it']", "study.replicas=2", "study.controls=[]")


def tune_one(cond: str, lr: float, seed: int, runs: Path, threads: int) -> dict:
    """Dense training only (T steps from init, 3 runs: the dense run + 2 data orders)."""
    import stabilitylab

    config = HERE / "studies" / f"{cond}.toml"
    store = runs / "tune" / f"{cond}-lr{lr:g}-s{seed}.zarr"
    overrides = (*TUNE_OVERRIDES, f"training.lr={lr}")
    state = _state(store, expected_id(config, seed, overrides))
    if state == "stale":
        _discard(store)
    if state in ("missing", "stale", "incomplete"):
        args = ["record", str(config), "--out", str(store), "--set", f"study.seed={seed}", "--no-progress"]
        for o in overrides:
            args += ["--set", o]
        _cli(args + (["--resume"] if state == "incomplete" else []), _env(threads),
             store.with_suffix(".log"))
    ds = stabilitylab.open_study(store)
    accs = [float(ds.dense_final_test_acc.values[0]),
            *ds.final_test_acc.sel(kind="imp").values.ravel().tolist()]
    return {"condition": cond, "lr": lr, "seed": seed, "test_acc": sum(accs) / len(accs), "runs": len(accs)}


def tune_all(plan: dict, runs: Path, jobs: int, out: Path) -> None:
    import csv

    tuning = plan["tuning"]
    todo = [(c, lr) for c in tuning["conditions"] for lr in tuning["lrs"]]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    (runs / "tune").mkdir(parents=True, exist_ok=True)
    print(f"tune: {len(todo)} dense runs ({len(tuning['conditions'])} optimizers x "
          f"{len(tuning['lrs'])} learning rates), seed {tuning['seed']}", flush=True)
    rows = []
    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(tune_one, c, lr, tuning["seed"], runs, threads) for c, lr in todo]
        for i, fut in enumerate(as_completed(futures), 1):
            r = fut.result()
            rows.append(r)
            print(f"  [{i}/{len(todo)}] {r['condition']} lr={r['lr']:g}: {100 * r['test_acc']:.1f}%", flush=True)
    rows.sort(key=lambda r: (r["condition"], r["lr"]))
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["condition", "lr", "seed", "test_acc", "runs"])
        w.writeheader()
        w.writerows(rows)


def run_all(plan: dict, runs: Path, jobs: int, only: list[str] | None = None) -> None:
    runs.mkdir(parents=True, exist_ok=True)
    # seed-major: an interrupted run still has every condition at the first seeds
    seeds = sorted({s for c in plan["condition"] for s in seeds_of(plan, c)})
    todo = [(c, s) for s in seeds for c in plan["condition"] if s in seeds_of(plan, c)
            and (not only or c["name"] in only)]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    t0, done = time.perf_counter(), 0
    print(f"run: {len(todo)} studies into {runs}, {jobs} at a time", flush=True)
    with ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(run_one, c, s, runs, threads): (c["name"], s) for c, s in todo}
        for fut in as_completed(futures):
            name, seed = futures[fut]
            state, secs = fut.result()
            done += 1
            elapsed = time.perf_counter() - t0
            eta = elapsed / done * (len(todo) - done)
            verb = "skipped (already analyzed)" if state == "analyzed" else f"done in {secs:.0f} s"
            print(f"  [{done}/{len(todo)}] {name} seed {seed}: {verb}; elapsed {elapsed / 60:.1f} min, "
                  f"about {eta / 60:.0f} min left", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("phases", nargs="*", choices=["tune", "run", "collect", "report"],
                   help="phases to run (default: all)")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "findings", help="store folder")
    p.add_argument("--jobs", type=int, default=2, help="studies at once (default 2)")
    p.add_argument("--out", type=Path, default=HERE, help="report folder (default: this folder)")
    p.add_argument("--conditions", nargs="+", metavar="NAME",
                   help="run and collect only these conditions (collect keeps the other "
                        "conditions' rows of results.csv)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    phases = args.phases or ["tune", "run", "collect", "report"]
    plan = load_plan()
    if "tune" in phases:
        tune_all(plan, args.runs, args.jobs, TUNING)
    if "run" in phases:
        run_all(plan, args.runs, args.jobs, args.conditions)
    if "collect" in phases:
        from collect import collect

        collect(plan, args.runs, RESULTS, args.conditions)
    if "report" in phases:
        from render import render

        args.out.mkdir(parents=True, exist_ok=True)
        render(plan, RESULTS, args.out, tuning=TUNING)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
