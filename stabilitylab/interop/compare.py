"""``compare``: stability measures between any two checkpoints of one architecture.

    stabilitylab compare a.pt b.safetensors --model resnet20 --data cifar10

For checkpoints A and B (``state_dict`` files, see :mod:`stabilitylab.interop.checkpoints`)
on the test set of the named dataset:

- the error barrier, *instability* (Frankle, Dziugaite, Roy & Carbin, "Linear Mode
  Connectivity and the Lottery Ticket Hypothesis", ICML 2020):
  max_α E(αW_A + (1−α)W_B) − mean(E(W_A), E(W_B)), and the same form on the loss;
- the barrier above the straight line between the endpoints, on error and on loss
  (Entezari, Sedghi, Saukh & Neyshabur, ICLR 2022, Eq. 1);
- the L2 distance ‖W_A − W_B‖₂ and the angle between them, over every parameter;
- prediction disagreement (fraction of test examples whose argmax differs);
- optionally (``align="weight"`` or ``"activation"``), the error barrier after permuting
  B's units to match A's by weight matching or activation matching (Ainsworth, Hayase &
  Srinivasa, "Git Re-Basin", ICLR 2023, §3.1–3.2; activations on training examples
  drawn by ``study.seed``);
- optionally (``repair=True``), the error barrier after REPAIR (Jordan et al., ICLR 2023,
  §4), and after alignment + REPAIR when ``align`` is given.
- optionally (``curve=True``), the barriers along a trained quadratic Bézier curve and a
  polygonal chain from B to A (Garipov et al., NeurIPS 2018), their lengths and the
  linear barrier minus the curve barrier (:mod:`stabilitylab.interop.compare_curve`).

BatchNorm networks: with ``bn_recompute`` the running statistics are recomputed at
every α on the train subset (the analysis default); without it the files' own
statistics are interpolated like the weights. The result says which.
"""

from __future__ import annotations

import numpy as np
import torch

from stabilitylab.analysis.barriers import above_line_barrier, alpha_grid, instability
from stabilitylab.analysis.distances import angle, l2_distance
from stabilitylab.analysis.interpolate import evaluate_interpolation
from stabilitylab.analysis.measures import disagreement
from stabilitylab.core.errors import ConfigError
from stabilitylab.interop.checkpoints import fit_state_dict, load_state_dict


def _study(model: str, data: str, overrides):
    from stabilitylab.study.resolve import load_study

    return load_study(None, [*overrides, f"model.name={_toml(model)}", f"data.name={_toml(data)}"])


def _toml(text: str) -> str:
    import json

    return json.dumps(str(text))  # a TOML basic string


@torch.no_grad()
def _logits(stacked, flat, buffers, x, batch=1000):
    params = stacked.unflatten(flat[None])
    bufs = stacked.unflatten_buffers(buffers[None]) if buffers.numel() else {}
    return torch.cat([stacked.forward(params, bufs, x[i:i + batch], train=False, shared_input=True)
                      for i in range(0, len(x), batch)], 1)[0].float()


def compare_checkpoints(a, b, *, model: str, data: str, alphas: int = 30,
                        bn_recompute: bool = False, align: str | bool | None = None,
                        repair: bool = False, curve: bool = False, overrides=(),
                        device: str | None = None) -> dict:
    """Every measure between checkpoints ``a`` and ``b`` (paths); a JSON-friendly dict.

    ``model`` / ``data`` are ``model.name`` / ``data.name`` values (shipped names,
    ``package.module:function`` or entry points); ``overrides`` are further
    ``section.key=value`` settings (``model.options.width=2``, ``data.root=...``).
    """
    from stabilitylab.core.device import resolve_device
    from stabilitylab.data import load_dataset
    from stabilitylab.models import build_model
    from stabilitylab.train.functional import StackedModel

    align = "weight" if align is True else (align or None)
    if align not in (None, "weight", "activation"):
        raise ConfigError(f"--align: choose weight or activation, got {align!r}")
    if alphas < 2:
        raise ConfigError(f"--alphas: need at least 2 points (the endpoints), got {alphas}")
    state_a, state_b = load_state_dict(a), load_state_dict(b)  # files first: cheap to refuse
    study = _study(model, data, overrides)
    cfg, info = study.config, study.info
    net = build_model(cfg.model, info.input_shape, info.num_classes,
                      generator=torch.Generator().manual_seed(0))
    stacked = StackedModel(net)
    wa, ba = fit_state_dict(state_a, stacked, str(a))
    wb, bb = fit_state_dict(state_b, stacked, str(b))
    dev = resolve_device(device or "cpu")
    ds = load_dataset(cfg.data, dev)
    wa, ba, wb, bb = (t.to(dev) for t in (wa, ba, wb, bb))
    grid = alpha_grid(alphas)
    n_train = cfg.data.train_eval_size
    has_bn = bool(stacked.buffer_slots)
    bn_x = ds.train_x[:n_train] if has_bn and bn_recompute else None
    buffers = (ba, bb) if has_bn and not bn_recompute else None
    # E_alpha = E(alpha * W_A + (1 - alpha) * W_B): alpha = 0 is B, alpha = 1 is A.
    res = evaluate_interpolation(stacked, wa, wb, grid, ds.test_x, ds.test_y, buffers=buffers,
                                 bn_recompute_x=bn_x)
    err, loss = res["error"], res["loss"]
    la = _logits(stacked, wa, ba, ds.test_x)
    lb = _logits(stacked, wb, bb, ds.test_x)
    pa, pb = wa.cpu().numpy().astype(np.float64), wb.cpu().numpy().astype(np.float64)
    out = {
        "a": str(a), "b": str(b), "model": cfg.model.name, "data": cfg.data.name,
        "alphas": int(alphas), "bn_mode": res["bn_mode"],
        "test_error_a": float(err[-1]), "test_error_b": float(err[0]),
        "test_loss_a": float(loss[-1]), "test_loss_b": float(loss[0]),
        "error_barrier": float(instability(err)),
        "loss_barrier": float(instability(loss)),
        "above_line_error_barrier": float(above_line_barrier(err, grid)),
        "above_line_loss_barrier": float(above_line_barrier(loss, grid)),
        "l2_distance": float(l2_distance(pa, pb)),
        "angle": float(angle(pa, pb)),
        "disagreement": float(disagreement(la.cpu().numpy(), lb.cpu().numpy())),
        "interp_test_error": [float(v) for v in err],
        "interp_test_loss": [float(v) for v in loss],
    }
    other = None
    if align:
        other = _align(stacked, wa, wb, ds, n_train, align, cfg.study.seed)
        bn_x = ds.train_x[:n_train] if has_bn else None  # permuted stats: recompute
        res = evaluate_interpolation(stacked, wa, other, grid, ds.test_x, ds.test_y,
                                     bn_recompute_x=bn_x)
        out.update({"align": align, "aligned_error_barrier": float(instability(res["error"])),
                    "aligned_loss_barrier": float(instability(res["loss"]))})
    if repair:
        out.update(_repaired(stacked, wa, wb, other, grid, ds, n_train))
    if curve:
        from stabilitylab.interop.compare_curve import curve_results

        out.update(curve_results(stacked, wa, wb, grid, ds, cfg, out))
    return out


