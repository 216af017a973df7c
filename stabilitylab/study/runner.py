"""``record``: train a whole instability study and write every trajectory to the store.

Order of work (each level is one batched group):

1. dense pretraining from init to T under data order u_0, snapshotting W_k, the
   BN buffers and the optimizer state at every rewind point k;
2. level 0: R dense copies from each W_k under orders u_0..u_{R-1};
3. level L = 1..levels: masks from level L-1's replica-0 final weights (per k), then
   the IMP runs and, at control levels, the random-pruning and reinit controls.

Resume works per group: a finished group is read back from the store, an
unfinished one is retrained from its (stored, exact) inputs, so a resumed store
equals an uninterrupted one bit for bit on CPU.
"""

from __future__ import annotations

import datetime
import logging
import platform
import sys
from dataclasses import dataclass

import numpy as np
import torch

from stabilitylab.config import config_to_dict, study_id, validate
from stabilitylab.prune import density, prune, random_masks_like
from stabilitylab.study.plan import DENSE, Seeds, all_runs, level_runs, replica_steps
from stabilitylab.train.engine import GroupPlan, resolve_device, train_group
from stabilitylab.train.functional import StackedModel
from stabilitylab.train.optim import state_names
from stabilitylab.train.seeds import generator

log = logging.getLogger(__name__)


@dataclass
class RewindPoint:
    """The dense run's state at step k: what every run rewound to k starts from."""

    params: dict[str, torch.Tensor]  # unstacked
    buffers: dict[str, torch.Tensor]
    opt_state: dict[str, dict[str, torch.Tensor]]


class _DenseRecorder:
    def __init__(self, writer):
        self.writer = writer

    def record(self, runs, step, weights):
        self.writer.record_dense(step, weights[0])


def provenance(device: torch.device, cfg) -> dict:
    import xarray
    import zarr

    import stabilitylab

    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    return {
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "stabilitylab": stabilitylab.__version__, "torch": torch.__version__,
            "zarr": zarr.__version__, "xarray": xarray.__version__, "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "device": name,
        "seed": cfg.study.seed,
        "study_id": study_id(cfg),
        "config": config_to_dict(cfg),
    }


