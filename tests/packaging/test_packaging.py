"""pyproject.toml lists its packages by hand: a new subpackage missing from the list installs
fine in an editable checkout but is absent from a real `pip install .` (CI, users)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    on_disk = {"stabilitylab." + ".".join(p.parent.relative_to(ROOT / "stabilitylab").parts)
               for p in (ROOT / "stabilitylab").rglob("__init__.py")}
    on_disk = {name.rstrip(".") for name in on_disk} | {"stabilitylab.cli"}
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages"
