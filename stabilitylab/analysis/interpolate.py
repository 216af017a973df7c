"""Evaluate networks along the linear path between two weight vectors.

Frankle et al., "Linear Mode Connectivity and the Lottery Ticket Hypothesis"
(ICML 2020): E_α = E(α·W₁ + (1 − α)·W₂) on an α grid with both endpoints
(α = 0 ↔ W₂, α = 1 ↔ W₁). The batched path stacks all A interpolated points of one
pair as A "replicas" of a :class:`~stabilitylab.train.functional.StackedModel` and
runs them in one vmapped forward per chunk of examples; cost is A forward passes
over the evaluation set (plus A over ``bn_recompute_x`` for BatchNorm nets) with
memory ~A × ``batch_size`` activations. :func:`evaluate_interpolation_loop` is the
plain per-α reference.

BatchNorm. Running statistics of an interpolated network are not the interpolation
of the endpoints' statistics, so (Git Re-Basin, Ainsworth et al. 2023; REPAIR,
Jordan et al. 2023) they are recomputed at every α on training examples. Here:
running stats are reset (mean 0, var 1), then ``bn_recompute_x`` is passed through
in chunks of ``bn_batch_size`` with *only* the BatchNorm layers in train mode
(dropout stays off), and chunk j updates the stats with momentum 1/j. The result is
the average over chunks of each chunk's batch mean and unbiased batch variance,
exactly what PyTorch's cumulative average (``momentum=None``,
``torch.optim.swa_utils.update_bn``) gives; with ``bn_batch_size ≥ len(bn_recompute_x)``
they are the exact statistics of the whole recompute set.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import logging
import time

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from stabilitylab.train.functional import StackedModel

__all__ = ["evaluate_interpolation", "evaluate_interpolation_loop", "evaluate_points",
           "interpolate_flat", "interpolate_pairs"]

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

log = logging.getLogger(__name__)


def interpolate_flat(w1: torch.Tensor, w2: torch.Tensor, alphas) -> torch.Tensor:
    """Points α·w1 + (1 − α)·w2 for every α: (P,), (P,), (A,) → (A, P).

    Written as the two-term sum (not ``lerp``) so that α = 1 gives ``w1`` and
    α = 0 gives ``w2`` bit for bit. Cost O(A·P).
    """
    a = torch.as_tensor(np.asarray(alphas, dtype=np.float64), dtype=w1.dtype, device=w1.device)
    a = a[:, None]
    return a * w1[None, :] + (1 - a) * w2[None, :]


def interpolate_pairs(w1: torch.Tensor, w2: torch.Tensor, alphas) -> torch.Tensor:
    """:func:`interpolate_flat` for n pairs at once: (n, P), (n, P), (A,) → (n, A, P), each
    pair's points bit for bit those of :func:`interpolate_flat`. Cost O(n·A·P)."""
    a = torch.as_tensor(np.asarray(alphas, dtype=np.float64), dtype=w1.dtype, device=w1.device)
    a = a[None, :, None]
    return a * w1[:, None, :] + (1 - a) * w2[:, None, :]


def _bn_mode(stacked: StackedModel, buffers, bn_recompute_x) -> str:
    if not stacked.buffer_slots:
        return "none"
    if bn_recompute_x is not None:
        return "recomputed"
    if buffers is not None:
        return "interpolated"
    raise ValueError("this model has BatchNorm buffers: pass bn_recompute_x (training examples, "
                     "recommended) or buffers=(b1_flat, b2_flat) to interpolate running stats")


