"""The analysis schema as code: every variable ``analyze`` writes, and every stability measure.

Three tables, filled at import time:

- :data:`GROUPS`: a *group* is one pass over the study that fills several variables
  (``trajectory``, ``interpolation``, ``replica``, ``gradient``, ``divergence``). It says
  what it reads (``trajectory``: the recorded weights over steps; ``endpoints``: the
  weights at k and T; ``function``: forward or backward passes through the networks).
- :data:`VARIABLES`: every variable of the ``analysis`` group: name, dims, unit,
  meaning, and the group that computes it (None: ``analyze`` itself, e.g.
  ``final_test_acc`` or the predictions).
- :data:`MEASURES`: the scalar stability measures (the ``measure`` coordinate): the
  variable each is read from, its reduction to one value per (kind, level, rewind)
  (mean over ``pair`` or ``replica``, or none), unit, which direction is more stable,
  citation and a one-line meaning.

A group and its measures are declared beside their compute function with
:func:`group`, in a module of this package whose name ends in ``_measures``
(``trajectory_measures.py``, ``function_measures.py``, ...). :func:`load` imports every
such module, so adding a measure is one file plus its test (docs/contributing.md).

    python -m stabilitylab.analysis.registry            # print the tables of the schema doc
    python -m stabilitylab.analysis.registry --update docs/analysis-schema.md
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import xarray as xr

READS = ("trajectory", "endpoints", "function")
REDUCTIONS = ("pair", "replica", None)
#: Dims of the analysis group (the study's, plus ``pair``, ``alpha``, ``measure`` and the
#: geometry groups' dims).
DIMS = ("kind", "level", "rewind", "replica", "step", "pair", "alpha", "delta", "measure",
        "component", "layer", "plane", "plane_x", "plane_y", "anchor", "curve")


@dataclass(frozen=True)
class Variable:
    """One variable of the ``analysis`` group."""

    name: str
    dims: tuple[str, ...]
    meaning: str
    unit: str = ""  # of the stored value ("fraction", "nats", "iterations", ...)
    group: str | None = None  # the group that computes it; None: analyze itself
    dtype: str = "float64"
    needs_trajectory: bool = False  # NaN (and listed in attrs["absent"]) with endpoints only


@dataclass(frozen=True)
class Measure:
    """A scalar stability measure: one value per (kind, level, rewind) after ``reduce``."""

    name: str
    source: str  # the variable it is read from
    reduce: str | None  # mean over "pair" or "replica" (NaN ignored), or None
    unit: str  # of the stored value; "fraction" is shown in percentage points
    higher_is_stable: bool | None  # None: no fixed direction
    meaning: str
    citation: str = ""
    label: str = ""  # short label for tables (default: the name)
    rank: int = 1000  # position of the measure coordinate (ties: registration order)
    stable_note: str = ""  # added to the direction, e.g. "closer to 1"
    group: str = ""  # filled in by :func:`group`

    @property
    def description(self) -> str:
        """Meaning and citation in one sentence, for glossaries."""
        return f"{self.meaning} ({self.citation})" if self.citation else self.meaning

    @property
    def direction(self) -> str:
        """``"higher"``, ``"lower"`` or ``"no fixed direction"`` (plus the note): which way is
        more stable."""
        base = {True: "higher", False: "lower", None: "no fixed direction"}[self.higher_is_stable]
        return f"{base} ({self.stable_note})" if self.stable_note else base


@dataclass(frozen=True)
class Options:
    """What ``analyze`` was asked for, passed to every group's compute function."""

    groups: tuple[str, ...]  # the selected groups
    alphas: int  # interpolation points of the fixed grids
    adaptive: bool = False  # interpolation/aligned barriers by the adaptive α search


