"""The findings report (reports/findings/): its regenerate script renders the committed
README.md exactly from the committed results, and knows a stale store when it sees one."""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import stabilitylab

FINDINGS = Path(__file__).resolve().parents[2] / "reports" / "findings"
PHASES = ("common", "make_findings", "collect", "render", "document", "chaos", "dose", "geometry")


@pytest.fixture(scope="module")
def make_findings():
    spec = importlib.util.spec_from_file_location("make_findings", FINDINGS / "make_findings.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_findings"] = mod
    spec.loader.exec_module(mod)
    yield mod
    for name in PHASES:
        sys.modules.pop(name, None)


def test_every_study_config_loads_and_the_plan_has_three_seeds(make_findings):
    plan = make_findings.load_plan()
    from common import seeds_of

    assert len(plan["seeds"]) >= 3
    questions = {q for c in plan["condition"] for q in c["questions"]}
    assert questions == {"Q1", "Q2", "Q3", "Q4", "Q5", "Q6", "Q7", "Q8", "Q9", "Q10", "Q11"}
    for c in plan["condition"]:
        cfg = make_findings.condition_config(c)
        if c.get("sweep") == "dose":  # the dose-response: k = 0 only, a reference copy
            assert cfg.study.rewinds == ("0it",) and cfg.study.perturb_reference
            assert cfg.study.replicas >= 3 and len(seeds_of(plan, c)) >= 5
        else:
            assert cfg.study.replicas >= 2 and len(cfg.study.rewinds) >= 2
        if {"Q6"} & set(c["questions"]):
            assert len(seeds_of(plan, c)) >= 5  # paired intervals over seeds
    ids = {make_findings.expected_id(c["config"], s, c["overrides"]) for c in plan["condition"]
           for s in seeds_of(plan, c)}
    assert len(ids) == sum(len(seeds_of(plan, c)) for c in plan["condition"])  # no two alike
    dose = [c for c in plan["condition"] if c.get("sweep") == "dose"]
    sizes = {make_findings.condition_config(c).study.epsilon for c in dose
             if make_findings.condition_config(c).study.perturbation == "init_scale"}
    assert max(sizes) / min(sizes) >= 1e4  # at least 4 decades
    assert any(make_findings.condition_config(c).study.perturbation == "bit_flip" for c in dose)
    assert {make_findings.condition_config(c).model.options.get("norm") for c in dose} >= {"layer"}


def test_a_sweep_expands_into_one_condition_per_combination_of_its_tags(make_findings, tmp_path):
    sweep = {"name": "s", "config": "dose_conv", "label": "x", "questions": ["Q5"], "seeds": [0],
             "set": ["study.replicas=3"],
             "axes": {"net": {"a": [], "b": ["model.options.channels=8"]},
                      "noise": {"e1": ["study.epsilon=0.1"], "e2": ["study.epsilon=0.01"]}}}
    conds = make_findings._sweep_conditions(sweep, "findings.toml")
    assert [c["name"] for c in conds] == ["s-a-e1", "s-a-e2", "s-b-e1", "s-b-e2"]
    assert conds[3]["overrides"] == ("study.replicas=3", "model.options.channels=8", "study.epsilon=0.01")
    assert conds[3]["axes"] == {"net": "b", "noise": "e2"} and conds[3]["seeds"] == [0]
    with pytest.raises(SystemExit, match="needs 'axes'"):
        make_findings._sweep_conditions({k: v for k, v in sweep.items() if k != "axes"}, "f.toml")
    with pytest.raises(SystemExit, match="axis 'net' must map tags"):
        make_findings._sweep_conditions({**sweep, "axes": {"net": ["a"]}}, "f.toml")


