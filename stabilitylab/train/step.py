"""One training step of a replica group as one function, optionally compiled.

:class:`FusedStep` is forward, loss, backward and the masked optimizer update of all R
replicas as a single function of the stacked tensors::

    gather the batch -> [augment] -> vmap(grad_and_value(loss)) -> apply_update

It mutates the parameters, BatchNorm buffers and optimizer state in place and returns
the per-replica loss and accuracy as device tensors, so nothing in it waits on the host.
With ``compiled=True`` it goes through ``torch.compile`` (inductor; on CUDA with CUDA
graphs, ``mode="reduce-overhead"``), with static shapes: the first call for a replica
count R compiles, later calls with the same R reuse the graph (R is part of the guard,
so a group of another size compiles once more).

The eager engine path (``autograd.grad`` over the vmapped forward, then
:class:`~stabilitylab.train.optim.StackedOptimizer`) runs the same
:func:`~stabilitylab.train.optim.apply_update` uncompiled; the two agree to float rounding
(tests/train/test_compiled.py).
"""

from __future__ import annotations

import logging
import time
import weakref

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from stabilitylab.train.layout import channels_last_stacked
from stabilitylab.train.optim import apply_update

log = logging.getLogger(__name__)


# ``auto`` compiles a group when its work is large enough to repay the compilation: a
# new graph per replica count R costs 9-22 s on an idle 2-core AMD EPYC the first time
# (3-5 s once inductor's on-disk cache holds it), and the compiled step was 1.1-1.3x the
# eager one for the default conv1d net (R=18, 54) and 1.4-2.2x for the MLP 40-300-100-10
# (R=16, 64). At ~1,300 replica-steps/s a 10% gain repays 25 s of compilation after about
# 300k replica-steps, hence the CPU threshold; the default study's groups (27k-81k) stay
# eager, paper-scale ones (R x 62,500 steps) compile. On CUDA ``auto`` keeps the eager step
# (``on`` forces it): on one H200 (torch 2.11) compiling ResNet-20's step at R=8 took about
# 65 s in fp32 and 47 s in bf16, and inductor then left out the CUDA graphs that
# ``reduce-overhead`` is for ("skipping cudagraphs due to mutated inputs"), since the step
# updates the parameters and optimizer state in place.
AUTO_MIN_REPLICA_STEPS = {"cpu": 500_000}
AUTO_MIN_REPLICAS = 2


def use_compile(setting: str, device: torch.device, replicas: int, iterations: int) -> bool:
    """Whether a group of ``replicas`` runs for ``iterations`` steps takes the compiled step.

    ``on`` / ``off`` force it; ``auto`` compiles on CPU when the group has at least
    ``AUTO_MIN_REPLICAS`` replicas and ``AUTO_MIN_REPLICA_STEPS["cpu"]`` replica-steps
    (short runs, tests and the default study stay eager), and not on CUDA (measured there:
    a minute of compilation per graph, and no CUDA graphs for an in-place update).
    """
    if setting == "on":
        return True
    if setting == "off":
        return False
    threshold = AUTO_MIN_REPLICA_STEPS.get(torch.device(device).type)
    return (threshold is not None and replicas >= AUTO_MIN_REPLICAS
            and replicas * iterations >= threshold)


def compile_mode(device: torch.device) -> str | None:
    """``torch.compile`` mode: CUDA graphs on CUDA (per-step launch overhead is what a
    small network pays there), inductor's default on CPU."""
    return "reduce-overhead" if torch.device(device).type == "cuda" else None