def _loss_and_errors(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and error count over the example axis of (..., B, C) logits."""
    flat = logits.reshape(-1, logits.shape[-1]).double()
    yy = y.expand(*logits.shape[:-1]).reshape(-1)
    loss = nn.functional.cross_entropy(flat, yy, reduction="none").reshape(logits.shape[:-1])
    wrong = (logits.argmax(-1) != y).double()
    return loss.sum(-1), wrong.sum(-1)


def _set_bn_momentum(module: nn.Module, momentum) -> None:
    for m in module.modules():
        if isinstance(m, _BN_TYPES):
            m.momentum = momentum


def _bn_train_only(module: nn.Module) -> None:
    module.eval()
    for m in module.modules():
        if isinstance(m, _BN_TYPES):
            m.train()


@torch.no_grad()
def evaluate_interpolation(stacked: StackedModel, w1_flat: torch.Tensor, w2_flat: torch.Tensor,
                           alphas, x: torch.Tensor, y: torch.Tensor, *, buffers=None,
                           bn_recompute_x: torch.Tensor | None = None, batch_size: int = 100,
                           bn_batch_size: int | None = None) -> dict:
    """Error and mean cross-entropy at every α, all α points evaluated as one stacked group.

    Parameters
    ----------
    stacked : StackedModel
        Layout and template of the architecture.
    w1_flat, w2_flat : torch.Tensor
        (P,) flat weights (``param`` layout) of the two endpoints; their device is used.
    alphas : array_like
        (A,) coefficients; E_α = E(α·W₁ + (1−α)·W₂).
    x, y : torch.Tensor
        Evaluation examples (N, ...) and integer labels (N,).
    buffers : tuple of two (Q,) tensors, optional
        Endpoint flat buffers (b1, b2). For BatchNorm nets without ``bn_recompute_x``
        they are interpolated like the weights (not recommended). Ignored otherwise.
    bn_recompute_x : torch.Tensor, optional
        Training examples used to recompute BatchNorm statistics at every α (module
        docstring). Required for BatchNorm nets unless ``buffers`` is given.
    batch_size : int
        Examples per vmapped forward (memory ~ A × batch_size activations). Small chunks
        keep the A stacked activations in cache: on 2 CPU cores, 30 α × 1000 examples of
        the default conv1d net took 0.09 s in chunks of 100 and 0.25 s in one chunk.
    bn_batch_size : int, optional
        Chunk size of the BN recompute pass; default: all of ``bn_recompute_x`` at once.

    Returns
    -------
    dict
        ``error`` (A,) and ``loss`` (A,) float64 numpy arrays; ``bn_mode`` is
        "none", "recomputed" or "interpolated" (record it with the results).
    """
    device = w1_flat.device
    point_buffers = None
    if buffers is not None and bn_recompute_x is None and stacked.buffer_slots:
        point_buffers = interpolate_flat(buffers[0].to(device), buffers[1].to(device), alphas)
    return evaluate_points(stacked, interpolate_flat(w1_flat, w2_flat, alphas), x, y,
                           buffers=point_buffers, bn_recompute_x=bn_recompute_x,
                           batch_size=batch_size, bn_batch_size=bn_batch_size)


@torch.no_grad()
def evaluate_points(stacked: StackedModel, points: torch.Tensor, x: torch.Tensor,
                    y: torch.Tensor, *, buffers: torch.Tensor | None = None,
                    bn_recompute_x: torch.Tensor | None = None, batch_size: int = 100,
                    bn_batch_size: int | None = None, return_logits: bool = False) -> dict:
    """Error and mean cross-entropy of N arbitrary weight vectors, evaluated as one stack.

    The shared evaluation machinery of the analysis: the α path, planes through three
    points, points along curves and aligned or repaired paths all reduce to "evaluate
    these N flat weight vectors". The N points are the replicas of one vmapped forward per
    chunk of examples, in blocks of :data:`POINT_EXAMPLES` // ``batch_size`` points on the
    CPU (64 times more on a GPU), so memory is ~ one block × ``batch_size`` activations
    however large N is; a caller may pass every point of many paths at once. On a CPU with
    T > 1 torch threads, T workers take a contiguous share of the blocks each, one thread
    apiece (:func:`_map_blocks`; same bits as one thread).

    Parameters
    ----------
    stacked : StackedModel
        Layout and template of the architecture.
    points : torch.Tensor
        (N, P) flat weights (``param`` layout); their device is used.
    x, y : torch.Tensor
        Evaluation examples and integer labels.
    buffers : torch.Tensor, optional
        (N, Q) flat buffers used as they are (BatchNorm nets without ``bn_recompute_x``).
    bn_recompute_x : torch.Tensor, optional
        Training examples on which BatchNorm statistics are recomputed for every point
        (module docstring). Required for BatchNorm nets unless ``buffers`` is given.
    batch_size, bn_batch_size : int
        As in :func:`evaluate_interpolation`.
    return_logits : bool
        Also return the (N, n_examples, classes) float32 logits on the CPU.

    Returns
    -------
    dict
        ``error`` (N,) and ``loss`` (N,) float64 numpy arrays, ``bn_mode``, and ``logits``
        when asked for.
    """
    mode = _bn_mode(stacked, None if buffers is None else (buffers, buffers), bn_recompute_x)
    n_points = points.shape[0]
    # Blocks of points × examples that keep the stacked activations in cache: on 2 CPU cores
    # the default conv1d net evaluated 300 points in 4-5 s at 30-100 points × 30-100
    # examples per forward, and in 10-12 s at 300 × 100 (shared machine, same run).
    block = max(1, POINT_EXAMPLES // batch_size) * (64 if points.device.type == "cuda" else 1)
    compiled = _compiled_forward(stacked, points, x, mode, block, batch_size)
    if compiled is not None:  # one thread of blocks: the compiled kernels use every core
        with torch.no_grad():
            parts = [_evaluate_block(stacked, points[i:i + block], x, y, mode, None, None,
                                     batch_size, None, return_logits, forward=compiled,
                                     pad_to=block)
                     for i in range(0, n_points, block)]
        return _join(parts, mode, return_logits, len(y))

    def run(model, i):
        return _evaluate_block(model, points[i:i + block], x, y, mode,
                               None if buffers is None else buffers[i:i + block], bn_recompute_x,
                               batch_size, bn_batch_size, return_logits)

    parts = _map_blocks(run, stacked, range(0, n_points, block), points.device)
    return _join(parts, mode, return_logits, len(y))


def _join(parts: list, mode: str, return_logits: bool, n_examples: int) -> dict:
    """:func:`evaluate_points`' result from its blocks' results."""
    if not parts:  # no points (e.g. every pair of a cell incomplete): empty results
        out = {"error": np.zeros(0), "loss": np.zeros(0), "bn_mode": mode}
        if return_logits:
            out["logits"] = torch.zeros(0, n_examples, 0)
        return out
    out = {"error": np.concatenate([p["error"] for p in parts]),
           "loss": np.concatenate([p["loss"] for p in parts]), "bn_mode": mode}
    if return_logits:
        out["logits"] = torch.cat([p["logits"] for p in parts])
    return out


#: Points × examples per stacked forward in :func:`evaluate_points` (see there).
POINT_EXAMPLES = 3000


def _map_blocks(run, stacked: StackedModel, starts, device) -> list:
    """``[run(stacked, i) for i in starts]``. On the CPU with T > 1 torch threads the blocks
    are split into T contiguous shares, each run on a thread of its own with one torch
    thread and its own copy of ``stacked`` (``functional_call`` swaps a module's tensors, so
    a module is never shared between threads). The small per-block operations (loss,
    argmax, the last layer) fall below torch's per-op parallel grain and would leave a core
    idle otherwise. A block's numbers do not depend on the thread that runs it or on the
    thread count (checked bit for bit in tests/analysis/test_interpolate.py).
    """
    starts = list(starts)
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or len(starts) < 2:
        return [run(stacked, i) for i in starts]
    from concurrent.futures import ThreadPoolExecutor

    n = min(threads, len(starts))
    shares = [starts[j * len(starts) // n:(j + 1) * len(starts) // n] for j in range(n)]
    models = [stacked] + [StackedModel(stacked.template) for _ in range(n - 1)]

    def share(j):
        torch.set_num_threads(1)  # this worker's part of the cores
        with torch.no_grad():  # grad mode is per thread
            return [run(models[j], i) for i in shares[j]]

    try:
        with ThreadPoolExecutor(n) as pool:
            return [part for done in pool.map(share, range(n)) for part in done]
    finally:
        torch.set_num_threads(threads)  # a worker's setting may be process-wide (MKL)


def _evaluate_block(stacked, points, x, y, mode, buffers, bn_recompute_x, batch_size,
                    bn_batch_size, return_logits, *, forward=None, pad_to: int = 0) -> dict:
    """One block of :func:`evaluate_points`. ``forward(params, xb)``: a compiled forward for
    chunks of exactly ``batch_size`` examples and ``pad_to`` points (the block is padded
    with copies of its last point, whose results are dropped; other chunks run eager)."""
    device = points.device
    keep = points.shape[0]
    points = _pad_points(points, pad_to)
    params = stacked.unflatten(points)
    n_points = points.shape[0]
    if mode == "none":
        bufs = {}
    elif mode == "interpolated":
        bufs = stacked.unflatten_buffers(buffers.to(device))
    else:
        bufs = _recompute_bn_stacked(stacked, params, bn_recompute_x.to(device),
                                     bn_batch_size or len(bn_recompute_x))
    loss = torch.zeros(n_points, dtype=torch.float64, device=device)
    wrong = torch.zeros(n_points, dtype=torch.float64, device=device)
    chunks = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].to(device)
        yb = y[start:start + batch_size].to(device)
        if forward is not None and len(xb) == batch_size:
            logits = forward(params, xb)
        else:
            logits = stacked.forward(params, bufs, xb, train=False, shared_input=True)
        dl, dw = _loss_and_errors(logits, yb)
        loss += dl
        wrong += dw
        if return_logits:
            chunks.append(logits.float().cpu())
    n = len(x)
    out = {"error": (wrong / n).cpu().numpy()[:keep], "loss": (loss / n).cpu().numpy()[:keep]}
    if return_logits:
        out["logits"] = torch.cat(chunks, 1)[:keep]
    return out


# -- the compiled evaluation forward ------------------------------------------------------------

#: "auto", "on" or "off": whether :func:`evaluate_points` may run a compiled forward
#: (``analyze --compile``; set for a block of code with :func:`compile_policy`).
_COMPILE = contextvars.ContextVar("stabilitylab_eval_compile", default="auto")
COMPILE_POLICIES = ("auto", "on", "off")
#: Network-examples of one :func:`evaluate_points` call from which "auto" compiles: the
#: compilation (about 2 s from torch's on-disk cache, importing inductor included; about
#: 9 s on a fresh machine, where the C++ compiler runs (:func:`_compile_skipping_isa_probe`;
#: 2-core AMD EPYC)) then pays for itself. Once
#: a model has its compiled forward, later calls use it at any size.
AUTO_COMPILE_EXAMPLES = 2_000_000


def check_compile_policy(policy: str) -> None:
    """A one-line :class:`~stabilitylab.core.errors.ConfigError` unless ``policy`` is one
    of :data:`COMPILE_POLICIES`."""
    if policy not in COMPILE_POLICIES:
        from stabilitylab.core.errors import ConfigError

        raise ConfigError(f"--compile: choose from {', '.join(COMPILE_POLICIES)}, got {policy!r}")


def _pad_points(points: torch.Tensor, n: int) -> torch.Tensor:
    """``points`` with copies of its last row appended up to ``n`` rows (as it is if it has
    as many)."""
    if len(points) >= n:
        return points
    return torch.cat([points, points[-1:].expand(n - len(points), -1)])


@contextlib.contextmanager
def compile_policy(policy: str):
    """Within the block, :func:`evaluate_points` compiles its forward by ``policy``:
    "auto" (the default: on the CPU, for a call of at least :data:`AUTO_COMPILE_EXAMPLES`
    network-examples), "on" (on the CPU, any size) or "off"."""
    check_compile_policy(policy)
    with _set_within(_COMPILE, policy):
        yield


@contextlib.contextmanager
def _set_within(var: contextvars.ContextVar, value):
    """``var`` set to ``value`` inside the block, restored after."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def _compiled_forward(stacked: StackedModel, points: torch.Tensor, x: torch.Tensor, mode: str,
                      block: int, batch_size: int):
    """The inductor-compiled stacked forward (:func:`_inductor_forward`) for blocks of
    ``block`` points and chunks of ``batch_size`` examples, or None where the eager one runs.

    On the CPU the compiled forward fuses what surrounds the matrix products (im2col
    copies, padding, bias, ReLU), which is most of an eager forward of a small net: on the
    default study's conv net it evaluated 2.3x as many network-examples per second (2-core
    Intel Xeon, AVX-512). Networks with BatchNorm statistics keep the eager path. It is
    used only if it reproduces the eager logits bit for bit on a first block; if it cannot
    be built (no C++ compiler, say) or differs, this model stays eager (logged once)."""
    policy = _COMPILE.get()
    if (policy == "off" or mode != "none" or points.device.type != "cpu"
            or len(x) < batch_size or points.shape[0] == 0):
        return None
    cache = stacked.__dict__.setdefault("_compiled_eval", {})
    key = (block, batch_size, points.dtype, x.dtype, tuple(x.shape[1:]))
    if key not in cache:
        if policy == "auto" and points.shape[0] * len(x) < AUTO_COMPILE_EXAMPLES:
            return None
        cache[key] = _build_compiled(stacked, points, x, block, batch_size)
    return cache[key] or None


