"""Alignment: weight matching for one ResNet-20 pair, activation matching on 1,000 examples.

    python benchmarks/bench_alignment.py [--widths 1 4] [--examples 1000]

Rows (both sides in this process, same inputs, same result checked):

- weight matching (Ainsworth et al. 2023, Alg. 1) of two independently initialised
  ResNet-20s at ``model.options.width`` 1 and 4 (16 and 64 channels in the first stage),
  ours (:func:`stabilitylab.analysis.align.weight_matching`: A's unit matrices cached,
  only the tensors a permutation touches re-permuted) against a straightforward loop
  that re-permutes the whole of B and rebuilds every layer's unit matrices for each
  assignment;
- activation matching (§3.1) of the same pair at width 1 on 1,000 CIFAR-shaped examples,
  ours (streamed moments, one forward pass of each net in chunks of 250) against keeping
  every site's activations and correlating them with ``np.corrcoef``.

Seconds are the best of 3 after a warm-up (activation matching: one call after a
warm-up). Peak memory: tracemalloc's peak of Python and numpy allocations (weight
matching, numpy only); for activation matching (torch allocations, which tracemalloc does
not see) the growth of the peak RSS of a fresh subprocess running that one call.
"""

from __future__ import annotations

import argparse
import sys
import tracemalloc
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _p in (str(_ROOT), str(_ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np
import torch
from common import machine, timed
from scipy.optimize import linear_sum_assignment

from stabilitylab.analysis.activation_matching import _unit_sites, activation_matching
from stabilitylab.analysis.align import _permute, _units, weight_matching
from stabilitylab.analysis.permutation_spec import permutation_spec
from stabilitylab.analysis.repair import _bn_train_only, _channel_axis
from stabilitylab.models.resnet import CifarResNet
from stabilitylab.train.functional import StackedModel


def plain_weight_matching(spec, a, b, max_iter=100, seed=0):
    """Alg. 1 written directly: for every assignment, permute all of B, then loop layers."""
    a = {n: np.asarray(v, np.float64) for n, v in a.items() if n in spec.axes}
    b = {n: np.asarray(v, np.float64) for n, v in b.items() if n in spec.axes}
    perm = {p: np.arange(n) for p, n in spec.perm_sizes.items()}
    order = list(spec.perm_sizes)
    rng = np.random.default_rng(seed)
    for _ in range(max_iter):
        progress = False
        for i in rng.permutation(len(order)):
            p = order[i]
            n = spec.perm_sizes[p]
            cost = np.zeros((n, n))
            for name in a:
                for axis, q, _ in spec.axes[name]:
                    if q != p:
                        continue
                    wb = _permute(spec, perm, name, b[name], except_axis=axis)
                    cost += _units(a[name], axis, n) @ _units(wb, axis, n).T
            cols = linear_sum_assignment(cost, maximize=True)[1]
            if cost[np.arange(n), cols].sum() > cost[np.arange(n), perm[p]].sum() + 1e-12 * max(
                    1.0, abs(cost[np.arange(n), perm[p]].sum())):
                perm[p], progress = cols, True
        if not progress:
            break
    return perm


def plain_activation_matching(stacked, spec, w_a, w_b, x):
    """Keep every site's activations, then np.corrcoef per permutation."""
    sites = _unit_sites(stacked.template, spec)
    acts = [{}, {}]
    for which, w in enumerate((w_a, w_b)):
        m = stacked.module_at(stacked.unflatten(w[None]), {}, 0)
        _bn_train_only(m)
        mods = dict(m.named_modules())
        hs = [mods[n].register_forward_hook(
            lambda mod, _i, out, n=n, which=which: acts[which].update({n: torch.movedim(
                out, _channel_axis(mod) % out.dim(), -1).reshape(-1, out.shape[1]).numpy()}))
            for n in sites]
        with torch.no_grad():
            m(x)
        for h in hs:
            h.remove()
    perm = {}
    for p, n in spec.perm_sizes.items():
        za = np.concatenate([acts[0][s] for s, q in sites.items() if q == p]).astype(np.float64)
        zb = np.concatenate([acts[1][s] for s, q in sites.items() if q == p]).astype(np.float64)
        corr = np.corrcoef(za.T, zb.T)[:n, n:]
        perm[p] = linear_sum_assignment(np.nan_to_num(corr), maximize=True)[1]
    return perm


def peak(fn) -> float:
    tracemalloc.start()
    fn()
    _, top = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return top / 2**20


def _activation_setup(examples):
    torch.manual_seed(0)
    nets = [CifarResNet(20, 3, 10) for _ in range(2)]
    stacked = StackedModel(nets[0])
    spec = permutation_spec(nets[0])
    w_a, w_b = (torch.cat([p.detach().reshape(-1) for p in n.parameters()]) for n in nets)
    x = torch.randn(examples, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return stacked, spec, w_a, w_b, x


def _rss_growth(which: str, examples: int) -> float:
    """Peak-RSS growth (MiB) of one activation-matching call in a fresh process."""
    import subprocess

    out = subprocess.run([sys.executable, __file__, "--rss", which, "--examples", str(examples)],
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def _rss_child(which: str, examples: int) -> int:
    import resource

    args = _activation_setup(examples)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    (activation_matching if which == "ours" else plain_activation_matching)(*args)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="*", default=[1, 4])
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--rss", choices=["ours", "plain"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss:
        return _rss_child(args.rss, args.examples)
    print(f"machine: {machine()}")
    print("| work | ours (s) | plain (s) | ratio | ours peak MiB | plain peak MiB |")
    print("|---|---|---|---|---|---|")
    for width in args.widths:
        nets = [CifarResNet(20, 3, 10, width=width) for _ in range(2)]
        for seed, net in enumerate(nets):
            torch.manual_seed(seed)
            net.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
        spec = permutation_spec(nets[0])
        a, b = ({n: t.detach().numpy() for n, t in net.state_dict().items()
                 if t.is_floating_point()} for net in nets)
        ours = weight_matching(spec, a, b)
        plain = plain_weight_matching(spec, a, b)
        assert all(np.array_equal(ours[p], plain[p]) for p in ours)
        run_ours = (lambda spec=spec, a=a, b=b: weight_matching(spec, a, b))
        run_plain = (lambda spec=spec, a=a, b=b: plain_weight_matching(spec, a, b))
        t_ours, t_plain = timed(run_ours), timed(run_plain)
        m_ours, m_plain = peak(run_ours), peak(run_plain)
        print(f"| weight matching, ResNet-20 width {width} ({16 * width} channels) | "
              f"{t_ours:.3f} | {t_plain:.3f} | {t_plain / t_ours:.2f}x | {m_ours:.1f} | "
              f"{m_plain:.1f} |")
    stacked, spec, w_a, w_b, x = _activation_setup(args.examples)
    ours = activation_matching(stacked, spec, w_a, w_b, x)
    plain = plain_activation_matching(stacked, spec, w_a, w_b, x)
    agree = np.mean([np.mean(ours[p] == plain[p]) for p in ours])
    t_ours = timed(lambda: activation_matching(stacked, spec, w_a, w_b, x), repeat=1)
    t_plain = timed(lambda: plain_activation_matching(stacked, spec, w_a, w_b, x), repeat=1)
    m_ours, m_plain = (_rss_growth(which, args.examples) for which in ("ours", "plain"))
    print(f"| activation matching, ResNet-20 width 1, {args.examples} examples (units agreeing "
          f"with the plain result: {100 * agree:.0f}%) | {t_ours:.2f} | {t_plain:.2f} | "
          f"{t_plain / t_ours:.2f}x | {m_ours:.1f} | {m_plain:.1f} |")
    print("\nRatios are plain / ours, measured in one process; timings on a shared machine.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
