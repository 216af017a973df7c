"""The run kinds: what each kind of run trains, declared in one registry entry.

A study trains IMP copies at every level and, at control levels, the controls named in
``study.controls``. Each kind is a :class:`RunKind` declaring

- ``name`` and a one-line ``meaning``;
- ``control``: trained only at control levels (and only when listed in
  ``study.controls``), or at every level;
- ``mask(MaskInputs) -> masks``: its masks at (level, rewind k), one per (kind, level, k)
  (shared by its replicas), from the IMP masks at (level, k), W_k, W_0, a few training
  batches and a generator seeded for (kind, level, k);
- ``start(StartInputs) -> Start``: each replica's start weights, BN buffers and optimizer
  state, e.g. from W_k with the dense run's optimizer state at k, or a fresh init;
- ``data_order(replica) -> j``: the replica trains under data order u_j.

The execution (:mod:`stabilitylab.study.execution`) only looks kinds up here, so adding
a kind is one :func:`register` call (and its name in
:data:`stabilitylab.store.schema.EXTRA_KINDS`: a store's ``kind`` coordinate is
:data:`~stabilitylab.store.schema.KINDS` followed by the extra kinds its study trains).

The three kinds (Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket
Hypothesis", Sec. 4; Frankle & Carbin 2019, Sec. 2):

- ``imp``: iterative magnitude pruning with rewinding to W_k;
- ``random_prune``: W_k under a random mask with the IMP mask's per-layer density;
- ``reinit``: the IMP mask on a fresh initialization.
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


@dataclass(frozen=True)
class RunKind:
    name: str
    meaning: str
    control: bool  # trained only at control levels (and when named in study.controls)
    mask: Callable[[MaskInputs], Masks]
    start: Callable[[StartInputs], Start] = field(default=None)  # None: from_rewind
    data_order: Callable[[int], int] = field(default=None)  # None: own_order
    noise: bool = False  # a noise kind: trained at study.noise_levels when named in study.noise

    def __post_init__(self):
        if self.start is None:
            object.__setattr__(self, "start", from_rewind)
        if self.data_order is None:
            object.__setattr__(self, "data_order", own_order)


# -- the rules the built-in kinds use ---------------------------------------------------

def imp_mask(m: MaskInputs) -> Masks:
    """The IMP masks themselves."""
    return m.imp


def random_mask(m: MaskInputs) -> Masks:
    """A random mask with the IMP mask's per-layer density (level 0: nothing pruned)."""
    from stabilitylab.prune import random_masks_like

    return random_masks_like(m.imp, m.generator) if m.level > 0 else m.imp


def from_rewind(s: StartInputs) -> Start:
    """W_k and its BN buffers; the dense run's optimizer state at k when
    ``training.restore_optimizer`` (else a fresh one, as OpenLTH does)."""
    restore = s.ctx.cfg.training.restore_optimizer
    return Start(s.point.params, s.point.buffers, s.point.opt_state if restore else None,
                 s.rewind if restore else 0)


def fresh_init(s: StartInputs) -> Start:
    """A new initialization (seed ``Seeds.reinit``, the same for every run) and a fresh
    optimizer."""
    params, buffers = s.ctx.model_weights(s.ctx.seeds.reinit)
    return Start(params, buffers, None, 0)


def own_order(replica: int) -> int:
    """Replica r trains under data order u_r."""
    return replica


def first_order(replica: int) -> int:
    """Every replica trains under replica 0's data order u_0."""
    return 0


def perturbed_rewind(s: StartInputs) -> Start:
    """:func:`from_rewind`, with W_k moved by a perturbation seeded for this replica
    (``study.perturbation``: a relative Gaussian of size ``study.epsilon``, or one bit flip;
    :mod:`stabilitylab.train.perturb`). Pruned weights are not touched."""
    from stabilitylab.train.perturb import perturb

    start = from_rewind(s)
    study = s.ctx.cfg.study
    params = perturb(start.params, s.mask, s.generator(), kind=study.perturbation,
                     epsilon=study.epsilon)
    return Start(params, start.buffers, start.opt_state, start.opt_step)


def dense_mask(m: MaskInputs) -> Masks:
    """Nothing pruned, at every level."""
    import torch  # the registry itself (names, controls) loads without torch

    return {n: torch.ones_like(t, dtype=torch.bool) for n, t in m.imp.items()}


def independent_init(s: StartInputs) -> Start:
    """A W_0 of this copy's own, seeded for (``init``, replica) alone: copy r starts from the
    same W_0^(r) at every level and rewind point, and no two copies (nor the IMP copies)
    share it; a fresh optimizer."""
    params, buffers = s.ctx.model_weights(s.ctx.seeds.kind("init", 0, 0, s.replica))
    return Start(params, buffers, None, 0)