#: The phase of ``analyze --profile`` that building the compiled forward counts in (its
#: imports, tracing, compilation and check), not in the group that first evaluates.
COMPILE_PHASE = "compiling the forward"


def compile_seconds(stacked: StackedModel) -> float:
    """Seconds spent building ``stacked``'s compiled forwards so far (:data:`COMPILE_PHASE`)."""
    return stacked.__dict__.get("_compile_seconds", 0.0)


#: A callable told ``True`` when building a compiled forward starts and ``False`` when it
#: ends (``analyze`` shows it in its progress line); set for a block with :func:`on_compile`.
_ON_COMPILE = contextvars.ContextVar("stabilitylab_on_compile", default=None)


def on_compile(callback):
    """Within the ``with`` block, ``callback(True)`` runs before a compiled evaluation forward
    is built (seconds from torch's cache, 9-18 s on a fresh machine) and ``callback(False)``
    after."""
    return _set_within(_ON_COMPILE, callback)


def _build_compiled(stacked: StackedModel, points, x, block: int, batch_size: int):
    callback = _ON_COMPILE.get()
    if callback is not None:
        callback(True)
    started = time.perf_counter()
    from stabilitylab.core.memory import long_lived_imports

    try:
        with long_lived_imports():  # inductor's modules and the compiled code: kept to the end
            return _build_checked(stacked, points, x, block, batch_size)
    finally:
        stacked.__dict__["_compile_seconds"] = (compile_seconds(stacked)
                                                + time.perf_counter() - started)
        if callback is not None:
            callback(False)


