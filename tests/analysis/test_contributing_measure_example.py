"""docs/contributing.md's measure example registers as written (it once failed with
"registered twice": its names were those of a shipped module)."""

import re
from pathlib import Path

from stabilitylab.analysis import registry

DOC = Path(__file__).resolve().parents[2] / "docs" / "contributing.md"


def _measure_example() -> tuple[str, str]:
    section = DOC.read_text().split("## A measure", 1)[1].split("\n## ", 1)[0]
    path = re.search(r"\*\*File\*\*: `([^`]+)`", section).group(1)
    code = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)
    return path, code


def test_the_measure_example_registers_its_group_variable_and_measure(monkeypatch):
    path, code = _measure_example()
    root = DOC.parents[1]
    assert not (root / path).exists(), f"{path} exists: the example must name a new module"
    registry.load()  # the shipped modules are imported
    for table in ("GROUPS", "VARIABLES", "_MEASURES"):  # restored after the test
        monkeypatch.setattr(registry, table, dict(getattr(registry, table)))
    before = set(registry.GROUPS)
    exec(compile(code, path, "exec"), {"__name__": "example_measures"})  # noqa: S102
    (new,) = set(registry.GROUPS) - before
    group = registry.GROUPS[new]
    assert group.variables and all(v.name in registry.VARIABLES for v in group.variables)
    assert all(m.name in registry._MEASURES for m in group.measures)
