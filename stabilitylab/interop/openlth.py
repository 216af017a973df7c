"""``import openlth``: turn an OpenLTH lottery run into a stabilitylab store.

    stabilitylab import openlth open_lth_data/lottery_<hash> --out runs/imported.zarr

OpenLTH (facebookresearch/open_lth) keeps one directory per experiment, named after
a hash of its hyperparameters::

    lottery_<hash>/replicate_<r>/level_<L>/main/
        hparams.log                  (level_0 only: the hyperparameters, as displayed)
        mask.pth                     (the level's mask: 0/1 tensors by parameter name)
        model_ep<E>_it<I>.pth        (state_dicts at the rewind step and at the end)
        logger                       ("name,iteration,value" lines, e.g. test_accuracy)
    lottery_<hash>/replicate_<r>/level_pretrain/main/model_ep0_it0.pth   (with rewinding)
    lottery_<hash>/replicate_<r>/level_<L>/lottery_branch_<branch>_<hash>/   (branches)

Give the ``lottery_<hash>`` folder (every replicate) or one ``replicate_<N>`` folder
(where OpenLTH's own logs point; that replicate only). ``hparams.log`` is read by its
field names (:mod:`stabilitylab.interop.openlth_hparams`), whatever its section titles.

Mapping to our store: OpenLTH replicates are our replicas, its levels our levels,
``level_L/main`` the ``imp`` runs (level 0: the dense copies), the
``randomly_prune`` and ``randomly_reinitialize`` branches our ``random_prune`` and
``reinit`` controls. The one rewind point k is OpenLTH's pretraining length
(``--rewinding_steps``; 0 without it). Replicate 1's pretraining and level-0 run form
the dense run. Only the checkpoints at k and at T exist, so the store records steps
0, k and T (``study.record = "endpoints"``): the trajectory measures are absent, the
endpoint measures (barriers, distances at T, disagreement, mask overlap) complete.

Differences that the import keeps visible:

- OpenLTH applies masks in the forward pass but keeps updating pruned weights, so its
  files hold non-zeros at pruned positions. The import multiplies every checkpoint by
  its mask (the function OpenLTH evaluates); the count it zeroed is in the attrs.
- OpenLTH replicates differ in init, data order and therefore masks, while our
  replicas share W_k and the mask. So their pairs are **different-init pairs**: the
  store's ``pair_noise`` attribute says ``"init"`` for every imported kind, and
  ``analyze``, the report and the CSV label them so
  (:mod:`stabilitylab.analysis.pair_noise`); their barrier is not the data-order
  instability of copies of one W_k. The store's mask of a (kind, level) is the union of
  the replicates' masks; each replicate's weights carry its own zeros; the
  replicates' own densities are in the attrs.
- One replicate imports too: the pair measures are then absent (named by ``analyze``);
  the pruning-noise distance (level L vs level 0 of the same replicate), accuracies,
  masks and densities remain.
- Pruning counts: OpenLTH's sparse_global strategy takes n = ceil(f·alive), then
  keeps the weights with |w| strictly above the n-th smallest magnitude (0-based), so
  it prunes ceil(f·alive) + 1 weights (ties aside); stabilitylab prunes
  round(f·alive) (half to even). :func:`openlth_global_masks` reproduces OpenLTH's
  rule, and the import checks every stored mask against it.
- OpenLTH keeps no optimizer state at k (it restarts the optimizer, our
  ``training.restore_optimizer = false``), so the store's optimizer state at k is 0.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stabilitylab.core.errors import CheckpointError, ConfigError
from stabilitylab.interop.checkpoints import fit_state_dict, load_state_dict
from stabilitylab.interop.openlth_hparams import (  # noqa: F401 - MAX_* re-exported
    MAX_HPARAMS_BYTES,
    MAX_LOGGER_BYTES,
    iterations_per_epoch,
    model_mapping,
    parse_hparams,
    read_capped,
    sections_by_role,
    steps,
)
from stabilitylab.interop.openlth_write import mask_density, read_logger, write_dense, write_run

log = logging.getLogger(__name__)

# OpenLTH dataset name -> (our data.name, number of training examples)
DATASETS = {"mnist": ("mnist", 60000), "cifar10": ("cifar10", 50000)}
BRANCH_KINDS = {"randomly_prune": "random_prune", "randomly_reinitialize": "reinit"}
_MODEL_FILE = re.compile(r"^model_ep(\d+)_it(\d+)\.pth$")


# -- pruning ------------------------------------------------------------------------------

def openlth_global_masks(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                         fraction: float, *, ignored: dict[str, torch.Tensor] | None = None
                         ) -> dict[str, torch.Tensor]:
    """OpenLTH's ``sparse_global`` pruning step, reproduced exactly (learned from its source).

    n = ceil(fraction · alive), where alive counts the mask entries of every prunable
    tensor, the ignored ones (``pruning_layers_to_ignore``, whose masks ``ignored`` stay
    all ones) included; the threshold is the n-th smallest (0-based) |w| among the alive
    weights of the pruned tensors ``weights``; a weight survives when alive and
    |w| > threshold. So ceil(fraction · alive) + 1 weights are pruned when magnitudes
    are distinct (one more than n), versus round(fraction · alive) in
    :func:`stabilitylab.prune.prune`.
    """
    names = list(weights)
    alive = np.concatenate([np.abs(weights[n].numpy())[masks[n].numpy() > 0] for n in names])
    counted = alive.size + sum(int((m != 0).sum()) for m in (ignored or {}).values())
    n_prune = int(np.ceil(fraction * counted))
    threshold = np.sort(alive)[n_prune]
    return {n: torch.from_numpy((np.abs(weights[n].numpy()) > threshold) & (masks[n].numpy() > 0))
            for n in names}


# -- the run directory ------------------------------------------------------------------

@dataclass
class _Run:
    kind: str
    level: int
    replica: int
    folder: Path
    start: Path | None = None
    end: Path | None = None
    mask: Path | None = None


def _model_files(folder: Path, ipe: int) -> dict[int, Path]:
    out = {}
    for p in folder.iterdir() if folder.is_dir() else ():
        m = _MODEL_FILE.match(p.name)
        if m:
            out[int(m.group(1)) * ipe + int(m.group(2))] = p
    return out


def _replicates(run_dir: Path) -> list[Path]:
    reps = sorted((p for p in run_dir.glob("replicate_*") if p.is_dir()
                   and p.name.split("_", 1)[1].isdigit()), key=lambda p: int(p.name.split("_")[1]))
    return reps


def locate(path) -> tuple[Path, list[Path]]:
    """(the experiment folder, its replicate folders to import) for ``path``: an OpenLTH
    ``lottery_<hash>`` folder (every ``replicate_<N>`` in it) or one ``replicate_<N>``
    folder, where OpenLTH's own logs point (that replicate only)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such directory")
    if re.fullmatch(r"replicate_\d+", path.name) and (path / "level_0").is_dir():
        return path.parent, [path]
    reps = _replicates(path)
    if not reps:
        raise CheckpointError(f"{path}: no replicate_<N> folders; give an OpenLTH "
                              "lottery_<hash> folder or one of its replicate_<N> folders")
    return path, reps


