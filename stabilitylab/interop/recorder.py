"""``stabilitylab.Recorder``: write a study store from inside any training loop.

    rec = stabilitylab.Recorder("runs/mine.zarr", model, study={
        "model.name": "mypkg.models:small_mlp", "data.name": "mypkg.data:digits",
        "training.steps": "200it", "study.record": "every:10", "study.replicas": 2})
    for r in range(2):
        model = make_model(seed=0)            # the copies share W_k; they differ in data order
        for step in range(201):
            rec.log(step, model, replica=r)   # steps outside study.record are skipped
            ...one optimizer step...
        rec.finish(replica=r, test_acc=acc)
    rec.close()

The store is the one ``record`` writes (:class:`~stabilitylab.store.StudyWriter`, the
same writer lock, the same layout), sized from ``study``: dotted config settings on
top of the default config, with ``pruning.levels = 0`` and ``study.rewinds = ["0it"]``
unless set. ``model.name`` and ``data.name`` must name what ``analyze`` rebuilds (a
shipped name or a ``module:function`` plugin); every logged state_dict is checked
against that model's names and shapes.

- Copy ``replica`` of (``kind``, ``level``) is recorded from its rewind point k on;
  steps before k, logged for replica 0 of (imp, level 0), are the dense trunk (NaN where
  not logged). Replica
  0 of (imp, level 0) also is the dense run (the engine's dense run and that copy are
  the same training); its weights at k are W_k.
- Masks: ``mask=`` on a run's first :meth:`log` (a name -> 0/1 tensor mapping), else
  all ones at level 0 and the zeros of the first logged weights above it.
- Crash-safety and resume follow ``record``: a run's status is written after its data,
  a crashed run stays incomplete, and ``Recorder(..., resume=True)`` reopens the store
  (same study id, same schedule), skips complete runs (:meth:`log` returns False for
  them) and records incomplete ones again from their start.
- Bad input (steps going backwards, a missing step at :meth:`finish`, a replica
  outside the study, a state_dict of another architecture) is a
  :class:`~stabilitylab.core.errors.CheckpointError` with one line.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import torch

from stabilitylab.core.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

__all__ = ["Recorder", "recorder_config", "stacked_model"]

BASE = ("pruning.levels=0", "study.rewinds=['0it']", "study.controls=[]")


def setting_literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(setting_literal(v) for v in value) + "]"
    raise ConfigError(f"study setting value {value!r}: expected a string, number, bool or list")


def recorder_config(study=None):
    """The config of a recorded store: ``study`` is a Config, a mapping of dotted
    settings (``{"training.steps": "200it"}``) or a list of ``key=value`` strings."""
    from stabilitylab.config import Config
    from stabilitylab.config.loader import apply_overrides, build_config, read_toml

    if isinstance(study, Config):
        return study
    if study is None:
        overrides = []
    elif isinstance(study, dict):
        overrides = [f"{k}={setting_literal(v)}" for k, v in study.items()]
    elif isinstance(study, (list, tuple)):
        overrides = list(study)
    else:
        raise ConfigError(f"study: expected a Config, a mapping or a list, got {type(study).__name__}")
    raw, label = read_toml(None)
    return build_config(apply_overrides(raw, [*BASE, *overrides]), label)


def stacked_model(cfg):
    """The stacked model ``analyze`` rebuilds for ``cfg`` (the layout logged weights fit)."""
    from stabilitylab.data.registry import dataset_info
    from stabilitylab.models import build_model
    from stabilitylab.train.functional import StackedModel

    dinfo = dataset_info(cfg.data)
    template = build_model(cfg.model, dinfo.input_shape, dinfo.num_classes,
                           generator=torch.Generator().manual_seed(0))
    return StackedModel(template)


def _state_of(model) -> dict[str, torch.Tensor]:
    state = model.state_dict() if hasattr(model, "state_dict") else model
    if not isinstance(state, dict):
        raise CheckpointError(f"log: expected a module or a state_dict, got {type(model).__name__}")
    return {k: v.detach().cpu() for k, v in state.items() if isinstance(v, torch.Tensor)}


class Recorder:
    """Records the weights a training loop logs into a new (or resumed) study store."""

    def __init__(self, out, model=None, *, study=None, resume: bool = False,
                 storage_options: dict | None = None):
        from stabilitylab.store import StudyWriter
        from stabilitylab.store.schema import local_path
        from stabilitylab.study.context import provenance
        from stabilitylab.study.plan import all_runs
        from stabilitylab.study.resolve import resolve_study, study_id
        from stabilitylab.train.optim import state_names

        cfg = recorder_config(study)
        self.resolved = resolve_study(cfg, min_replicas=1)
        self.cfg = cfg
        self.stacked = stacked_model(cfg)
        self.out = str(out)
        if model is not None:  # the loop's model fits the config's (before anything is written)
            self._flat(_state_of(model), "model")
        self._states = list(state_names(cfg.training))
        path = local_path(out)
        exists = path is not None and path.exists() and any(path.iterdir())
        self._resumed = bool(resume and exists)
        if self._resumed:
            self.writer = StudyWriter.resume(out, self.resolved, study_id=study_id(cfg),
                                             storage_options=storage_options,
                                             optimizer_state_names=self._states)
        else:
            self.writer = StudyWriter.create(
                out, self.resolved, param_layout=self.stacked.layout(),
                buffer_layout=self.stacked.buffer_layout(),
                provenance=provenance(torch.device("cpu"), self.resolved, trained_here=False),
                runs=all_runs(self.resolved),
                optimizer_state_names=self._states, storage_options=storage_options)
        self.completed = self.writer.completed_runs()
        self._dense_done = self.writer.dense_complete()
        self._logged: dict[tuple, list[int]] = {}
        self._seen: dict[tuple, int] = {}
        self._buffers: dict[tuple, np.ndarray] = {}
        self._masks: set[tuple] = set()
        self._rewind_written: set[int] = set()
        self._dense_last = -1
        self._recorded = set(self.writer.steps)
        self._closed = False

    # -- logging ---------------------------------------------------------------------------

    def _flat(self, state, label, prefix=None) -> tuple[torch.Tensor, torch.Tensor]:
        from stabilitylab.interop.checkpoints import fit_state_dict, strip_prefix

        names = [s.name for s in (*self.stacked.param_slots, *self.stacked.buffer_slots)]
        return fit_state_dict(strip_prefix(state, prefix, names, label), self.stacked, label)

    def _key(self, kind, level, rewind, replica):
        from stabilitylab.core.keys import RunKey

        rewinds = self.resolved.rewinds
        if rewind is None:
            if len(rewinds) != 1:
                raise CheckpointError(f"log: the study has rewind points {list(rewinds)}; "
                                      "pass rewind=")
            rewind = rewinds[0]
        if kind not in self.writer.kinds:
            raise CheckpointError(f"log: kind {kind!r} is not in this study "
                                  f"({', '.join(self.writer.kinds)})")
        if level not in self.resolved.levels or rewind not in rewinds:
            raise CheckpointError(f"log: level {level} / rewind {rewind} is not in this study "
                                  f"(levels {list(self.resolved.levels)}, rewinds {list(rewinds)})")
        if not 0 <= int(replica) < self.writer.n_replicas:
            raise CheckpointError(f"log: replica {replica} is not in this study "
                                  f"(study.replicas = {self.writer.n_replicas})")
        return RunKey(kind, int(level), int(rewind), int(replica))

    def log(self, step: int, model, *, replica: int = 0, kind: str = "imp", level: int = 0,
            rewind: int | None = None, mask=None, prefix: str | None = None) -> bool:
        """Record ``model``'s weights (a module or a state_dict) at ``step`` for one copy.
        Returns True when written, False when the step is not recorded (outside
        ``study.record``) or the run is already complete in a resumed store."""
        self._check()
        step = int(step)
        key = self._key(kind, level, rewind, replica)
        last = self._seen.get(key, -1)
        if step <= last:
            raise CheckpointError(f"steps go backwards: {kind} level {level} replica "
                                  f"{key.replica} logged step {step} after step {last}")
        self._seen[key] = step
        if step not in self._recorded or key in self.completed:
            return False
        dense = key[:2] == ("imp", 0) and key.replica == 0
        if step < key.rewind and not dense:
            return False
        flat, buffers = self._flat(_state_of(model), f"step {step} of replica {key.replica}",
                                   prefix)
        steps = self._logged.setdefault(key, [])
        if not steps and self._resumed:
            self.writer.reset_run(key)  # a resumed incomplete run starts over
        steps.append(step)
        self._buffers[key] = buffers.numpy()
        if dense and not self._dense_done:
            nan = np.full(self.writer.n_params, np.nan, np.float32)
            for s in self.writer.steps:  # trunk steps nobody logged: NaN, never zeros
                if self._dense_last < s < min(step, key.rewind):
                    self.writer.record_dense(s, nan)
            self.writer.record_dense(step, flat.numpy())
            self._dense_last = step
        if step < key.rewind:
            return True
        if (key.kind, key.level, key.rewind) not in self._masks:
            self._write_mask(key, flat, mask)
        if dense and step == key.rewind and key.rewind not in self._rewind_written:
            self.writer.write_rewind_state("weights", key.rewind, flat.numpy())
            for name in self._states:
                self.writer.write_rewind_state(name, key.rewind,
                                               np.zeros(self.writer.n_params, np.float32))
            if self.writer.n_buffers:
                self.writer.write_rewind_buffers(key.rewind, buffers.numpy())
            self._rewind_written.add(key.rewind)
        self.writer.record([key], step, flat.numpy()[None])
        return True

    def _write_mask(self, key, flat: torch.Tensor, mask) -> None:
        keep = torch.ones(self.writer.n_params, dtype=torch.bool)
        prunable = torch.zeros(self.writer.n_params, dtype=torch.bool)
        for s in self.stacked.param_slots:
            if not s.prunable:
                continue
            prunable[s.offset:s.offset + s.size] = True
            if mask is not None:
                m = mask.get(s.name)
                if m is None or tuple(m.shape) != tuple(s.shape):
                    raise CheckpointError(f"mask: no 0/1 tensor of shape {tuple(s.shape)} "
                                          f"for {s.name!r}")
                keep[s.offset:s.offset + s.size] = torch.as_tensor(m).flatten() != 0
            elif key.level > 0:
                keep[s.offset:s.offset + s.size] = flat[s.offset:s.offset + s.size] != 0
        density = float(keep[prunable].float().mean()) if bool(prunable.any()) else 1.0
        self.writer.write_mask(key.kind, key.level, key.rewind, keep.numpy(), density)
        self._masks.add((key.kind, key.level, key.rewind))

    # -- finishing ---------------------------------------------------------------------------

    def finish(self, *, replica: int = 0, kind: str = "imp", level: int = 0,
               rewind: int | None = None, test_acc: float = math.nan,
               test_loss: float = math.nan, train_acc: float = math.nan,
               train_loss: float = math.nan) -> None:
        """Mark one copy complete (after every recorded step from its k to T was logged),
        with its final metrics when known. Replica 0 of (imp, level 0) also completes
        the dense run."""
        self._check()
        key = self._key(kind, level, rewind, replica)
        if key in self.completed:
            return
        logged = set(self._logged.get(key, ()))
        dense = key[:2] == ("imp", 0) and key.replica == 0
        want = [s for s in self.writer.steps if s >= key.rewind]  # (the dense trunk may be NaN)
        missing = [s for s in want if s not in logged]
        if missing:
            raise CheckpointError(f"finish: {kind} level {level} replica {key.replica} never "
                                  f"logged step {missing[0]}" + (f" (and {len(missing) - 1} more)"
                                                                 if len(missing) > 1 else ""))
        nan_log = np.full(self.writer.n_log, np.nan, np.float32)
        nan_eval = np.full(self.writer.n_eval, np.nan, np.float32)
        metrics = {"train_loss": nan_log, "train_acc": nan_log, "test_loss": nan_eval,
                   "test_acc": nan_eval, "train_eval_loss": nan_eval, "train_eval_acc": nan_eval}
        finals = {"test_acc": test_acc, "test_loss": test_loss, "train_eval_acc": train_acc,
                  "train_eval_loss": train_loss}
        buffers = self._buffers[key] if self.writer.n_buffers else None
        if dense and not self._dense_done:  # first: a crash in between leaves the copy to redo
            self.writer.write_dense_metrics(**metrics)
            self.writer.write_dense_final(buffers=buffers, **finals)
            self.writer.finish_dense("complete")
            self._dense_done = True
        self.writer.write_metrics(key, **metrics)
        self.writer.write_final(key, buffers=buffers, **finals)
        self.writer.finish_run(key, "complete")
        self.completed.add(key)

    def close(self) -> bool:
        """Flush, consolidate and release the store; True when every run is complete."""
        if self._closed:
            return False
        self._closed = True
        return self.writer.close(consolidate=True)

    def _check(self) -> None:
        if self._closed:
            raise CheckpointError(f"recorder for {self.out} is closed")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif not self._closed:  # a crash: what is written stays, unfinished runs incomplete
            self._closed = True
            self.writer.close(consolidate=False)
