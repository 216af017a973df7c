"""``stabilitylab import checkpoints SPEC.toml --out STORE``: a store from checkpoint files.

    stabilitylab import checkpoints runs.toml --out runs/mine.zarr --model mypkg:net --data mypkg:data

The spec (:mod:`stabilitylab.interop.checkpoint_spec`) maps folders or globs of
per-step state_dicts to copies (kind, level, rewind k, replica). The store holds
their true trajectories at the checkpointed steps (``study.record = "list:..."``),
so the trajectory measures, divergence and the geometry groups work on it. It is
written through :class:`stabilitylab.Recorder` (the writer, lock and layout of
``record``). Every file is loaded and checked first; a bad one (another
architecture, a pickle ``weights_only`` refuses, a symlink out of its folder, a step
going backwards, a missing replica or step) is one line and nothing is written.
"""

from __future__ import annotations

import logging

import torch

from stabilitylab.core.errors import CheckpointError
from stabilitylab.interop.checkpoint_spec import read_spec

log = logging.getLogger(__name__)


def _plan(spec) -> dict:
    """Check the copies against each other; the study settings of the store."""
    groups: dict[tuple, dict[int, object]] = {}
    for run in spec.runs:
        if run.k is None:
            run.k = run.steps[0]
        key = (run.kind, run.level, run.k)
        if run.replica in groups.setdefault(key, {}):
            raise CheckpointError(f"{spec.where}: {run.kind} level {run.level} k {run.k} "
                                  f"replica {run.replica} is given twice")
        groups[key][run.replica] = run
    n_rep = max(len(g) for g in groups.values())
    for (kind, level, k), g in sorted(groups.items()):
        missing = [r for r in range(n_rep) if r not in g]
        if missing:
            raise CheckpointError(f"{spec.where}: {kind} level {level} k {k}: replica "
                                  f"{missing[0]} is missing (replicas 0..{n_rep - 1} needed)")
    steps = sorted({s for run in spec.runs for s in run.steps})
    rewinds = sorted({k for _, _, k in groups})
    levels = sorted({lv for kind, lv, _ in groups if kind == "imp"})
    if not levels or levels != list(range(levels[-1] + 1)):
        raise CheckpointError(f"{spec.where}: imp levels {levels}; need 0..L, each present")
    for (kind, level, k) in groups:
        if kind == "imp" and any((kind, lv, k) not in groups for lv in levels):
            raise CheckpointError(f"{spec.where}: rewind k {k} lacks some imp levels")
    for run in spec.runs:
        dense = run.kind == "imp" and run.level == 0 and run.replica == 0
        want = [s for s in steps if s >= run.k]
        missing = sorted(set(want) - set(run.steps))
        if missing:
            raise CheckpointError(f"{spec.where}: {run.kind} level {run.level} replica "
                                  f"{run.replica} has no checkpoint for step {missing[0]} "
                                  "(every copy needs every recorded step from its k on)")
        early = [s for s in run.steps if s < run.k]
        if early and not dense:
            raise CheckpointError(f"{spec.where}: {run.kind} level {run.level} replica "
                                  f"{run.replica} has steps {early[:3]} before its k {run.k}")
    controls = sorted({kind for kind, _, _ in groups if kind != "imp"})
    settings = {
        "model.name": spec.model, "data.name": spec.data, "training.steps": f"{steps[-1]}it",
        "training.eval_every": f"{steps[-1]}it", "training.log_every": f"{steps[-1]}it",
        "study.record": "list:" + ",".join(str(s) for s in steps),
        "study.rewinds": [f"{k}it" for k in rewinds], "study.replicas": n_rep,
        "pruning.levels": levels[-1], "study.controls": controls,
        "study.control_levels": sorted({lv for kind, lv, _ in groups if kind != "imp"}),
    }
    return settings


def _load(path, prefix, stacked, names):
    from stabilitylab.interop.checkpoints import fit_state_dict, load_state_dict, strip_prefix

    state = strip_prefix(load_state_dict(path), prefix, names, str(path))
    return state, fit_state_dict(state, stacked, str(path))


def _mask_of(run, spec, state, stacked, names) -> dict | None:
    source = run.mask or (spec.masks if spec.masks not in (None, "zeros") else None)
    if source is not None:
        from stabilitylab.interop.checkpoints import load_state_dict, strip_prefix

        m = strip_prefix(load_state_dict(source), spec.prefix, [s.name for s in stacked.param_slots
                                                                 if s.prunable], str(source))
        return {k: v != 0 for k, v in m.items()}
    if spec.masks == "zeros":
        return {s.name: state[s.name] != 0 for s in stacked.param_slots if s.prunable}
    if run.level > 0:
        raise CheckpointError(f"{spec.where}: {run.kind} level {run.level} needs a mask: set "
                              "masks = \"zeros\" (from its first checkpoint) or mask = FILE")
    return None