@dataclass(frozen=True)
class Group:
    """One pass over the study that fills ``variables``.

    ``compute(ctx, results, options, progress) -> {name: DataArray}`` gets the
    :class:`~stabilitylab.analysis.context.StudyContext`, the variables computed so
    far (groups run in ``rank`` order, after those in ``needs``), the
    :class:`Options` and a callable taking a number of finished work units.
    ``work(ctx)`` is that number in total (default, :meth:`units`: one per (kind, level,
    rewind) combination). A group ``part_of`` another is computed in
    the other's pass (``compute`` None): selecting it runs that pass.
    """

    name: str
    reads: str
    compute: Callable | None
    variables: tuple[Variable, ...]
    measures: tuple[Measure, ...] = ()
    phase: str = ""  # progress-bar phase
    work: Callable | None = None
    part_of: str | None = None
    needs: tuple[str, ...] = ()
    rank: int = 1000
    default: bool = True  # False: computed only when --measures names it (opt-in)
    #: Modules ``compute`` imports on first use, imported while ``analyze`` loads (its
    #: ``loading`` row) so that a group's row is its own work, e.g. ``torch._dynamo``, which
    #: ``torch.func.grad`` imports (about 1.7 s of CPU, once per process).
    preload: tuple[str, ...] = ()

    def units(self, ctx) -> int:
        """Work units of this group on ``ctx`` (``work(ctx)``, or one per combination)."""
        return self.work(ctx) if self.work is not None else len(list(ctx.combos()))


GROUPS: dict[str, Group] = {}
VARIABLES: dict[str, Variable] = {}
_MEASURES: dict[str, Measure] = {}


def _check_variable(v: Variable) -> None:
    if v.name in VARIABLES and VARIABLES[v.name] != v:
        raise ValueError(f"analysis variable {v.name!r} is declared twice")
    bad = [d for d in v.dims if d not in DIMS]
    if bad:
        raise ValueError(f"analysis variable {v.name!r}: unknown dims {bad}; known: {DIMS}")


def _add_variable(v: Variable) -> None:
    _check_variable(v)
    VARIABLES[v.name] = v


def register(g: Group) -> Group:
    """Add group ``g``, its variables and its measures to the tables (all or nothing)."""
    if g.reads not in READS:
        raise ValueError(f"group {g.name!r}: reads must be one of {READS}, got {g.reads!r}")
    if g.name in GROUPS and GROUPS[g.name] != g:
        raise ValueError(f"measure group {g.name!r} is registered twice")
    if (g.compute is None) == (g.part_of is None):
        raise ValueError(f"group {g.name!r}: give exactly one of compute and part_of")
    variables = [_replace(v, group=g.name) for v in g.variables]
    measures = [_replace(m, group=g.name) for m in g.measures]
    for v in variables:
        _check_variable(v)
    for m in measures:
        if m.reduce not in REDUCTIONS:
            raise ValueError(f"measure {m.name!r}: reduce must be one of {REDUCTIONS}")
        if m.name in _MEASURES and _MEASURES[m.name] != m:
            raise ValueError(f"measure {m.name!r} is declared twice")
    GROUPS[g.name] = g
    VARIABLES.update({v.name: v for v in variables})
    _MEASURES.update({m.name: m for m in measures})
    return g


def _replace(obj, **changes):
    from dataclasses import replace

    return replace(obj, **changes)


def group(name: str, *, reads: str, variables, measures=(), phase: str = "", work=None,
          needs=(), rank: int = 1000, default: bool = True, preload=()):
    """Decorator: register the decorated function as group ``name``'s compute function."""

    def deco(fn):
        register(Group(name=name, reads=reads, compute=fn, variables=tuple(variables),
                       measures=tuple(measures), phase=phase or name, work=work,
                       needs=tuple(needs), rank=rank, default=default,
                       preload=tuple(preload)))
        return fn

    return deco


_loaded = False


def load() -> None:
    """Import every ``*_measures`` module of :mod:`stabilitylab.analysis` (they register)."""
    global _loaded
    if _loaded:
        return
    import stabilitylab.analysis as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.endswith("_measures"):
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    _loaded = True


def groups() -> tuple[str, ...]:
    """Group names in the order they are computed."""
    load()
    return tuple(sorted(GROUPS, key=lambda n: GROUPS[n].rank))


def measures() -> dict[str, Measure]:
    """Every scalar measure, in the order of the ``measure`` coordinate."""
    load()
    names = sorted(_MEASURES, key=lambda n: _MEASURES[n].rank)  # stable: ties keep order
    return {n: _MEASURES[n] for n in names}


def variables() -> dict[str, Variable]:
    """Every analysis variable: each group's (in group order), then analyze's own."""
    load()
    out = {}
    for g in groups():
        out.update({v.name: v for v in VARIABLES.values() if v.group == g})
    out.update({v.name: v for v in VARIABLES.values() if v.group is None})
    return out


