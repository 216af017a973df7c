"""``compare A B --curve``: mode-connecting curves between two checkpoints.

    stabilitylab compare a.pt b.pt --model conv1d --data mnist1d --curve

A quadratic Bézier curve and a polygonal chain with one bend from B (t = 0) to A (t = 1)
(Garipov et al., NeurIPS 2018, §3, Eqs. 2–6; Draxler et al., ICML 2018), both trained
in one replica-batched run on the dataset's train split with the config's optimizer
(:func:`stabilitylab.analysis.curves.train_curves`), evaluated on the test set at the α
grid with BatchNorm statistics recomputed at every point. The control point lives in
the subnetwork the two files share: a prunable weight that is exactly 0 in both stays 0.
"""

from __future__ import annotations

import torch

from stabilitylab.analysis.barriers import instability
from stabilitylab.analysis.curves import SHAPES, curve_lengths, evaluate_curves, train_curves

#: Optimizer steps of the curve run (as the ``curve`` measure group).
CURVE_STEPS = 200
_NAMES = {"bezier": "Bezier curve", "polychain": "one-bend chain"}


def shared_zeros(stacked, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """(P,) float mask: 0 where a prunable weight is exactly 0 in both files, else 1."""
    mask = torch.ones_like(wa)
    for s in stacked.param_slots:
        if s.prunable:
            sl = slice(s.offset, s.offset + s.size)
            mask[sl] = ((wa[sl] != 0) | (wb[sl] != 0)).to(wa.dtype)
    return mask


def curve_results(stacked, wa, wb, grid, ds, cfg, linear: dict, *,
                  steps: int = CURVE_STEPS) -> dict:
    """The ``curve_*`` entries of :func:`compare_checkpoints` (JSON-friendly)."""
    out = {"curve_steps": int(steps), "curves": None}
    if torch.equal(wa, wb):
        out["curve_note"] = "the two checkpoints are identical: there is no curve to train"
        return out
    n = len(SHAPES)
    starts, ends = wb.expand(n, -1).clone(), wa.expand(n, -1).clone()
    masks = shared_zeros(stacked, wa, wb).expand(n, -1)
    shapes = list(SHAPES)
    controls = train_curves(stacked, starts, ends, shapes, ds.train_x, ds.train_y, cfg.training,
                            steps=steps, masks=masks, seed=cfg.study.seed)
    bn_x = ds.train_x[:cfg.data.train_eval_size] if stacked.buffer_slots else None
    res = evaluate_curves(stacked, starts, controls, ends, shapes, grid, ds.test_x, ds.test_y,
                          bn_recompute_x=bn_x)
    lengths = curve_lengths(starts.cpu(), controls.cpu(), ends.cpu(), shapes)
    out["curve_bn_mode"] = "recomputed" if bn_x is not None else "none"
    out["curves"] = {}
    for r, shape in enumerate(shapes):
        err, loss = res["error"][r], res["loss"][r]
        barrier, loss_barrier = float(instability(err)), float(instability(loss))
        out["curves"][shape] = {
            "error_barrier": barrier, "loss_barrier": loss_barrier,
            "length": float(lengths[r]),
            "linear_minus_curve": linear["error_barrier"] - barrier,
            "linear_minus_curve_loss": linear["loss_barrier"] - loss_barrier,
            "test_error": [float(v) for v in err], "test_loss": [float(v) for v in loss],
        }
    return out


def curve_lines(result: dict) -> list[str]:
    """Human-readable lines for the curve entries."""
    if result["curves"] is None:
        return [result["curve_note"]]
    straight = result["l2_distance"]
    lines = []
    for shape, c in result["curves"].items():
        lines.append(
            f"{_NAMES[shape]} (Garipov et al. 2018, {result['curve_steps']} steps): error "
            f"barrier {100 * c['error_barrier']:.2f}%, loss barrier {c['loss_barrier']:.4f}; "
            f"length {c['length']:.4f} (straight {straight:.4f}); linear minus curve: "
            f"{100 * c['linear_minus_curve']:.2f} points")
    return lines


__all__ = ["CURVE_STEPS", "curve_lines", "curve_results", "shared_zeros"]