class StudyRunner:
    """Trains one study into one store. Use :func:`record_study`."""

    def __init__(self, cfg, out, *, resume=False, device=None, progress=None,
                 storage_options=None):
        from stabilitylab.data import load_dataset
        from stabilitylab.data.registry import DATASETS
        from stabilitylab.models import build_model, output_layer_name
        from stabilitylab.store import StudyWriter

        self.cfg = cfg
        self.resolved = validate(cfg)
        self.device = resolve_device(device or cfg.study.device)
        self.seeds = Seeds(cfg.study.seed)
        info = DATASETS[cfg.data.name]
        self._build = lambda seed: build_model(cfg.model, info.input_shape, info.num_classes,
                                               generator=generator(seed))
        init_model = self._build(self.seeds.init)
        self.stacked = StackedModel(init_model)
        self.init_params, self.init_buffers = self.stacked.stack([init_model])
        ignored = {output_layer_name(init_model) if n == "output" else n for n in cfg.pruning.ignore}
        unknown = ignored - set(self.stacked.param_names) - {
            n.rsplit(".", 1)[0] for n in self.stacked.param_names}
        if unknown:
            from stabilitylab.errors import ConfigError

            raise ConfigError(f"pruning.ignore: no layer named {sorted(unknown)[0]!r}; layers: "
                              + ", ".join(self.stacked.prunable_names))
        self.prunable = [n for n in self.stacked.prunable_names
                         if n not in ignored and n.rsplit(".", 1)[0] not in ignored]
        # Data first (read-only): a missing dataset must stop us before anything is written.
        self.data = load_dataset(cfg.data, self.device)
        self.augment = None
        if cfg.data.augment:
            from stabilitylab.data.augment import random_flip_crop

            self.augment = random_flip_crop
        self.runs = all_runs(self.resolved)
        self.opt_state_names = list(state_names(cfg.training))
        if resume:
            self.writer = StudyWriter.resume(out, self.resolved, study_id=study_id(cfg),
                                             storage_options=storage_options)
        else:
            self.writer = StudyWriter.create(
                out, self.resolved, param_layout=self.stacked.layout(),
                buffer_layout=self.stacked.buffer_layout(),
                provenance=provenance(self.device, cfg), runs=self.runs,
                optimizer_state_names=self.opt_state_names, storage_options=storage_options)
        self.progress = progress

    # ----------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            total = self.resolved.total_steps + replica_steps(self.resolved, self.runs)
            bar = self._bar(total)
            rewind = self._pretrain(bar)
            finals: dict[int, torch.Tensor] = {}  # rewind -> flat final weights of imp replica 0
            masks: dict[int, dict[str, torch.Tensor]] = {
                k: {n: torch.ones(self.stacked.param_slots[self._slot(n)].shape, dtype=torch.bool)
                    for n in self.prunable} for k in self.resolved.rewinds}
            for level in self.resolved.levels:
                if level > 0:
                    masks = {k: self._next_masks(finals[k], masks[k], level, k) for k in masks}
                finals = self._level(level, rewind, masks, bar)
            bar.close()
        finally:
            self.writer.close(consolidate=True)

    def _bar(self, total):
        from tqdm.auto import tqdm

        disable = not sys.stderr.isatty() if self.progress is None else not self.progress
        return tqdm(total=total, unit="step", desc="record", disable=disable, smoothing=0.1,
                    dynamic_ncols=True)

    def _slot(self, name):
        return self.stacked.param_names.index(name)

    def _unflat(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t[0] for n, t in self.stacked.unflatten(flat[None]).items()}

    # ----------------------------------------------------------------------------------
    def _pretrain(self, bar) -> dict[int, RewindPoint]:
        rewinds = self.resolved.rewinds
        if self.writer.dense_complete():
            bar.update(self.resolved.total_steps)
            return {k: self._read_rewind(k) for k in rewinds}
        points: dict[int, RewindPoint] = {}

        def on_snapshot(step, params, buffers, optimizer):
            points[step] = RewindPoint(
                {n: t[0].detach().cpu().clone() for n, t in params.items()},
                {n: t[0].detach().cpu().clone() for n, t in buffers.items()},
                {s: {n: t.cpu() for n, t in d.items()} for s, d in optimizer.state_of(0).items()},
            )

        plan = GroupPlan(runs=[DENSE], start_steps=[0], data_seeds=[self.seeds.data_order(0)],
                         params=self.init_params, buffers=self.init_buffers,
                         snapshot_steps=rewinds, seed=self.seeds.group(-1))
        result = train_group(self.stacked, plan, self.data, self.resolved,
                             recorder=_DenseRecorder(self.writer), on_snapshot=on_snapshot,
                             on_progress=bar.update, augment=self.augment)
        for k, point in points.items():
            self.writer.write_rewind_state("weights", k, self._flat(point.params))
            for s in self.opt_state_names:
                self.writer.write_rewind_state(s, k, self._flat(point.opt_state[s]))
            if self.stacked.buffer_slots:
                self.writer.write_rewind_buffers(k, self._flat_buffers(point.buffers))
        self.writer.write_dense_metrics(**self._metrics(result, 0))
        self.writer.write_dense_final(buffers=self._flat_buffers(
            {n: t[0] for n, t in result.buffers.items()}), **self._finals(result, 0))
        self.writer.finish_dense("diverged" if result.diverged_step[0] >= 0 else "complete")
        # Read back so a fresh run and a resumed one start later levels from identical values.
        return {k: self._read_rewind(k) for k in rewinds}

    def _read_rewind(self, k) -> RewindPoint:
        w = self.writer
        params = self._unflat(torch.from_numpy(np.asarray(w.read_rewind_state("weights", k))))
        state = {s: self._unflat(torch.from_numpy(np.asarray(w.read_rewind_state(s, k))))
                 for s in self.opt_state_names}
        buffers = {}
        if self.stacked.buffer_slots:
            flat = torch.from_numpy(np.asarray(w.read_rewind_buffers(k)))[None]
            buffers = {n: t[0] for n, t in self.stacked.unflatten_buffers(flat).items()}
        return RewindPoint(params, buffers, state)

    def _flat(self, tensors: dict) -> np.ndarray:
        return self.stacked.flatten({n: t[None] for n, t in tensors.items()})[0].cpu().numpy()

    def _flat_buffers(self, tensors: dict) -> np.ndarray:
        if not self.stacked.buffer_slots:
            return np.zeros(0, np.float32)
        return self.stacked.flatten_buffers({n: t[None] for n, t in tensors.items()})[0].cpu().numpy()

    # ----------------------------------------------------------------------------------
    def _next_masks(self, final_flat, previous, level, k):
        weights = {n: t for n, t in self._unflat(final_flat).items() if n in previous}
        new = prune(weights, previous, self.cfg.pruning.fraction, self.cfg.pruning.strategy)
        return new

    def _mask_flat(self, masks: dict[str, torch.Tensor]) -> np.ndarray:
        ones = {n: torch.ones(s.shape, dtype=torch.float32) for n, s in
                zip(self.stacked.param_names, self.stacked.param_slots)}
        for n, m in masks.items():
            ones[n] = m.float()
        return self._flat(ones) > 0.5

    def _level(self, level, rewind, masks, bar) -> dict[int, torch.Tensor]:
        runs = level_runs(self.resolved, level)
        done = self.writer.completed_runs()
        if all(run in done for run in runs):
            bar.update(replica_steps(self.resolved, runs))
            T = self.resolved.total_steps
            return {k: torch.from_numpy(np.asarray(self.writer.read_weights(("imp", level, k, 0), T)))
                    for k in self.resolved.rewinds}
        run_masks: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        for k in self.resolved.rewinds:
            run_masks[("imp", k)] = masks[k]
            run_masks[("reinit", k)] = masks[k]
            g = generator(self.seeds.random_prune(level, k))
            run_masks[("random_prune", k)] = random_masks_like(masks[k], g) if level > 0 else masks[k]
        kinds_here = sorted({r[0] for r in runs})
        for kind in kinds_here:
            for k in self.resolved.rewinds:
                m = run_masks[(kind, k)]
                self.writer.write_mask(kind, level, k, self._mask_flat(m), density(m))
        reinit_model = self._build(self.seeds.reinit) if "reinit" in kinds_here else None
        plan = self._plan(runs, rewind, run_masks, reinit_model, level)
        for run in runs:
            if run in done:
                self.writer.reset_run(run)
        result = train_group(self.stacked, plan, self.data, self.resolved, recorder=self.writer,
                             on_progress=bar.update, augment=self.augment)
        for r, run in enumerate(runs):
            self.writer.write_metrics(run, **self._metrics(result, r))
            self.writer.write_final(run, buffers=self._flat_buffers(
                {n: t[r] for n, t in result.buffers.items()}), **self._finals(result, r))
            div = result.diverged_step[r]
            self.writer.finish_run(run, "diverged" if div >= 0 else "complete", div)
            if div >= 0:
                log.warning("run %s diverged at step %d", run, div)
        finals = {}
        for r, run in enumerate(runs):
            if run[0] == "imp" and run[3] == 0:
                finals[run[2]] = self.stacked.flatten({n: t[r:r + 1] for n, t in result.params.items()})[0].cpu()
        return finals

    def _plan(self, runs, rewind, run_masks, reinit_model, level) -> GroupPlan:
        restore = self.cfg.training.restore_optimizer
        params, buffers, masks, states, opt_steps, seeds, starts = [], [], [], [], [], [], []
        if reinit_model is not None:
            rp, rb = self.stacked.stack([reinit_model])
        for kind, _level, k, replica in runs:
            point = rewind[k]
            m = run_masks[(kind, k)]
            if kind == "reinit":
                params.append({n: t[0] for n, t in rp.items()})
                buffers.append({n: t[0] for n, t in rb.items()})
                states.append(None)
                opt_steps.append(0)
            else:
                params.append(point.params)
                buffers.append(point.buffers)
                states.append(point.opt_state if restore else None)
                opt_steps.append(k if restore else 0)
            masks.append(m)
            seeds.append(self.seeds.data_order(replica))
            starts.append(k)
        stacked_params = {n: torch.stack([p[n] for p in params]) for n in self.stacked.param_names}
        stacked_buffers = {n: torch.stack([b[n] for b in buffers]) for n in self.stacked.buffer_names}
        stacked_masks = {n: torch.stack([m[n] for m in masks]).float() for n in self.prunable} if level > 0 else {}
        opt_state = None
        if self.opt_state_names and any(s is not None for s in states):
            opt_state = {}
            for s in self.opt_state_names:
                opt_state[s] = {}
                for n in self.stacked.param_names:
                    rows = []
                    for r, st in enumerate(states):
                        if st is not None:
                            rows.append(st[s][n])
                        elif s == "slow":
                            rows.append(params[r][n])
                        else:
                            rows.append(torch.zeros_like(params[r][n]))
                    opt_state[s][n] = torch.stack(rows)
        return GroupPlan(runs=runs, start_steps=starts, data_seeds=seeds, params=stacked_params,
                         buffers=stacked_buffers, masks=stacked_masks, opt_state=opt_state,
                         opt_steps=opt_steps, seed=self.seeds.group(level))

    @staticmethod
    def _metrics(result, r) -> dict:
        return {name: getattr(result, name)[r] for name in (
            "train_loss", "train_acc", "test_loss", "test_acc", "train_eval_loss", "train_eval_acc")}

    @staticmethod
    def _finals(result, r) -> dict:
        return {"test_acc": float(result.test_acc[r, -1]), "test_loss": float(result.test_loss[r, -1]),
                "train_eval_acc": float(result.train_eval_acc[r, -1]),
                "train_eval_loss": float(result.train_eval_loss[r, -1])}


def record_study(cfg, out, *, resume: bool = False, device: str | None = None,
                 progress: bool | None = None, storage_options: dict | None = None) -> str:
    """Train and record the study ``cfg`` into the store at ``out``; return ``out``."""
    StudyRunner(cfg, out, resume=resume, device=device, progress=progress,
                storage_options=storage_options).run()
    return str(out)