def _pai_rule(name: str):
    """A pruning-at-init mask rule (:mod:`stabilitylab.prune.pai`) at the IMP mask's density
    over the same prunable weights, scoring W_0 (``pruning.pai_from = "init"``) or W_k, on
    one training batch of data order u_0 from step k (SNIP, GraSP; SynFlow needs no data)."""

    def rule(m: MaskInputs) -> Masks:
        from stabilitylab.prune import density
        from stabilitylab.prune.pai import PAI_RULES

        if m.level == 0:
            return m.imp
        ctx = m.ctx
        if ctx.cfg.pruning.pai_from == "init":
            params, buffers = ctx.init_weights, {n: t[0] for n, t in ctx.init_buffers.items()}
        else:
            params, buffers = m.point.params, m.point.buffers
        import torch

        eligible = {n: torch.ones_like(t, dtype=torch.bool) for n, t in m.imp.items()}
        masks = PAI_RULES[name](ctx.stacked.template, params, buffers, m.batches(1)[0],
                                density(m.imp), eligible, generator=m.generator)
        return {n: masks[n].cpu() for n in m.imp}

    rule.__name__ = f"{name}_mask"
    return rule


def shuffled_mask(m: MaskInputs) -> Masks:
    """The IMP mask with its kept positions permuted at random within each layer (per-layer
    density kept): the layerwise-shuffle ablation of Frankle et al. 2021, "Pruning Neural
    Networks at Initialization: Why are We Missing the Mark?" (ICLR), Sec. 5."""
    from stabilitylab.prune.pai import layerwise_shuffle

    return layerwise_shuffle(m.imp, m.generator) if m.level > 0 else m.imp


# -- the registry -----------------------------------------------------------------------

REGISTRY: dict[str, RunKind] = {}


def register(kind: RunKind) -> RunKind:
    """Add ``kind`` (after the ones already registered: the order of the store's ``kind``
    coordinate and of each group's runs)."""
    if kind.name in REGISTRY:
        raise ValueError(f"run kind {kind.name!r} is already registered")
    REGISTRY[kind.name] = kind
    return kind


register(RunKind("imp", "iterative magnitude pruning, rewound to W_k", control=False,
                 mask=imp_mask))
register(RunKind("random_prune", "W_k under a random mask of the IMP mask's per-layer density",
                 control=True, mask=random_mask))
register(RunKind("reinit", "the IMP mask on a fresh initialization", control=True,
                 mask=imp_mask, start=fresh_init))
# Noise kinds (study.noise): copies that differ by a perturbation of W_k, not (only) by data
# order; Summers & Dinneen 2021, "Nondeterminism and Instability in Neural Network
# Optimization" (ICML).
register(RunKind("perturb", "the IMP mask from a perturbed W_k, all copies under data order u_0",
                 control=False, noise=True, mask=imp_mask, start=perturbed_rewind,
                 data_order=first_order))
register(RunKind("data_order+perturb", "the IMP mask from a perturbed W_k, each copy its own "
                 "data order", control=False, noise=True, mask=imp_mask,
                 start=perturbed_rewind))
# Different-init pairs (Entezari et al., ICLR 2022): dense copies from independently seeded
# W_0 under their own data orders, sharing nothing but the architecture; the baseline the
# data-order copies are measured against. Never "data-order instability".
register(RunKind("init", "dense copies from independently seeded W_0, each its own data order "
                 "(different-init pairs)", control=False, noise=True, mask=dense_mask,
                 start=independent_init))
# Pruning-at-init controls: masks scored once at W_0 (or W_k), at the IMP level's density,
# trained from W_k like random_prune.
register(RunKind("magnitude_init", "W_k under the global magnitude mask of W_0 (Frankle et al. "
                 "2021)", control=True, mask=_pai_rule("magnitude_init")))
register(RunKind("snip", "W_k under the SNIP mask (Lee et al. 2019)", control=True,
                 mask=_pai_rule("snip")))
register(RunKind("grasp", "W_k under the GraSP mask (Wang et al. 2020)", control=True,
                 mask=_pai_rule("grasp")))
register(RunKind("synflow", "W_k under the SynFlow mask (Tanaka et al. 2020)", control=True,
                 mask=_pai_rule("synflow")))
register(RunKind("shuffle", "W_k under the IMP mask shuffled within each layer (Frankle et al. "
                 "2021)", control=True, mask=shuffled_mask))


def get(name: str) -> RunKind:
    return REGISTRY[name]


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def control_names() -> tuple[str, ...]:
    """The names ``study.controls`` may list."""
    return tuple(n for n, k in REGISTRY.items() if k.control)


def kinds_at(resolved, level: int) -> list[str]:
    """The kinds trained at ``level``, in registry order."""
    study = resolved.config.study
    at_controls = level in resolved.control_levels
    at_noise = level in getattr(resolved, "noise_levels", ())
    return [n for n, k in REGISTRY.items()
            if (k.control and at_controls and n in study.controls)
            or (k.noise and at_noise and n in study.noise)
            or (not k.control and not k.noise)]
