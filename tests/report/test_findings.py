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
PHASES = ("common", "make_findings", "collect", "render", "document", "chaos")


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
    assert questions == {"Q1", "Q2", "Q3", "Q4", "Q5", "Q6", "Q7"}
    for c in plan["condition"]:
        cfg = stabilitylab.load_config(c["config"])
        assert cfg.study.replicas >= 2 and len(cfg.study.rewinds) >= 2
        if {"Q6"} & set(c["questions"]):
            assert len(seeds_of(plan, c)) >= 5  # paired intervals over seeds
    ids = {make_findings.expected_id(c["config"], s) for c in plan["condition"]
           for s in seeds_of(plan, c)}
    assert len(ids) == sum(len(seeds_of(plan, c)) for c in plan["condition"])  # no two alike


def test_report_phase_reproduces_the_committed_report(make_findings, tmp_path):
    assert make_findings.main(["report", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    for q in ("## Q1.", "## Q2.", "## Q3.", "## Q4.", "## Q5.", "## Q6.", "## Q7."):
        assert q in text
    for fig in ("q1_stability", "q1_accuracy", "q2_dropout", "q3_measures", "q4_ratio",
                "q5_noise", "q5_growth", "q7_pai"):
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
