"""One way down through the code: no module imports a layer above its own.

The layer order is written down in docs/contributing.md ("Layers"); this test reads every
import statement of the package with ``ast`` (module-level and inside functions alike) and
fails on one that points upward, or sideways into another package of the same layer.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Bottom to top. A module may import its own package and the packages of lower layers.
LAYERS: list[tuple[str, ...]] = [
    ("core", "progress"),
    ("config",),
    ("models",),
    ("data",),
    ("prune",),
    ("train",),
    ("store",),
    ("study",),
    ("analysis",),
    ("report", "interop", "distributed"),
    ("api", "testing", "cli", "<root>"),
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}

# Upward imports still to be removed (phase 2 of issue #24: config/ keeps only the syntax and
# type checks; the registry-dependent checks and the study id move to study/resolve.py). The
# test also fails when one of these is gone, so the list only shrinks.
KNOWN_UPWARD = {
    ("stabilitylab.config.loader", "stabilitylab.models.registry"),
    ("stabilitylab.config.loader", "stabilitylab.data.registry"),
    ("stabilitylab.config.validate", "stabilitylab.models"),
    ("stabilitylab.config.validate", "stabilitylab.models.registry"),
    ("stabilitylab.config.validate", "stabilitylab.data.registry"),
    ("stabilitylab.config.validate", "stabilitylab.study.kinds"),
    ("stabilitylab.config.validate", "stabilitylab.store.schema"),
    ("stabilitylab.config.validate", "stabilitylab.train.check"),
    ("stabilitylab.config.validate", "stabilitylab.train.optim"),
}


def package_files() -> dict[str, Path]:
    """``{module name: file}`` of the package (``cli/`` installs as ``stabilitylab.cli``)."""
    out = {}
    for base, prefix in ((ROOT / "stabilitylab", ["stabilitylab"]),
                         (ROOT / "cli", ["stabilitylab", "cli"])):
        for path in sorted(base.rglob("*.py")):
            parts = prefix + list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports(module: str, path: Path) -> list[tuple[str, bool]]:
    """``(imported module, inside a function)`` for every import statement of one file."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".")
                    base = base[:len(base) - child.level + (1 if is_pkg else 0)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target == "stabilitylab":  # from stabilitylab import x: x may be a module
                    found.extend((f"stabilitylab.{a.name}", in_function) for a in child.names)
                else:
                    found.append((target, in_function))
            visit(child, in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


def package_of(module: str, known: set[str]) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "<root>"
    if module in known or any(k.startswith(module + ".") for k in known) \
            or ".".join(parts[:2]) in known:
        return parts[1]
    return "<root>"  # an attribute of the package root (from stabilitylab import open_study)


def upward_imports() -> set[tuple[str, str]]:
    files = package_files()
    known = set(files)
    bad = set()
    for module, path in files.items():
        src = package_of(module, known)
        for target, _ in imports(module, path):
            if target != "stabilitylab" and not target.startswith("stabilitylab."):
                continue
            dst = package_of(target, known)
            top = RANK[src] == len(LAYERS) - 1  # the entry points may call each other
            if dst != src and (RANK[dst] > RANK[src] or (RANK[dst] == RANK[src] and not top)):
                bad.add((module, target))
    return bad


def test_every_package_has_a_layer():
    packages = {package_of(m, set(package_files())) for m in package_files()}
    assert packages <= set(RANK), f"give these a layer in LAYERS: {packages - set(RANK)}"


def test_no_module_imports_a_layer_above_its_own():
    bad = upward_imports()
    new = sorted(bad - KNOWN_UPWARD)
    assert not new, "upward imports (see docs/contributing.md, Layers):\n" + "\n".join(
        f"  {a} -> {b}" for a, b in new)
    gone = sorted(KNOWN_UPWARD - bad)
    assert not gone, f"remove from KNOWN_UPWARD (fixed): {gone}"


def test_the_layer_order_is_the_documented_one():
    text = (ROOT / "docs" / "contributing.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\d+\. (.+)$", section, flags=re.MULTILINE)
    documented = [tuple(re.findall(r"`([^`]+)`", row)) for row in rows]
    assert documented == [tuple(p for p in layer) for layer in LAYERS]


def test_an_upward_import_is_caught(tmp_path):
    """The checker itself: a function-level import of a higher layer is found."""
    path = tmp_path / "fake.py"
    path.write_text("def f():\n    from stabilitylab.study.kinds import names\n    return names\n")
    found = imports("stabilitylab.models.fake", path)
    assert found == [("stabilitylab.study.kinds", True)]
    known = set(package_files())
    assert RANK[package_of("stabilitylab.study.kinds", known)] > RANK[
        package_of("stabilitylab.models.fake", known | {"stabilitylab.models.fake"})]