def read_run(run_dir, overrides=()) -> dict:
    """Everything the import needs from an OpenLTH lottery directory (no writing)."""
    run_dir, reps = locate(run_dir)
    hp_path = reps[0] / "level_0" / "main" / "hparams.log"
    if not hp_path.is_file():
        raise CheckpointError(f"{hp_path}: missing (OpenLTH writes it for every lottery run)")
    sections = parse_hparams(read_capped(hp_path, MAX_HPARAMS_BYTES))
    where = str(hp_path)
    roles = sections_by_role(sections, where)
    data_hp, model_hp, train_hp, prune_hp = (roles[r] for r in ("dataset", "model", "training",
                                                                  "pruning"))
    pre_hp = roles.get("pretrain_training", {})
    dataset = data_hp.get("dataset_name", "")
    if dataset not in DATASETS:
        raise ConfigError(f"{where}: OpenLTH dataset {dataset!r} is not supported "
                          f"(supported: {', '.join(DATASETS)})")
    batch = int(data_hp.get("batch_size", "0") or 0)
    ipe = iterations_per_epoch(DATASETS[dataset][1], data_hp, where)
    T = steps(train_hp.get("training_steps", ""), ipe, "training_steps", where)
    k = steps(pre_hp["training_steps"], ipe, "rewinding steps", where) if pre_hp else 0
    strategy = prune_hp.get("pruning_strategy", "sparse_global")
    if strategy != "sparse_global":
        raise ConfigError(f"{where}: pruning strategy {strategy!r}; only sparse_global is mapped")
    model_name, model_options, rename = model_mapping(model_hp.get("model_name", ""))

    runs: list[_Run] = []
    levels: set[int] = set()
    for r, rep in enumerate(reps):
        for level_dir in sorted(rep.glob("level_*")):
            tail = level_dir.name.split("_", 1)[1]
            if not tail.isdigit():
                continue
            level = int(tail)
            for sub in sorted(p for p in level_dir.iterdir() if p.is_dir()):
                if sub.name == "main":
                    kind = "imp"
                else:
                    m = re.match(r"^lottery_branch_(\w+?)_[0-9a-f]{32}$", sub.name)
                    kind = BRANCH_KINDS.get(m.group(1)) if m else None
                    if kind is None:
                        log.info("skipped %s: not a main run or a mapped branch", sub)
                        continue
                files = _model_files(sub, ipe)
                run = _Run(kind, level, r, sub, files.get(k), files.get(T),
                           sub / "mask.pth" if (sub / "mask.pth").is_file() else None)
                if run.end is None or run.start is None or run.mask is None:
                    missing = "the model at T" if run.end is None else (
                        "the model at the rewind step" if run.start is None else "mask.pth")
                    raise CheckpointError(f"{sub}: {missing} is missing "
                                          f"(expected model_ep{T // ipe}_it{T % ipe}.pth and "
                                          f"model_ep{k // ipe}_it{k % ipe}.pth)")
                runs.append(run)
                levels.add(level)
    if 0 not in levels:
        raise CheckpointError(f"{run_dir}: no level_0/main run")
    n_levels = max(levels)
    for r in range(len(reps)):
        have = {run.level for run in runs if run.kind == "imp" and run.replica == r}
        if have != set(range(n_levels + 1)):
            raise CheckpointError(f"{reps[r]}: levels {sorted(have)}, expected 0..{n_levels} "
                                  "in every replicate")
    pre = reps[0] / "level_pretrain" / "main"
    init = _model_files(pre, ipe).get(0) if k > 0 else None

    control_levels = sorted({run.level for run in runs if run.kind != "imp"})
    controls = sorted({run.kind for run in runs if run.kind != "imp"})
    for kind in controls:
        for lv in control_levels:
            got = {run.replica for run in runs if run.kind == kind and run.level == lv}
            if got and got != set(range(len(reps))):
                raise CheckpointError(f"{run_dir}: branch {kind} at level {lv} exists for "
                                      f"replicates {sorted(got)} only; need all or none")
    ignore = prune_hp.get("pruning_layers_to_ignore", "")
    ignore = [rename.get(n.strip(), n.strip()) for n in ignore.split(",") if n.strip()] \
        if ignore and ignore != "None" else []
    optimizer = train_hp.get("optimizer_name", "sgd")
    settings = {
        "data": {"name": DATASETS[dataset][0]},
        "model": {"name": model_name, "options": model_options},
        "training": {  # informational: nothing is trained; OpenLTH's own hparams are in the attrs
            "optimizer": optimizer if optimizer in ("sgd", "adam") else "sgd",
            "lr": float(train_hp.get("lr", "0.1")),
            "momentum": float(train_hp.get("momentum", "0") or 0.0),
            "weight_decay": float(train_hp.get("weight_decay", "0") or 0.0),
            "batch_size": batch,
            "steps": f"{T}it",
            "milestones": [f"{steps(s, ipe, 'milestone_steps', where)}it"
                           for s in train_hp.get("milestone_steps", "").split(",") if s.strip()
                           ] if train_hp.get("milestone_steps", "None") != "None" else [],
            "gamma": float(train_hp.get("gamma", "0.1") or 0.1)
            if train_hp.get("gamma", "None") != "None" else 0.1,
            "eval_every": f"{T}it", "log_every": f"{T}it", "restore_optimizer": False,
        },
        "pruning": {"strategy": "global", "levels": n_levels, "ignore": ignore,
                    "fraction": float(prune_hp.get("pruning_fraction", "0.2"))},
        "study": {"name": f"openlth-{run_dir.name}", "rewinds": [f"{k}it"],
                  "replicas": len(reps), "record": "endpoints", "controls": controls,
                  "control_levels": control_levels},
    }
    if optimizer == "sgd" and float(settings["training"]["momentum"]) == 0:
        settings["training"]["momentum"] = 0.0
    return {"settings": settings, "runs": runs, "k": k, "T": T, "ipe": ipe, "rename": rename,
            "replicates": reps, "init": init, "hashname": run_dir.name, "hparams": sections,
            "overrides": list(overrides)}