def test_report_phase_reproduces_the_committed_report(make_findings, tmp_path):
    assert make_findings.main(["report", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    for q in [f"## Q{i}." for i in range(1, 12)] + ["### The dose-response at k = 0"]:
        assert q in text
    for fig in ("q1_stability", "q1_accuracy", "q2_dropout", "q3_measures", "q4_ratio",
                "q5_noise", "q5_growth", "q5_dose", "q7_pai", "q8_alignment", "q9_curves",
                "q10_layers"):
        assert (tmp_path / "figures" / f"{fig}.png").stat().st_size > 1000
    assert "Warning" not in text  # every study uses its sweep's best learning rate
    assert text == (FINDINGS / "README.md").read_text(encoding="utf-8"), \
        "reports/findings/README.md is stale: rerun `python reports/findings/make_findings.py report`"


def test_stale_and_incomplete_stores_are_recognised(make_findings, tiny_study, tmp_path):
    sid = stabilitylab.open_study(tiny_study).attrs["study_id"]
    assert make_findings._state(tiny_study, sid) == "recorded"
    assert make_findings._state(tiny_study, "0" * 12) == "stale"
    assert make_findings._state(tmp_path / "none.zarr", sid) == "missing"
    broken = tmp_path / "broken.zarr"
    shutil.copytree(tiny_study, broken)
    (broken / "zarr.json").write_text("{not json")
    assert make_findings._state(broken, sid) == "incomplete"


def _local_imports(name: str) -> set[str]:
    tree = ast.parse((FINDINGS / f"{name}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in PHASES:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in PHASES}
    return found


def test_findings_modules_import_in_one_direction():
    """No import cycle among the findings scripts (common imports none of them), and each
    imports alone in a fresh interpreter."""
    graph = {name: _local_imports(name) for name in PHASES}
    assert graph["common"] == set()

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, (*seen, n)))
                   for n in graph[start])

    assert not [n for n in PHASES if reaches(n, n)], graph
    # one interpreter (torch imports once); before each import the scripts are forgotten
    script = ("import importlib, sys\nfor name in sys.argv[1:]:\n"
              "    for n in sys.argv[1:]:\n        sys.modules.pop(n, None)\n"
              "    importlib.import_module(name)\n")
    subprocess.run([sys.executable, "-c", script, *PHASES], cwd=FINDINGS, check=True)


def test_run_one_records_with_the_conditions_overrides_and_analyzes_its_measures(make_findings,
                                                                                 tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(make_findings, "_cli", lambda args, env, log: calls.append(args))
    cond = next(c for c in make_findings.load_plan()["condition"] if c["name"] == "geometry_conv_ln")
    state, _ = make_findings.run_one(cond, 1, tmp_path, 1)
    assert state == "missing"
    record, analyze = calls
    assert record[:2] == ["record", str(cond["config"])]
    assert record[record.index("study.seed=1") + 1:] == ["--no-progress", "--set", "model.options.norm='layer'"]
    assert analyze[-4:] == ["--measures", "default", "curve", "repair"]


def test_collect_adds_the_geometry_and_dose_rows_only_for_their_conditions(make_findings, tiny_analyzed):
    from collect import study_rows

    store, _ = tiny_analyzed
    plain = {r["quantity"] for r in study_rows(store, "c", 0, ["Q1"])}
    geo = study_rows(store, "g", 0, ["Q8", "Q11"])
    names = {r["quantity"] for r in geo}
    assert not {"cross_level_barrier", "matching_low", "layerwise_barrier:conv1"} & plain
    assert {"aligned_instability", "loss_barrier_train", "matching_low", "matching_margin",
            "cross_level_barrier", "layerwise_barrier:conv1", "layerwise_barrier:fc"} <= names
    cross = [r for r in geo if r["quantity"] == "cross_level_barrier"]
    assert cross and all(r["level"] >= 1 and "kind" not in r for r in cross)  # (level, rewind)
    an = stabilitylab.open_analysis(store)
    want = float(an.cross_level_barrier.sel(level=1, rewind=10).mean("replica"))
    got = next(r["value"] for r in cross if r["level"] == 1 and r["rewind"] == 10)
    assert abs(got - want) < 1e-12
    # the dose sweep's pairs apart: the tiny study's one pair (0, 1) is a :ref pair, no :pp
    dose = {r["quantity"]: r for r in study_rows(store, "d", 0, ["Q5"], "dose")
            if r.get("kind") == "imp" and r.get("level") == 0 and r.get("rewind") == 0}
    assert "instability:ref" in dose and "instability:pp" not in dose
    assert abs(dose["instability:ref"]["value"] - dose["instability"]["value"]) < 1e-12