def _align(stacked, wa, wb, ds, n_train, how, seed):
    """B's flat weights with its units permuted to match A's (one line if unsupported)."""
    from stabilitylab.analysis.align import apply_permutation, permutation_spec, weight_matching

    spec = permutation_spec(stacked.template)  # AlignmentError: one line
    unflat = (lambda v: {s.name: v[s.offset:s.offset + s.size].reshape(s.shape)
                         for s in stacked.param_slots})
    if how == "weight":
        perm = weight_matching(spec, unflat(wa.cpu()), unflat(wb.cpu()))
    else:
        from stabilitylab.analysis.activation_matching import (
            activation_matching,
            training_examples,
        )

        x = training_examples(ds.train_x, n_train, seed)
        perm = activation_matching(stacked, spec, wa, wb, x)
    params = apply_permutation(spec, perm, unflat(wb))
    return torch.cat([params[s.name].reshape(-1) for s in stacked.param_slots])


def _repaired(stacked, wa, wb, other, grid, ds, n_train) -> dict:
    from stabilitylab.analysis.interpolate import evaluate_points
    from stabilitylab.analysis.repair import RepairedModel

    repaired = RepairedModel(stacked)
    x = ds.train_x[:n_train]
    bn_x = x if stacked.buffer_slots else None
    out = {}
    for key, b in (("repaired", wb), ("aligned_repaired", other)):
        if b is None:
            continue
        points = repaired.repaired_path(wa, b, grid, x)
        res = evaluate_points(repaired.stacked, points, ds.test_x, ds.test_y,
                              bn_recompute_x=bn_x)
        out[f"{key}_error_barrier"] = float(instability(res["error"]))
        out[f"{key}_loss_barrier"] = float(instability(res["loss"]))
        out[f"interp_{key}_test_error"] = [float(v) for v in res["error"]]
    return out


def summary_lines(result: dict) -> list[str]:
    """The human-readable report of :func:`compare_checkpoints`: errors in percent, barriers
    and disagreement (differences and shares of error) in percentage points, losses in nats."""
    pct = 100.0
    lines = [
        (f"A: {result['a']}  (test error {pct * result['test_error_a']:.2f}%, "
         f"loss {result['test_loss_a']:.4f} nats)"),
        (f"B: {result['b']}  (test error {pct * result['test_error_b']:.2f}%, "
         f"loss {result['test_loss_b']:.4f} nats)"),
        (f"error barrier (instability, Frankle et al. 2020): "
         f"{pct * result['error_barrier']:.2f} pp"),
        f"loss barrier: {result['loss_barrier']:.4f} nats",
        (f"above-the-line barrier (Entezari et al. 2022): error "
         f"{pct * result['above_line_error_barrier']:.2f} pp, "
         f"loss {result['above_line_loss_barrier']:.4f} nats"),
        f"L2 distance: {result['l2_distance']:.4f}; angle: {result['angle']:.4f} rad",
        f"prediction disagreement: {pct * result['disagreement']:.2f}% of test examples",
        f"({result['alphas']} interpolation points; BatchNorm statistics: {result['bn_mode']})",
    ]
    if "aligned_error_barrier" in result:
        lines.append(f"error barrier after {result['align']} matching (Git Re-Basin): "
                     f"{pct * result['aligned_error_barrier']:.2f} pp")
    if "repaired_error_barrier" in result:
        lines.append(f"error barrier after REPAIR (Jordan et al. 2023): "
                     f"{pct * result['repaired_error_barrier']:.2f} pp")
    if "aligned_repaired_error_barrier" in result:
        lines.append(f"error barrier after {result['align']} matching + REPAIR: "
                     f"{pct * result['aligned_repaired_error_barrier']:.2f} pp")
    if "curves" in result:
        from stabilitylab.interop.compare_curve import curve_lines

        lines.extend(curve_lines(result))
    return lines
