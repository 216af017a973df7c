"""What every task of a study needs, built once per process from a config.

:func:`build_model_and_data` rebuilds a study's model template and dataset from its
config; :class:`TaskContext` (the local ``record`` and every cluster worker) adds the
init weights, the prunable layers and the seeds. :func:`context_for` keeps one context
per process so that the tasks a worker runs share it.
"""

from __future__ import annotations

import datetime
import json
import platform
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from stabilitylab.config import config_to_dict
from stabilitylab.core.device import resolve_device
from stabilitylab.core.seeds import generator
from stabilitylab.study.plan import Seeds, all_runs
from stabilitylab.study.resolve import resolve_study, study_from_dict
from stabilitylab.train.functional import StackedModel
from stabilitylab.train.optim import state_names


@dataclass
class ModelAndData:
    """A study's model and data, rebuilt from its config."""

    build: Callable[[int], torch.nn.Module]  # seed -> a freshly initialized model
    stacked: StackedModel  # the model template (built with ``template_seed``)
    template: torch.nn.Module
    data: object  # stabilitylab.data.Dataset, on ``device``
    device: torch.device


def build_model_and_data(cfg, device, *, template_seed: int, data_root=None,
                         check: Callable[[StackedModel, torch.nn.Module], None] | None = None,
                         info=None) -> ModelAndData:
    """The model builder, a template model (initialized from ``template_seed``) and the
    dataset on ``device`` (a ``torch.device``). ``data_root``: where the dataset is (None:
    the config's ``data.root``, else ``$STABILITYLAB_DATA`` or the default).
    ``check(stacked, template)`` runs before the data is loaded, so a config it refuses
    stops before any data is read. ``info``: the dataset's
    :class:`~stabilitylab.data.registry.DatasetInfo` when known (a resolved Study's)."""
    from stabilitylab.data import load_dataset
    from stabilitylab.data.registry import dataset_info
    from stabilitylab.models import build_model

    if info is None:
        info = dataset_info(cfg.data)

    def build(seed: int) -> torch.nn.Module:
        return build_model(cfg.model, info.input_shape, info.num_classes,
                           generator=generator(seed))

    template = build(template_seed)
    stacked = StackedModel(template)
    if check is not None:
        check(stacked, template)
    kw = {} if data_root is None else {"root": data_root}
    data = load_dataset(cfg.data, device, info=info, **kw)
    return ModelAndData(build, stacked, template, data, device)


@dataclass
class RewindPoint:
    """The dense run's state at step k: what every run rewound to k starts from."""

    params: dict[str, torch.Tensor]  # unstacked
    buffers: dict[str, torch.Tensor]
    opt_state: dict[str, dict[str, torch.Tensor]]