def select(names) -> tuple[str, ...]:
    """The groups to compute for ``names``: group and measure names in any mix (a measure
    selects its whole group, a group the groups it needs; ``"default"`` every default group);
    None or empty: every default group (an opt-in group, ``default=False``, only when named)."""
    from stabilitylab.core.errors import StabilityLabError

    order = groups()
    if not names:
        return tuple(g for g in order if GROUPS[g].default)
    table = measures()
    wanted = set()
    for name in names:
        if name == "default":  # every default group, plus whatever else is named
            wanted.update(g for g in order if GROUPS[g].default)
        elif name in GROUPS:
            wanted.add(name)
        elif name in table:
            wanted.add(table[name].group)
        else:
            raise StabilityLabError(
                f"--measures: unknown measure or group {name!r}; groups: " + ", ".join(order)
                + "; measures: " + ", ".join(table))
    todo = list(wanted)
    while todo:  # what the wanted groups need
        g = GROUPS[todo.pop()]
        for dep in g.needs:
            if dep not in GROUPS or GROUPS[dep].rank >= g.rank:
                raise ValueError(f"group {g.name!r} needs {dep!r}, which must be a registered "
                                 "group of lower rank (computed before it)")
            if dep not in wanted:
                wanted.add(dep)
                todo.append(dep)
    return tuple(g for g in order if g in wanted)


def allocate(ctx, name: str, **coords) -> xr.DataArray:
    """Variable ``name`` as an all-NaN DataArray with its schema dims, the coordinates taken
    from ``ctx`` (a StudyContext: kind, level, rewind, replica, step, pair) or ``coords``."""
    var = variables()[name]
    known = {"kind": ctx.kinds, "level": ctx.levels, "rewind": ctx.rewinds,
             "replica": ctx.replicas, "step": ctx.steps, "pair": ctx.pair_labels, **coords}
    missing = [d for d in var.dims if d not in known]
    if missing:
        raise ValueError(f"allocate {name!r}: give the coordinates of {missing}")
    shape = tuple(len(known[d]) for d in var.dims)
    return xr.DataArray(np.full(shape, np.nan), dims=var.dims,
                        coords={d: known[d] for d in var.dims})


# -- variables analyze writes itself -------------------------------------------------------------

_KLR = ("kind", "level", "rewind")
_ML = ("measure", "level")
for _v in (
    Variable("final_test_acc", _KLR, "mean over replicas of the final test accuracy (complete "
             "runs only)", "fraction"),
    Variable("final_test_acc_std", _KLR, "its standard deviation over replicas", "fraction"),
    Variable("density", _KLR, "kept fraction of prunable weights", "fraction"),
    Variable("dense_test_acc", (), "the dense pretraining run's final test accuracy (one run: "
             "information only; matching compares with the dense copies)", "fraction"),
    Variable("stable", _KLR, "mean instability (pair mean) < `attrs[\"threshold\"]`",
             dtype="bool"),
    Variable("matching", _KLR, "`matching_low` ≥ −`matching_margin`: the subnetwork's accuracy "
             "is within the margin of the dense copies' at the same k, paired by data order "
             "(Frankle et al., ICML 2020, Sec. 4 and 4.4, made a one-sided test); False where "
             "`matching_low` is undefined", dtype="bool"),
    Variable("matching_difference", _KLR, "mean over replicas j of final test accuracy minus "
             "that of the level-0 `imp` copy j at the same k (same data order)", "fraction"),
    Variable("matching_low", _KLR, "its one-sided `attrs[\"matching_confidence\"]` lower "
             "bound, Student's t with n − 1 dof; NaN with fewer than 2 pairs", "fraction"),
    Variable("matching_pairs", _KLR, "the number n of replica pairs behind it", "pairs",
             dtype="int64"),
    Variable("matching_margin", ("rewind",), "max(`attrs[\"matching_tolerance\"]`, sd over "
             "replicas of the level-0 `imp` copies' final test accuracy)", "fraction"),
    Variable("measure_value", ("measure", "level", "rewind"), "each scalar measure, reduced "
             "as the measures table says, for the `imp` kind", "the measure's"),
    Variable("spearman", _ML, "Spearman ρ of the measure vs final test accuracy across "
             "rewind points"),
    Variable("spearman_low", _ML, "its 95% bootstrap CI, lower end"),
    Variable("spearman_high", _ML, "its 95% bootstrap CI, upper end"),
    Variable("kendall", _ML, "Kendall τ, same"),
    Variable("kendall_low", _ML, "its 95% bootstrap CI, lower end"),
    Variable("kendall_high", _ML, "its 95% bootstrap CI, upper end"),
    Variable("predicted_rewind_measure", _ML, "the measure rule: earliest k whose value has "
             "settled within 10% of its value at the largest k (−1 if none)", "iterations",
             dtype="int64"),
    Variable("gap_measure", _ML, "accuracy(oracle k) − accuracy(predicted k)", "fraction"),
    Variable("predicted_rewind_lmc", ("level",), "the LMC rule: earliest k with mean "
             "instability < `attrs[\"threshold\"]` (−1 if none)", "iterations", dtype="int64"),
    Variable("oracle_rewind", ("level",), "k with the best mean final test accuracy",
             "iterations", dtype="int64"),
    Variable("gap_lmc", ("level",), "accuracy(oracle k) − accuracy(LMC k)", "fraction"),
):
    _add_variable(_v)

