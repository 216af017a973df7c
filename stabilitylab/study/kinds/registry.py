"""The run-kind registry: what a kind declares (:class:`RunKind`), the inputs of its rules,
the rules several kinds share, and the lookups the plan and the execution use.

Each kind is declared in its own module of :mod:`stabilitylab.study.kinds` (``imp.py``,
``reinit.py``, ...), which calls :func:`register` when the package loads it; nothing else
names it (see docs/contributing.md, "A run kind").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (the context imports this module's users, not the other way round)
    import torch

    from stabilitylab.study.context import RewindPoint, TaskContext

Masks = dict[str, "torch.Tensor"]  # prunable parameter name -> bool mask (unstacked)


@dataclass
class MaskInputs:
    """What a mask rule may read, for one (kind, level, rewind k). Through ``ctx``: the
    model template ``ctx.template`` (an ``nn.Module``, e.g. for pruning-at-init scores),
    the stacked model ``ctx.stacked``, the data ``ctx.data`` and the config ``ctx.cfg``."""

    ctx: TaskContext
    kind: str
    level: int
    rewind: int
    imp: Masks  # the IMP masks at (level, k) (all True at level 0)
    point: RewindPoint  # the dense run at step k: W_k, its BN buffers, optimizer state
    generator: torch.Generator  # seeded for (kind, level, k)
    replica: int | None = None  # own-mask kinds: the copy whose masks these are
    own: Masks | None = None  # own-mask kinds: IMP on this copy's own earlier levels

    @property
    def weights_k(self) -> dict[str, torch.Tensor]:
        """W_k, unstacked."""
        return self.point.params

    @property
    def weights_0(self) -> dict[str, torch.Tensor]:
        """W_0 (the study's init), unstacked."""
        return self.ctx.init_weights

    def batches(self, n: int, replica: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The ``n`` training batches (x, y) that data order u_replica gives from step k on
        (on the study's device, not augmented)."""
        from stabilitylab.train.data_order import DataOrders

        data, batch = self.ctx.data, self.ctx.cfg.training.batch_size
        orders = DataOrders([self.ctx.seeds.data_order(replica)], data.train_x.shape[0], batch,
                            data.train_x.device)
        idx = orders.block([self.rewind], 0, n)[:, 0]
        return [(data.train_x[i], data.train_y[i]) for i in idx]


@dataclass
class StartInputs:
    """What a start rule may read, for one run (kind, level, rewind k, replica)."""

    ctx: TaskContext
    kind: str
    level: int
    rewind: int
    replica: int
    point: RewindPoint  # the dense run at step k
    mask: Masks  # this kind's masks at (level, k)

    def generator(self) -> torch.Generator:
        """A generator seeded for (kind, level, k, replica): per-replica randomness."""
        from stabilitylab.core.seeds import generator

        return generator(self.ctx.seeds.kind(self.kind, self.level, self.rewind, self.replica))


@dataclass
class Start:
    """One replica's start: unstacked weights and buffers, the optimizer state (None: fresh;
    a fresh ``slow`` Lookahead state starts at the weights) and the optimizer steps it has
    taken (Adam bias correction, Lookahead sync)."""

    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    opt_state: dict[str, dict[str, torch.Tensor]] | None = None
    opt_step: int = 0


# -- the rules several kinds use --------------------------------------------------------

def imp_mask(m: MaskInputs) -> Masks:
    """The IMP masks themselves."""
    return m.imp


def from_rewind(s: StartInputs) -> Start:
    """W_k and its BN buffers; the dense run's optimizer state at k when
    ``training.restore_optimizer`` (else a fresh one, as OpenLTH does)."""
    restore = s.ctx.cfg.training.restore_optimizer
    return Start(s.point.params, s.point.buffers, s.point.opt_state if restore else None,
                 s.rewind if restore else 0)


def own_order(replica: int) -> int:
    """Replica r trains under data order u_r."""
    return replica


@dataclass(frozen=True)
class RunKind:
    """One kind of run: what it trains and how people see it.

    ``rank`` orders the registry (the order of the store's ``kind`` coordinate and of each
    group's runs; ties: registration order). ``label`` names its runs in the report and the
    figures (default: the name), ``pair_label`` (noise kinds) the pairs whose copies differ
    by this noise, ``pair_noise`` the noise its own pairs differ by when it is another
    kind's (default: its name), ``color`` and ``line`` its colour (None: the figure's colour cycle) and
    line style in figures. ``starts_at_rewind``: its copies start from W_k (False for a
    fresh or independent initialization: then the dense copy from W_k is not its
    counterpart, so the ``trajectory`` group's pruning-noise distance, replica 0 against the
    dense copy from W_k, is NaN for it). ``in_every_store``: one of
    the three kinds every store's ``kind`` coordinate begins with (trained or not).
    """

    name: str
    meaning: str
    control: bool  # trained only at control levels (and when named in study.controls)
    mask: Callable[[MaskInputs], Masks]
    start: Callable[[StartInputs], Start] = field(default=None)  # None: from_rewind
    data_order: Callable[[int], int] = field(default=None)  # None: own_order
    noise: bool = False  # a noise kind: trained at study.noise_levels when named in study.noise
    own_masks: bool = False  # masks per replica, from the copy's own earlier levels (own IMP)
    rank: int = 1000
    label: str = ""
    pair_label: str = ""
    pair_noise: str = ""  # a noise kind whose pairs differ by another kind's noise (init_imp)
    color: str | None = None
    line: str = "-"
    starts_at_rewind: bool = True
    in_every_store: bool = False  # imp, random_prune, reinit: stabilitylab.store.schema.KINDS

    def __post_init__(self):
        if self.start is None:
            object.__setattr__(self, "start", from_rewind)
        if self.data_order is None:
            object.__setattr__(self, "data_order", own_order)
        if not self.label:
            object.__setattr__(self, "label", self.name)


REGISTRY: dict[str, RunKind] = {}


def register(kind: RunKind) -> RunKind:
    """Add ``kind`` at its ``rank`` (after the registered kinds of the same rank)."""
    if kind.name in REGISTRY:
        raise ValueError(f"run kind {kind.name!r} is already registered")
    entries = [*REGISTRY.values(), kind]
    entries.sort(key=lambda k: k.rank)  # stable: ties keep registration order
    REGISTRY.clear()
    REGISTRY.update((k.name, k) for k in entries)
    return kind


def get(name: str) -> RunKind:
    return REGISTRY[name]


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def control_names() -> tuple[str, ...]:
    """The names ``study.controls`` may list."""
    return tuple(n for n, k in REGISTRY.items() if k.control)


def noise_names() -> tuple[str, ...]:
    """The names ``study.noise`` may list beyond ``data_order``."""
    return tuple(n for n, k in REGISTRY.items() if k.noise)


def store_kinds(used) -> tuple[str, ...]:
    """The store's ``kind`` coordinate for a study that trains the kinds ``used``: the kinds
    every store has, then the others it trains, in registry order. ValueError for a name
    not registered."""
    unknown = sorted(set(used) - set(REGISTRY))
    if unknown:
        raise ValueError(f"unknown run kinds {unknown}; known: {', '.join(REGISTRY)}")
    return tuple(n for n, k in REGISTRY.items() if k.in_every_store or n in used)


def kinds_at(resolved, level: int) -> list[str]:
    """The kinds trained at ``level``, in registry order."""
    study = resolved.config.study
    at_controls = level in resolved.control_levels
    at_noise = level in getattr(resolved, "noise_levels", ())
    return [n for n, k in REGISTRY.items()
            if (k.control and at_controls and n in study.controls)
            or (k.noise and at_noise and n in study.noise)
            or (not k.control and not k.noise)]
