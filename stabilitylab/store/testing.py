"""Tiny fake studies for tests: a schedule without a dataset, and a filled store.

``make_fake_store(url)`` writes a small, valid, complete store in well under a
second and returns what it wrote, so tests of the reader and the analysis layer
can compare against exact values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stabilitylab.config.schema import (
    Config,
    PruningConfig,
    StudyConfig,
    TrainingConfig,
)
from stabilitylab.config.validate import Resolved
from stabilitylab.core.keys import RunKey
from stabilitylab.store.schema import KINDS


def fake_resolved(*, levels: int = 1, rewinds: tuple[int, ...] = (0, 10), replicas: int = 2,
                  total_steps: int = 40, record_every: int = 10, log_every: int = 5,
                  eval_every: int = 20, controls: tuple[str, ...] = ("random_prune",),
                  seed: int = 0) -> Resolved:
    """A :class:`Resolved` built directly (no dataset lookup): T, rewinds and schedules in iterations."""
    cfg = Config(
        training=TrainingConfig(steps=f"{total_steps}it", eval_every=f"{eval_every}it",
                                log_every=f"{log_every}it"),
        pruning=PruningConfig(levels=levels),
        study=StudyConfig(name="fake", rewinds=tuple(f"{k}it" for k in rewinds), replicas=replicas,
                          seed=seed, controls=controls, record=f"every:{record_every}"),
    )

    def every(n: int) -> tuple[int, ...]:
        return tuple(sorted(set(range(0, total_steps + 1, n)) | {total_steps}))

    return Resolved(
        config=cfg, iterations_per_epoch=total_steps, total_steps=total_steps,
        rewinds=tuple(sorted(rewinds)), warmup=0, milestones=(), eval_every=eval_every,
        log_every=log_every,
        record_steps=tuple(sorted(set(every(record_every)) | set(rewinds))),
        eval_steps=every(eval_every), log_steps=every(log_every),
        levels=tuple(range(levels + 1)),
        control_levels=(levels,) if controls and levels > 0 else (),
    )


def planned_runs(resolved: Resolved) -> list[RunKey]:
    """IMP at every level, each control at the control levels; all rewinds and replicas."""
    cfg = resolved.config
    out: list[RunKey] = []
    for kind in KINDS:
        lvls = resolved.levels if kind == "imp" else (
            resolved.control_levels if kind in cfg.study.controls else ())
        out += [RunKey(kind, lv, k, r) for lv in lvls for k in resolved.rewinds for r in range(cfg.study.replicas)]
    return out


def fake_layout(sizes: tuple[tuple[str, tuple[int, ...], bool], ...]) -> list[dict]:
    out, offset = [], 0
    for name, shape, prunable in sizes:
        n = int(np.prod(shape))
        out.append({"name": name, "shape": list(shape), "offset": offset, "size": n, "prunable": prunable})
        offset += n
    return out


@dataclass
class FakeStudy:
    url: object
    resolved: Resolved
    runs: list[RunKey]
    param_layout: list[dict]
    weights: dict[RunKey, np.ndarray] = field(default_factory=dict)  # (n_steps, P), 0 before k
    dense_weights: np.ndarray | None = None
    masks: dict[tuple[str, int, int], np.ndarray] = field(default_factory=dict)
    metrics: dict[RunKey, dict[str, np.ndarray]] = field(default_factory=dict)


def make_fake_store(url, *, levels: int = 1, rewinds: tuple[int, ...] = (0, 10), replicas: int = 2,
                    n_params: int = 50, total_steps: int = 40, record_every: int = 10,
                    controls: tuple[str, ...] = ("random_prune",), step_chunk: int | None = 2,
                    state_names: tuple[str, ...] = ("momentum",), complete: bool = True,
                    consolidate: bool = True, precision_bits: int | None = None,
                    storage_options: dict | None = None, seed: int = 0) -> FakeStudy:
    """Write a small filled store at ``url`` and return the exact values written.

    Default: imp at levels 0..1 and random_prune at level 1, rewinds (0, 10),
    2 replicas, P=50 (two tensors), T=40 recorded every 10 steps (plus rewinds).
    With ``complete=False`` the last planned run is left incomplete.
    """
    from stabilitylab.store.writer import StudyWriter

    res = fake_resolved(levels=levels, rewinds=rewinds, replicas=replicas, total_steps=total_steps,
                        record_every=record_every, controls=controls, seed=seed)
    n_w = n_params - n_params // 5
    layout = fake_layout((("fc.weight", (n_w,), True), ("fc.bias", (n_params - n_w,), False)))
    runs = planned_runs(res)
    rng = np.random.default_rng(seed)
    study = FakeStudy(url=url, resolved=res, runs=runs, param_layout=layout)
    steps = np.array(res.record_steps)
    provenance = {"device": "cpu", "seed": seed, "study_id": f"fake{seed:08d}"}
    w = StudyWriter.create(url, res, param_layout=layout, buffer_layout=[], provenance=provenance,
                           runs=runs, optimizer_state_names=list(state_names), step_chunk=step_chunk,
                           precision_bits=precision_bits, storage_options=storage_options)
    try:
        dense = rng.normal(0, 0.1, (len(steps), n_params)).astype(np.float32)
        for s, row in zip(steps, dense):
            w.record_dense(int(s), row)
        study.dense_weights = dense
        nan = lambda n: np.full(n, np.nan, np.float32)
        w.write_dense_metrics(train_loss=nan(len(res.log_steps)), train_acc=nan(len(res.log_steps)),
                              test_loss=nan(len(res.eval_steps)), test_acc=nan(len(res.eval_steps)),
                              train_eval_loss=nan(len(res.eval_steps)),
                              train_eval_acc=nan(len(res.eval_steps)))
        w.write_dense_final(buffers=np.zeros(0, np.float32), test_acc=0.9, test_loss=0.3,
                            train_eval_acc=0.95, train_eval_loss=0.2)
        w.finish_dense("complete")
        for k in res.rewinds:
            w.write_rewind_state("weights", k, dense[list(steps).index(k)])  # W_k
            for name in state_names:
                w.write_rewind_state(name, k, rng.normal(0, 1, n_params).astype(np.float32))
            for kind, lv in sorted({(r.kind, r.level) for r in runs if r.level > 0}):
                mask = np.ones(n_params, bool)
                mask[: n_w] = rng.random(n_w) < 0.8 ** lv
                w.write_mask(kind, lv, k, mask, float(mask[:n_w].mean()))
                study.masks[(kind, lv, k)] = mask
        last = runs[-1]
        for run in runs:
            mask = study.masks.get((run.kind, run.level, run.rewind), np.ones(n_params, bool))
            traj = (rng.normal(0, 0.1, (len(steps), n_params)) * mask).astype(np.float32)
            traj[steps < run.rewind] = 0
            for i in np.nonzero(steps >= run.rewind)[0]:
                w.record([run], int(steps[i]), traj[i][None])
            study.weights[run] = traj
            m = {name: rng.random(len(res.log_steps)).astype(np.float32)
                 for name in ("train_loss", "train_acc")}
            m |= {name: rng.random(len(res.eval_steps)).astype(np.float32)
                  for name in ("test_loss", "test_acc", "train_eval_loss", "train_eval_acc")}
            for name in ("train_loss", "train_acc"):
                m[name][np.array(res.log_steps) < run.rewind] = np.nan
            study.metrics[run] = m
            w.write_metrics(run, **m)
            w.write_final(run, buffers=np.zeros(0, np.float32), test_acc=0.9, test_loss=0.3,
                          train_eval_acc=0.95, train_eval_loss=0.2)
            if complete or run != last:
                w.finish_run(run, "complete")
    finally:
        w.close(consolidate=consolidate)
    return study