def _build_checked(stacked: StackedModel, points, x, block: int, batch_size: int):
    def forward(params, xb):
        return stacked.forward(params, {}, xb, train=False, shared_input=True)

    probe = _pad_points(points[:block], block)
    params, xb = stacked.unflatten(probe), x[:batch_size]
    # Traced with the conv products channels first (faster GEMMs, same bits where the BLAS
    # sums alike); where that fails or differs from the eager forward, traced as the eager
    # one runs (for a model without such convs the two traces are the same graph).
    for channels_first in (True, False) if _has_matmul_conv(stacked) else (False,):
        try:
            fn = _inductor_forward(stacked, params, xb, forward, channels_first=channels_first)
            with torch.no_grad():
                got = fn(params, xb)
                want = forward(params, xb)
        except Exception as err:  # noqa: BLE001 - any failure to compile means: stay eager
            if channels_first:
                continue
            log.warning("compiled evaluation unavailable, evaluating eagerly: %s",
                        str(err).strip().splitlines()[0] if str(err).strip()
                        else type(err).__name__)
            return False
        if torch.equal(got, want):
            return fn
    log.info("compiled evaluation differs from the eager forward: evaluating eagerly")
    return False


def _has_matmul_conv(stacked: StackedModel) -> bool:
    """Whether the model holds a layer that :func:`channels_first_products` changes."""
    from stabilitylab.models.conv1d import MatmulConv1d

    return any(isinstance(m, MatmulConv1d) for m in stacked.template.modules())