#: Coordinates besides the dims: the replica indices of each pair.
PAIR_COORDS = {"pair_a": "the first replica of the pair", "pair_b": "the second replica"}


# -- the schema doc --------------------------------------------------------------------------

BEGIN = "<!-- generated by `python -m stabilitylab.analysis.registry`: {} -->"
END = "<!-- end of generated {} -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a literal | (as in |G|²) would end the cell


def variables_table() -> str:
    """The Markdown table of every analysis variable."""
    rows = ["| name | dims | unit | computed by | meaning |", "|---|---|---|---|---|"]
    for v in variables().values():
        rows.append(f"| `{v.name}` | {', '.join(v.dims) or '()'} | {v.unit or '—'} | "
                    f"{v.group or 'analyze'} | {_cell(v.meaning)} |")
    return "\n".join(rows)


def measures_table() -> str:
    """The Markdown table of every scalar measure."""
    rows = [("| measure | group | reads | from variable | reduction | unit | more stable | "
             "meaning |"), "|---|---|---|---|---|---|---|---|"]
    for m in measures().values():
        rows.append(f"| `{m.name}` | {m.group} | {GROUPS[m.group].reads} | `{m.source}` | "
                    f"{m.reduce + ' mean' if m.reduce else 'none'} | {m.unit} | "
                    f"{m.direction} | {_cell(m.description)} |")
    return "\n".join(rows)


def groups_table() -> str:
    """The Markdown table of the measure groups."""
    rows = ["| group | reads | computed in the pass of | needs | by default |",
            "|---|---|---|---|---|"]
    for name in groups():
        g = GROUPS[name]
        rows.append(f"| `{name}` | {g.reads} | {g.part_of or name} | "
                    f"{', '.join(g.needs) or '—'} | {'yes' if g.default else 'no (opt-in)'} |")
    return "\n".join(rows)


TABLES = {"groups": groups_table, "variables": variables_table, "measures": measures_table}


def render_doc(text: str) -> str:
    """``text`` with every generated table replaced by its current version."""
    for key, make in TABLES.items():
        begin, end = BEGIN.format(key), END.format(key)
        if begin not in text or end not in text:
            raise ValueError(f"the schema doc has no generated {key!r} table ({begin})")
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{make()}\n{end}{tail}"
    return text


def main(argv=None) -> int:
    import argparse
    from pathlib import Path

    R = importlib.import_module("stabilitylab.analysis.registry")  # not __main__'s copy

    p = argparse.ArgumentParser(description="Print (or update in a doc) the analysis tables.")
    p.add_argument("--update", type=Path, help="rewrite the generated tables in this file")
    args = p.parse_args(argv)
    if args.update is None:
        for key, make in R.TABLES.items():
            print(f"{R.BEGIN.format(key)}\n{make()}\n{R.END.format(key)}\n")
        return 0
    text = args.update.read_text(encoding="utf-8")
    new = R.render_doc(text)
    if new != text:
        args.update.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
