"""What the modules of a package declare, read from their source without importing them.

An extension module (a model, a dataset) declares itself with a decorator call on a
module-level function, ``@model("resnet20")`` or ``@dataset("mnist", ...)``: the first
argument is the name, the keyword arguments are the declaration's cheap facts (a literal's
value, or the source text of another expression, e.g. ``download=fetch_mnist``). :func:`declared` finds these calls with
``ast`` in every module of the package, so the names (for config checks, help texts and
command-line choices) are known without importing the modules and what they import (torch).
Resolving a name imports its module (:class:`stabilitylab.core.registry.Registry`), whose
decorator then checks that it was declared under that name.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Declared:
    """One declaration: the name, ``"module:function"``, the decorator's keyword arguments
    (see :func:`_fact`) and the first paragraph of the function's docstring."""

    name: str
    target: str
    facts: dict = field(default_factory=dict)
    doc: str = ""


def _decorator_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _fact(node: ast.expr):
    """A literal's value; any other expression's source text (``download=fetch_mnist``:
    ``"fetch_mnist"``), which says that the keyword is set."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node)


def _scan_file(path: Path, module: str, decorator: str) -> list[Declared]:
    text = path.read_text(encoding="utf-8")
    if f"@{decorator}(" not in text:  # no declaration: not worth parsing
        return []
    out = []
    for node in ast.parse(text, str(path)).body:
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            continue
        for dec in node.decorator_list:
            if not (isinstance(dec, ast.Call) and _decorator_name(dec.func) == decorator
                    and dec.args and isinstance(dec.args[0], ast.Constant)
                    and isinstance(dec.args[0].value, str)):
                continue
            facts = {k.arg: _fact(k.value) for k in dec.keywords if k.arg}
            doc = (ast.get_docstring(node) or "").strip().split("\n\n")[0]
            out.append(Declared(dec.args[0].value, f"{module}:{node.name}", facts,
                                " ".join(doc.split())))
    return out


def declared(package: str, decorator: str) -> dict[str, Declared]:
    """``{name: Declared}`` for every ``@decorator("name", ...)`` on a module-level function
    or class in the modules of ``package`` (its ``__path__``, modules in name order; read once
    per path)."""
    loaded = sys.modules.get(package)
    if loaded is not None and hasattr(loaded, "__path__"):
        where = list(loaded.__path__)
    else:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"{package} is not a package")
        where = list(spec.submodule_search_locations)
    return dict(_declared(package, decorator, tuple(where)))


@functools.lru_cache(maxsize=32)
def _declared(package: str, decorator: str, where: tuple[str, ...]) -> dict[str, Declared]:
    out: dict[str, Declared] = {}
    found = pkgutil.iter_modules(list(where))
    for info in sorted(found, key=lambda i: i.name):
        path = Path(info.module_finder.path) / f"{info.name}.py"
        if info.ispkg or not path.is_file():
            continue
        for entry in _scan_file(path, f"{package}.{info.name}", decorator):
            if entry.name in out:
                raise ValueError(f"{entry.name!r} is declared twice ({out[entry.name].target} "
                                 f"and {entry.target})")
            out[entry.name] = entry
    return out