def _inductor_forward(stacked: StackedModel, params: dict, xb: torch.Tensor, eager, *,
                      channels_first: bool = False):
    """``eager(params, xb)`` compiled by inductor for tensors of exactly these shapes and
    strides (others run ``eager``); ``channels_first``: traced within
    :func:`~stabilitylab.models.conv1d.channels_first_products`.

    The stacked forward is traced to an aten graph by ``make_fx`` (0.1 s) and that graph
    handed to ``torch._inductor.compile``, rather than ``torch.compile``: Dynamo's tracing of
    the vmapped ``functional_call`` took 1.3 s of the 2.6 s that ``torch.compile`` needed
    from a warm cache, against 0.95 s in all here (default conv1d net, 2-core Xeon), and
    each call skips Dynamo's guards. The example inputs are fake tensors of a mode with a
    shape environment, which inductor's on-disk graph cache needs to key the graph."""
    import torch._inductor
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    names = list(params)
    inputs = [params[n] for n in names] + [xb]
    layout = [(t.shape, t.stride(), t.dtype) for t in inputs]

    def flat(*args):
        return (eager(dict(zip(names, args[:-1])), args[-1]),)

    from stabilitylab.models.conv1d import channels_first_products

    with torch.no_grad(), (channels_first_products() if channels_first
                           else contextlib.nullcontext()):
        graph = make_fx(flat)(*inputs)
    mode = FakeTensorMode(shape_env=ShapeEnv(), static_shapes=True)
    compiled = _compile_skipping_isa_probe(graph, [mode.from_tensor(t, static_shapes=True)
                                                   for t in inputs])

    def forward(params, xb):
        args = [params[n] for n in names] + [xb]
        if any((t.shape, t.stride(), t.dtype) != want for t, want in zip(args, layout)):
            return eager(params, xb)  # the compiled code assumes the traced layout
        return compiled(*args)[0]

    return forward