class TaskContext:
    """The model template, the data on the device and the study's seeds.

    Building it loads the dataset, so a missing dataset stops ``record`` before
    anything is written; it also checks ``pruning.ignore`` against the model.
    """

    def __init__(self, study, device: str | torch.device | None = None):
        """``study``: a resolved :class:`~stabilitylab.config.Study` (a Config is resolved)."""
        from stabilitylab.models import output_layer_name

        self.resolved = resolve_study(study)
        self.cfg = cfg = self.resolved.config
        self.seeds = Seeds(cfg.study.seed)
        device = resolve_device(str(device or cfg.study.device))

        def check_ignore(stacked, template):
            ignored = {output_layer_name(template) if n == "output" else n
                       for n in cfg.pruning.ignore}
            unknown = ignored - set(stacked.param_names) - {
                n.rsplit(".", 1)[0] for n in stacked.param_names}
            if unknown:
                from stabilitylab.core.errors import ConfigError

                raise ConfigError(f"pruning.ignore: no layer named {min(unknown)!r}; layers: "
                                  + ", ".join(stacked.prunable_names))
            self.prunable = [n for n in stacked.prunable_names
                             if n not in ignored and n.rsplit(".", 1)[0] not in ignored]

        # The template is initialized from the init seed: it is W_0 itself.
        parts = build_model_and_data(cfg, device, template_seed=self.seeds.init,
                                     check=check_ignore, info=self.resolved.info)
        self.device = parts.device
        self.build = parts.build
        self.stacked = parts.stacked
        self.template = parts.template  # an nn.Module of the architecture (holding W_0)
        self.init_params, self.init_buffers = self.stacked.stack([parts.template])
        self.data = parts.data
        self.augment = None
        if cfg.data.augment:
            from stabilitylab.data.augment import random_flip_crop_replicas

            self.augment = random_flip_crop_replicas
        self.opt_state_names = list(state_names(cfg.training))
        self._weights: dict[int, tuple[dict, dict]] = {}

    # -- models ---------------------------------------------------------------------------
    @property
    def init_weights(self) -> dict[str, torch.Tensor]:
        """W_0, unstacked."""
        return {n: t[0] for n, t in self.init_params.items()}

    def model_weights(self, seed: int) -> tuple[dict, dict]:
        """(params, buffers), unstacked, of a model freshly initialized from ``seed``
        (kept for later tasks of this process)."""
        if seed not in self._weights:
            params, buffers = self.stacked.stack([self.build(seed)])
            self._weights[seed] = ({n: t[0] for n, t in params.items()},
                                   {n: t[0] for n, t in buffers.items()})
        return self._weights[seed]

    # -- what a new store is created with -----------------------------------------------
    def store_spec(self) -> dict:
        """Keyword arguments of ``StudyWriter.create`` (besides url/resolved/storage)."""
        return {"param_layout": self.stacked.layout(), "buffer_layout": self.stacked.buffer_layout(),
                "provenance": provenance(self.device, self.resolved), "runs": all_runs(self.resolved),
                "optimizer_state_names": list(self.opt_state_names)}

    # -- flat <-> named ------------------------------------------------------------------
    def slot(self, name):
        return self.stacked.param_slots[self.stacked.param_names.index(name)]

    def unflat(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t[0] for n, t in self.stacked.unflatten(flat[None]).items()}

    def flat(self, tensors: dict) -> np.ndarray:
        return self.stacked.flatten({n: t[None] for n, t in tensors.items()})[0].cpu().numpy()

    def flat_buffers(self, tensors: dict) -> np.ndarray:
        if not self.stacked.buffer_slots:
            return np.zeros(0, np.float32)
        return self.stacked.flatten_buffers({n: t[None] for n, t in tensors.items()})[0].cpu().numpy()

    def mask_flat(self, masks: dict[str, torch.Tensor]) -> np.ndarray:
        ones = {n: torch.ones(s.shape, dtype=torch.float32) for n, s in
                zip(self.stacked.param_names, self.stacked.param_slots)}
        for n, m in masks.items():
            ones[n] = m.float()
        return self.flat(ones) > 0.5


def cpu_description() -> str:
    """This machine's CPU model and the vector instruction set torch's kernels use here,
    e.g. ``"Intel(R) Xeon(R) Processor, AVX512"``. Training is chaotic, so rounding that
    differs between kernels for AVX2 and AVX-512 ends in visibly different accuracies and
    barriers: the store names the CPU so that a reader can tell why two machines disagree."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    return f"{model}, {capability}" if capability else model


def provenance(device: torch.device, study, *, trained_here: bool = True) -> dict:
    """What a new store records about its making (``study``: a resolved Study).
    ``trained_here``: the weights are computed by this process (``record``), so the device
    names the CPU model or GPU; imports of finished checkpoints pass False."""
    import xarray
    import zarr

    from stabilitylab.core.version import __version__

    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    elif device.type == "cpu" and trained_here:
        name += f" ({cpu_description()})"
    return {
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "stabilitylab": __version__, "torch": torch.__version__,
            "zarr": zarr.__version__, "xarray": xarray.__version__, "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "device": name,
        "seed": study.config.study.seed,
        "study_id": study.id,
        "config": config_to_dict(study.config),
    }


_CONTEXTS: dict[tuple[str, str], TaskContext] = {}
_CONTEXT_LOCK = threading.Lock()


def context_for(cfg_dict: dict, device: str | None) -> TaskContext:
    """A :class:`TaskContext` for this study, reused by later tasks in this process."""
    key = (json.dumps(cfg_dict, sort_keys=True), str(device))
    with _CONTEXT_LOCK:
        ctx = _CONTEXTS.get(key)
        if ctx is None:
            _CONTEXTS.clear()  # keep one study's data on the device, not every study's
            ctx = _CONTEXTS[key] = TaskContext(study_from_dict(cfg_dict), device)
        return ctx