class FusedStep:
    """The training step of one architecture and one training config.

    Call it as ``step(params, buffers, state, masks, train_x, train_y, idx, row,
    aug_steps, keys)``: ``idx`` (R, B) example indices, ``row`` the (R, 6) per-replica
    scalars of :func:`~stabilitylab.train.optim.step_scalars`; ``aug_steps`` (R,) int64
    steps and ``keys`` the (R, 2) keys of
    :func:`~stabilitylab.data.augment.replica_keys` (both read only with augmentation). Returns ``(loss, acc)``, two (R,) float tensors.

    Use :func:`fused_step` to get one: it caches per (model, config, options), so the
    groups of a study share compiled graphs.
    """

    def __init__(self, stacked, training, *, augment, channels_last: bool,
                 device: torch.device, compiled: bool):
        self.template = stacked.template
        self.compiled = compiled
        self.device = torch.device(device)
        self.compile_seconds = 0.0
        self._seen: set[tuple] = set()
        # Buffers the engine does not stack (BatchNorm's integer num_batches_tracked): a
        # grad transform refuses in-place updates of captured tensors, so each call gets
        # stacked scratch copies. Their values are never read (momentum is fixed).
        self._untracked = [(n, tuple(b.shape), b.dtype) for n, b in self.template.named_buffers()
                           if n not in set(stacked.buffer_names)]
        self._scratch: dict[int, dict] = {}
        template = self.template
        bf16 = training.precision == "bf16" and self.device.type == "cuda"

        def loss_fn(p, b, x, y):
            if bf16:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    logits = functional_call(template, (p, b), (x,))
            else:
                logits = functional_call(template, (p, b), (x,))
            logits = logits.float()
            return F.cross_entropy(logits, y), logits

        grad_fn = vmap(grad_and_value(loss_fn, has_aux=True), randomness="different")

        def step(params, buffers, state, masks, train_x, train_y, idx, row, aug_steps, keys):
            x = train_x[idx]
            y = train_y[idx]
            if augment is not None:
                x = augment(x, keys, aug_steps)
            if channels_last:
                x = channels_last_stacked(x)
            grads, (loss, logits) = grad_fn(params, buffers, x, y)
            acc = (logits.argmax(-1) == y).float().mean(1)
            apply_update(training, params, grads, state, masks, row)
            return loss, acc

        if compiled:
            # Every group of another size, and every study of another config in one
            # process (tests, findings), is a recompile of this one code object.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self._fn = torch.compile(step, fullgraph=True, dynamic=False,
                                 mode=compile_mode(self.device)) if compiled else step

    def __call__(self, params, buffers, state, masks, train_x, train_y, idx, row, aug_steps,
                 keys):
        self.template.train(True)
        if self._untracked:
            r = idx.shape[0]
            if r not in self._scratch:
                self._scratch[r] = {n: torch.zeros((r, *shape), dtype=dtype, device=self.device)
                                    for n, shape, dtype in self._untracked}
            buffers = {**buffers, **self._scratch[r]}
        shape = (idx.shape, tuple(masks), tuple(state))
        if not self.compiled or shape in self._seen:
            return self._fn(params, buffers, state, masks, train_x, train_y, idx, row, aug_steps,
                            keys)
        start = time.perf_counter()
        out = self._fn(params, buffers, state, masks, train_x, train_y, idx, row, aug_steps, keys)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        self.compile_seconds += seconds
        self._seen.add(shape)
        COMPILED.append((idx.shape[0], seconds))
        log.info("compiled the training step for R=%d in %.1f s", idx.shape[0], seconds)
        return out


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
COMPILED: list[tuple[int, float]] = []  # (replicas, seconds) of every compilation here


def compile_summary(since: int = 0) -> str | None:
    """One line on the compilations of this process since ``COMPILED[since]``, or None."""
    done = COMPILED[since:]
    if not done:
        return None
    sizes = ", ".join(f"R={r}" for r, _ in done)
    return f"compiled the training step {len(done)}x ({sizes}) in {sum(s for _, s in done):.0f} s"


def fused_step(stacked, training, *, augment=None, channels_last=False,
               device="cpu", compiled=True) -> FusedStep:
    """The :class:`FusedStep` for ``stacked`` and ``training``, built once and reused.

    ``augment`` is ``f(x (R, B, ...), keys (R, 2), steps (R,)) -> x`` (e.g.
    :func:`~stabilitylab.data.augment.random_flip_crop_replicas`) or None.
    """
    per_model = _CACHE.setdefault(stacked, {})
    key = (training, augment, channels_last, str(device), compiled)
    step = per_model.get(key)
    if step is None:
        step = per_model[key] = FusedStep(stacked, training, augment=augment,
                                          channels_last=channels_last, device=device,
                                          compiled=compiled)
    return step