def _compile_skipping_isa_probe(graph, example_inputs):
    """``torch._inductor.compile(graph, example_inputs)`` without inductor's probe of the
    vector instruction sets, which on a fresh machine builds and loads a test library for
    each set the CPU reports (``cpu_vec_isa.valid_vec_isa_list``): 6.6 s of a 15.7 s first
    compilation of the default conv net (2-core AMD EPYC with AVX-512; 9.1 s without the
    probe; from the on-disk cache the probe costs nothing). Inductor then takes the widest
    set the CPU reports, the one the probe picked here. If the compilation fails that way
    (a compiler that cannot build that set, say), the probe runs and inductor compiles again."""
    import torch._inductor
    import torch._inductor.config as inductor_config
    from torch._inductor import cpu_vec_isa

    try:
        with inductor_config.patch({"cpp.vec_isa_ok": True}):
            return torch._inductor.compile(graph, example_inputs)
    except Exception as err:  # noqa: BLE001 - retried with the probe; a second failure raises
        log.info("compiling without the vector-ISA probe failed (%s); probing",
                 type(err).__name__)
        cpu_vec_isa.valid_vec_isa_list.cache_clear()  # the unprobed list is cached per process
        return torch._inductor.compile(graph, example_inputs)


def _recompute_bn_stacked(stacked: StackedModel, params: dict, x: torch.Tensor,
                          chunk: int) -> dict:
    """Fresh running stats for every stacked replica, BN layers alone in train mode."""
    n_rep = next(iter(params.values())).shape[0]
    bufs = {}
    for s in stacked.buffer_slots:
        fill = 1.0 if s.name.endswith("running_var") else 0.0
        ref = params[stacked.param_names[0]]
        bufs[s.name] = torch.full((n_rep, *s.shape), fill, dtype=ref.dtype, device=ref.device)
    template = copy.deepcopy(stacked.template)  # never touch the shared template's modes
    _bn_train_only(template)
    fwd = vmap(lambda p, b, xx: functional_call(template, (p, b), (xx,)),
               in_dims=(0, 0, None), randomness="different")
    for j, start in enumerate(range(0, len(x), chunk), start=1):
        _set_bn_momentum(template, 1.0 / j)  # chunk j: cumulative average of batch stats
        fwd(params, bufs, x[start:start + chunk])
    return bufs


@torch.no_grad()
def evaluate_interpolation_loop(stacked: StackedModel, w1_flat: torch.Tensor,
                                w2_flat: torch.Tensor, alphas, x: torch.Tensor, y: torch.Tensor,
                                *, buffers=None, bn_recompute_x: torch.Tensor | None = None,
                                batch_size: int = 1000, bn_batch_size: int | None = None) -> dict:
    """Reference for :func:`evaluate_interpolation`: one concrete module per α.

    Same arguments and result. BN statistics are recomputed with PyTorch's own
    cumulative average (``reset_running_stats`` + ``momentum=None``), an independent
    implementation of the same quantity. Cost: A module builds plus A forward passes.
    """
    mode = _bn_mode(stacked, buffers, bn_recompute_x)
    device = w1_flat.device
    flat = interpolate_flat(w1_flat, w2_flat, alphas)
    errors, losses = [], []
    for i in range(flat.shape[0]):
        params = stacked.unflatten(flat[i:i + 1])
        bufs = {}
        if mode == "interpolated":
            bufs = stacked.unflatten_buffers(interpolate_flat(
                buffers[0].to(device), buffers[1].to(device), alphas)[i:i + 1])
        module = stacked.module_at(params, bufs, 0, device=device)
        if mode == "recomputed":
            xr = bn_recompute_x.to(device)
            chunk = bn_batch_size or len(xr)
            for m in module.modules():
                if isinstance(m, _BN_TYPES):
                    m.reset_running_stats()
                    m.momentum = None
            _bn_train_only(module)
            for start in range(0, len(xr), chunk):
                module(xr[start:start + chunk])
        module.eval()
        loss = wrong = 0.0
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            dl, dw = _loss_and_errors(module(xb), yb)
            loss += float(dl)
            wrong += float(dw)
        errors.append(wrong / len(x))
        losses.append(loss / len(x))
    return {"error": np.array(errors), "loss": np.array(losses), "bn_mode": mode}