# -- writing the store ----------------------------------------------------------------------

def import_openlth(run_dir, out, *, overrides=(), storage_options=None) -> dict:
    """Convert the OpenLTH lottery directory ``run_dir`` into a new store at ``out``.

    ``overrides`` are ``section.key=value`` settings applied on top of the mapped
    config (e.g. ``data.root=...``). Returns a summary dict (``lines`` to print).
    Everything is read and checked before the store is created, so a bad directory
    writes nothing.
    """
    from stabilitylab.config.loader import apply_overrides, build_config
    from stabilitylab.models import build_model
    from stabilitylab.store import StudyWriter
    from stabilitylab.study.context import provenance
    from stabilitylab.study.plan import all_runs
    from stabilitylab.study.resolve import resolve_study
    from stabilitylab.train.functional import StackedModel
    from stabilitylab.train.optim import state_names

    info = read_run(run_dir, overrides)
    raw = apply_overrides(info["settings"], overrides)
    cfg = build_config(raw, f"OpenLTH run {info['hashname']}")
    resolved = resolve_study(cfg, min_replicas=1)  # one imported replicate: pairs absent
    cfg = resolved.config
    if resolved.total_steps != info["T"] or resolved.rewinds != (info["k"],):
        raise ConfigError("overrides must not change training.steps or study.rewinds of an import")
    dinfo = resolved.info
    model = build_model(cfg.model, dinfo.input_shape, dinfo.num_classes,
                        generator=torch.Generator().manual_seed(0))
    stacked = StackedModel(model)
    k, T, rename = info["k"], info["T"], info["rename"]
    prunable = [s for s in stacked.param_slots if s.prunable]

    # Read and check every file first.
    loaded = {}
    zeroed = 0
    for run in info["runs"]:
        state_mask = load_state_dict(run.mask)
        mask = {}
        for s in prunable:
            src = next((o for o, ours in rename.items() if ours == s.name), s.name)
            m = state_mask.get(src, state_mask.get(s.name))
            if m is None or tuple(m.shape) != s.shape:
                raise CheckpointError(f"{run.mask}: no mask of shape {s.shape} for {src!r}")
            if not bool(((m == 0) | (m == 1)).all()):
                raise CheckpointError(f"{run.mask}: {src!r} holds values other than 0 and 1")
            mask[s.name] = m.bool()
        flat_mask = torch.ones(stacked.num_params, dtype=torch.bool)
        for s in prunable:
            flat_mask[s.offset:s.offset + s.size] = mask[s.name].flatten()
        pair = []
        for path in (run.start, run.end):
            w, b = fit_state_dict(load_state_dict(path), stacked, str(path), rename)
            zeroed += int(((w != 0) & ~flat_mask).sum())
            pair.append((torch.where(flat_mask, w, torch.zeros_like(w)), b))
        loaded[(run.kind, run.level, run.replica)] = (mask, flat_mask, pair, read_logger(run.folder))
    init_w = None
    if info["init"] is not None:
        init_w = fit_state_dict(load_state_dict(info["init"]), stacked, str(info["init"]), rename)[0]

    # Reproduce OpenLTH's masks from the previous level's final weights (same replicate).
    fraction = cfg.pruning.fraction
    ignore = set(cfg.pruning.ignore)
    reproduced, checked = True, 0
    for (kind, level, r), (mask, _, _, _) in loaded.items():
        if kind != "imp" or level == 0:
            continue
        prev_mask, _, prev_pair, _ = loaded[("imp", level - 1, r)]
        final = prev_pair[1][0]
        names = [s.name for s in prunable if s.name not in ignore
                 and s.name.rsplit(".", 1)[0] not in ignore]
        weights = {s.name: final[s.offset:s.offset + s.size].view(s.shape) for s in prunable
                   if s.name in names}
        expect = openlth_global_masks(weights, {n: prev_mask[n] for n in names}, fraction,
                                      ignored={s.name: prev_mask[s.name] for s in prunable
                                               if s.name not in names})
        checked += 1
        if not all(torch.equal(expect[n], mask[n]) for n in names):
            reproduced = False

    # Write the store.
    runs = all_runs(resolved)
    writer = StudyWriter.create(
        out, resolved, param_layout=stacked.layout(), buffer_layout=stacked.buffer_layout(),
        provenance=provenance(torch.device("cpu"), resolved, trained_here=False), runs=runs,
        optimizer_state_names=list(state_names(cfg.training)), storage_options=storage_options)
    densities = {}
    try:
        first = loaded[("imp", 0, 0)]
        writer.write_rewind_state("weights", k, first[2][0][0].numpy())
        for s in state_names(cfg.training):
            writer.write_rewind_state(s, k, np.zeros(stacked.num_params, np.float32))
        if stacked.buffer_slots:
            writer.write_rewind_buffers(k, first[2][0][1].numpy())
        write_dense(writer, first, init_w, k, T)
        for kind in sorted({key[0] for key in loaded}):
            for level in resolved.levels:
                present = [r for r in range(cfg.study.replicas) if (kind, level, r) in loaded]
                if not present:
                    continue
                union = torch.zeros(stacked.num_params, dtype=torch.bool)
                for r in present:
                    union |= loaded[(kind, level, r)][1]
                dens = [mask_density(loaded[(kind, level, r)][0]) for r in present]
                densities[f"{kind}/{level}"] = dens
                prunable_flat = torch.zeros(stacked.num_params, dtype=torch.bool)
                for s in prunable:
                    prunable_flat[s.offset:s.offset + s.size] = True
                kept = float(union[prunable_flat].float().mean()) if prunable else 1.0
                writer.write_mask(kind, level, k, union.numpy(), kept)
                for r in present:
                    write_run(writer, (kind, level, k, r), loaded[(kind, level, r)], k, T)
        writer.update_attrs({"imported_from": {
            "format": "openlth", "experiment": info["hashname"],
            "replicates": [p.name for p in info["replicates"]],
            "masked_nonzeros_zeroed": zeroed, "replicate_densities": densities,
            "masks_reproduced_by_openlth_rule": reproduced, "levels_checked": checked,
            "hparams": info["hparams"],
            "note": "endpoints only (steps 0, k, T); masks are the union over replicates"}})
        # OpenLTH replicates differ in init, data order and masks: different-init pairs.
        writer.update_attrs({"pair_noise": {kind: "init" for kind in sorted({r[0] for r in loaded})}})
    finally:
        writer.close(consolidate=True)
    n_rep = len(info["replicates"])
    lines = [(f"imported OpenLTH {info['hashname']}: "
              + (f"{n_rep} replicates" if n_rep > 1 else f"1 replicate ({info['replicates'][0].name})")
              + ", "
              f"levels 0-{cfg.pruning.levels}, rewind k={k}, T={T} "
              f"({cfg.model.name}, {cfg.data.name})")]
    lines.append("replicates are different-init pairs (OpenLTH draws each replicate's init, data "
                 "order and masks anew)" if n_rep > 1 else
                 "one replicate: the pair measures (barriers, data-order distances) are absent")
    if zeroed:
        lines.append(f"zeroed {zeroed} non-zero weights at pruned positions (OpenLTH keeps "
                     "updating pruned weights; its forward masks them)")
    if checked:
        lines.append("masks match OpenLTH's sparse_global rule (ceil(f*n)+1 pruned per level)"
                     if reproduced else "warning: some masks differ from OpenLTH's sparse_global "
                     "rule applied to the previous level's final weights")
    return {"out": str(out), "lines": lines, "reproduced": reproduced, "zeroed": zeroed}


def load_openlth_model(openlth_name: str, state, *, input_shape=None, num_classes: int = 10):
    """Our ``nn.Module`` holding an OpenLTH checkpoint of model ``openlth_name``.

    ``state`` is a state_dict or a path to one. ``input_shape`` defaults to MNIST's
    (1, 28, 28) for ``mnist_lenet_*`` and CIFAR's (3, 32, 32) otherwise.
    """
    from stabilitylab.config import ModelConfig
    from stabilitylab.models import build_model
    from stabilitylab.train.functional import StackedModel

    name, options, rename = model_mapping(openlth_name)
    if input_shape is None:
        input_shape = (1, 28, 28) if openlth_name.startswith("mnist_") else (3, 32, 32)
    label = str(state) if not isinstance(state, dict) else openlth_name
    if not isinstance(state, dict):
        state = load_state_dict(state)
    model = build_model(ModelConfig(name=name, options=options), input_shape, num_classes,
                        generator=torch.Generator().manual_seed(0))
    stacked = StackedModel(model)
    flat, buffers = fit_state_dict(state, stacked, label, rename)
    return stacked.module_at(stacked.unflatten(flat[None]),
                             stacked.unflatten_buffers(buffers[None]) if buffers.numel() else {}, 0)