def _final_accuracy(spec, cfg, stacked, names) -> dict:
    """{id(run): test accuracy and loss of its last checkpoint} on the test set (the one
    batched evaluator, :func:`stabilitylab.analysis.interpolate.evaluate_points`); empty
    when the data set does not load (the metrics then stay NaN)."""
    from stabilitylab.analysis.interpolate import evaluate_points
    from stabilitylab.core.errors import StabilityLabError
    from stabilitylab.data import load_dataset

    try:
        data = load_dataset(cfg.data, "cpu")
    except StabilityLabError as exc:
        log.warning("final accuracies not evaluated: %s", exc)
        return {}
    flats, bufs = [], []
    for run in spec.runs:
        _, (flat, buffers) = _load(run.files[-1], spec.prefix, stacked, names)
        flats.append(flat)
        bufs.append(buffers)
    has_buffers = bool(stacked.buffer_slots)
    res = evaluate_points(stacked, torch.stack(flats), data.test_x, data.test_y,
                          buffers=torch.stack(bufs) if has_buffers else None)
    return {id(run): {"test_acc": 1.0 - float(res["error"][i]), "test_loss": float(res["loss"][i])}
            for i, run in enumerate(spec.runs)}


def import_checkpoints(spec_path, out, *, model: str | None = None, data: str | None = None,
                       overrides=(), progress=None, storage_options=None) -> dict:
    """Build the store ``out`` from the checkpoints the spec names; a summary dict."""
    from stabilitylab.interop.recorder import Recorder, recorder_config, stacked_model
    from stabilitylab.progress import Progress
    from stabilitylab.study.resolve import resolve_study

    spec = read_spec(spec_path, model=model, data=data)
    settings = _plan(spec)
    study = [*(f"{k}={_lit(v)}" for k, v in {**settings, **spec.settings}.items()),
             *overrides]
    cfg = recorder_config(study)
    resolve_study(cfg, min_replicas=1)
    stacked = stacked_model(cfg)
    names = [s.name for s in (*stacked.param_slots, *stacked.buffer_slots)]
    total = sum(len(run.files) for run in spec.runs)
    bar = Progress(2 * total, desc="import", unit="files", enabled=progress)
    masks = {}
    for run in spec.runs:  # pass 1: every file loads and fits before anything is written
        for i, path in enumerate(run.files):
            state, _ = _load(path, spec.prefix, stacked, names)
            if i == 0:
                masks[id(run)] = _mask_of(run, spec, state, stacked, names)
            bar.update(1)
    finals = _final_accuracy(spec, cfg, stacked, names)
    bar.set(phase="write")
    rec = Recorder(out, None, study=cfg, storage_options=storage_options)
    try:
        order = sorted(spec.runs, key=lambda r: (r.kind != "imp", r.level, r.k, r.replica))
        for run in order:
            for step, path in zip(run.steps, run.files):
                state, _ = _load(path, spec.prefix, stacked, names)
                rec.log(step, state, replica=run.replica, kind=run.kind, level=run.level,
                        rewind=run.k, mask=masks[id(run)])
                bar.update(1)
            rec.finish(replica=run.replica, kind=run.kind, level=run.level, rewind=run.k,
                       **finals.get(id(run), {}))
    except BaseException:
        rec.writer.close(consolidate=False)
        raise
    finally:
        bar.close()
    rec.writer.update_attrs({"imported_from": {
        "format": "checkpoints", "spec": str(spec.where), "checkpoints": total,
        "note": "weights at the checkpointed steps; final test metrics evaluated at T, "
                "logged curves NaN"}})
    complete = rec.close()
    evaluated = "evaluated" if finals else "not evaluated (the data set did not load)"
    lines = [(f"imported {total} checkpoints: {len(spec.runs)} copies, steps "
             f"{settings['study.record'][5:]} ({cfg.model.name}, {cfg.data.name})"),
             f"final test accuracy and loss at T: {evaluated}"]
    return {"out": str(out), "lines": lines, "complete": complete}


def _lit(value) -> str:
    from stabilitylab.interop.recorder import setting_literal

    return setting_literal(value)


__all__ = ["import_checkpoints"]
