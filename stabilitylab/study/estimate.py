"""What a study will cost, from its config alone: runs, store size, memory, replica-steps.

:func:`estimate` counts without materializing anything (no list of runs, no model
weights: the model is built on PyTorch's ``meta`` device, and one forward pass there
gives the activation sizes), in time linear in the number of rewind points.
:func:`check_limits` refuses, with one line naming the estimate and the limit, a study
that cannot fit this machine (free memory, free disk) or exceeds ``max_store_gb``.
``record --dry-run`` prints :func:`plan_lines`.

The sizes are upper bounds of the uncompressed data: the store is usually 1.3-6x
smaller on disk (see docs/store-schema.md, Codecs), training memory somewhat smaller.
"""

from __future__ import annotations

import bisect
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from stabilitylab.core.errors import ResourceError
from stabilitylab.study.kinds import kinds_at

DEFAULT_MAX_STORE_GB = 100.0
GB = 1e9


@dataclass(frozen=True)
class Estimate:
    n_params: int
    n_buffers: int
    n_runs: int
    n_tasks: int
    n_record_steps: int
    largest_group: int  # runs trained together in the widest task
    replica_steps: int
    store_bytes: int  # uncompressed upper bound
    train_bytes: int  # on the training device: the widest group, plus the data
    host_bytes: int  # the store writer's buffers (plus everything, on cpu)
    data_bytes: int


REAL_FORWARD_BYTES = 64 * 2**20  # models up to this many parameter bytes run the size forward for real


def _model_size(cfg, info) -> tuple[int, int, int]:
    """(parameters, floating buffer values, activation values per example) of the model."""
    import torch

    from stabilitylab.models import build_model

    model = build_model(cfg.model, info.input_shape, info.num_classes, device="meta")
    P = sum(p.numel() for p in model.parameters())
    Q = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    acts = [0]

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            acts[0] += output.numel()

    device = "meta"
    if (P + Q) * 4 <= REAL_FORWARD_BYTES:  # small enough: one real example on the CPU, since a
        # meta forward imports torch._dynamo (~1.3 s here; torch's decompositions of cat and
        # others are decorated by it) and that is the largest part of a small study's startup
        with torch.random.fork_rng(devices=[]):  # its initialization leaves no trace
            model = build_model(cfg.model, info.input_shape, info.num_classes, device="cpu")
        model.train(False)  # (BatchNorm refuses a batch of one in training mode; same shapes)
        device = "cpu"
    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(torch.zeros((1, *info.input_shape), device=device))
    except Exception:  # noqa: BLE001 - a model the meta device cannot run: no activation term
        acts[0] = 0
    finally:
        for h in handles:
            h.remove()
    return int(P), int(Q), int(acts[0])


def estimate(resolved, rewinds_per_task: int | None = 0) -> Estimate:
    """Sizes of the study ``resolved`` (see the module docstring)."""
    from stabilitylab.data.registry import dataset_info
    from stabilitylab.store import schema as S
    from stabilitylab.train.optim import state_names

    cfg = resolved.config
    s, t = cfg.study, cfg.training
    info = resolved.info if resolved.info is not None else dataset_info(cfg.data)
    P, Q, acts = _model_size(cfg, info)
    R = int(s.replicas)
    T = int(resolved.total_steps)
    ks = list(resolved.rewinds)
    K = len(ks)
    steps = list(resolved.record_steps)
    n_steps = len(steps)
    kinds = [len(kinds_at(resolved, lv)) for lv in resolved.levels]  # kinds trained per level
    n_runs = R * K * sum(kinds)
    per_task = int(rewinds_per_task or 0) or K
    n_tasks = 1 + len(resolved.levels) * math.ceil(K / per_task)
    largest = R * max(kinds) * min(per_task, K)
    sum_T_minus_k = T * K - sum(ks)
    replica_steps = T + R * sum(kinds) * sum_T_minus_k

    # store: each run's weights from the chunk holding its rewind step to T, plus the rest
    c = S.default_step_chunk(n_steps, P)
    stored_rows = sum(n_steps - (bisect.bisect_left(steps, k) // c) * c for k in ks)
    n_states = len(S.state_list(state_names(t)))
    n_log, n_eval = len(resolved.log_steps), len(resolved.eval_steps)
    per_run_metrics = 4 * (2 * n_log + 4 * n_eval + 4 + Q) + 9
    store = (4 * P * R * sum(kinds) * stored_rows          # weights
             + n_runs * per_run_metrics                    # metrics, finals, status
             + len(resolved.kinds) * len(resolved.levels) * K * (P + 4)  # masks, density
             + 4 * P * n_steps + 4 * (2 * n_log + 4 * n_eval + Q)  # the dense run
             + 4 * K * (P * n_states + Q)                  # rewind states
             + 8 * (n_steps + n_log + n_eval + K + R + P + Q))  # coordinates

    # memory: the widest group's weights, gradients, masks, optimizer states and update
    # temporaries (~4 + states copies of P), its activations (forward + backward), the data
    group_bytes = 4 * largest * (P * (4 + n_states) + Q) \
        + 4 * 3 * largest * int(t.batch_size) * acts
    n_examples = info.train_size(cfg.data) + info.test_size(cfg.data)
    data = 4 * n_examples * math.prod(info.input_shape) * (2 if cfg.data.name == "mnist1d" else 1)
    writer = 4 * largest * c * P + 32 * 4 * c * P  # one buffered chunk per run + the queue
    return Estimate(P, Q, n_runs, n_tasks, n_steps, largest, replica_steps, store,
                    group_bytes + data, writer, data)


def human(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}" if n < 1e15 else f"{n / size:.3e} {unit}"
    return f"{int(n)} B"


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation on this host (MemAvailable)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _free_disk(out) -> tuple[int, Path] | None:
    from stabilitylab.store.schema import local_path

    path = local_path(out) if isinstance(out, (str, os.PathLike)) else None
    if path is None:
        return None
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free, p
    except OSError:
        return None


def check_limits(est: Estimate, out, *, device: str = "cpu", max_store_gb: float | None = None,
                 new_store: bool = True) -> None:
    """ResourceError (one line: estimate and limit) unless the study fits."""
    cap = DEFAULT_MAX_STORE_GB if max_store_gb is None else float(max_store_gb)
    if not cap > 0:
        raise ResourceError(f"--max-store-gb: must be > 0, got {max_store_gb}")
    if new_store:
        if est.store_bytes > cap * GB:
            raise ResourceError(f"estimated store size {human(est.store_bytes)} (uncompressed) "
                                f"exceeds --max-store-gb {cap:g}; raise it to record anyway")
        free = _free_disk(out)
        if free is not None and est.store_bytes / 6 > free[0]:  # best compression measured
            raise ResourceError(f"estimated store size {human(est.store_bytes)} (uncompressed, at "
                                f"least {human(est.store_bytes / 6)} compressed) exceeds the "
                                f"{human(free[0])} free on {free[1]}")
    if device.startswith("cuda"):
        try:
            import torch

            free_gpu = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None
        except Exception:  # noqa: BLE001
            free_gpu = None
        if free_gpu is not None and est.train_bytes > free_gpu:
            raise ResourceError(f"estimated training memory {human(est.train_bytes)} (widest group "
                                f"of {est.largest_group} runs, plus the data) exceeds the "
                                f"{human(free_gpu)} free on the GPU; use --rewinds-per-task 1 "
                                "or fewer replicas")
        host = est.host_bytes
    else:
        host = est.host_bytes + est.train_bytes
    mem = available_memory()
    if mem is not None and host > mem:
        raise ResourceError(f"estimated memory {human(host)} (widest group of {est.largest_group} "
                            f"runs, data {human(est.data_bytes)}, store buffers) exceeds the "
                            f"{human(mem)} available on this machine")


def plan_lines(resolved, est: Estimate, rewinds_per_task: int | None = 0) -> list[str]:
    """What ``record --dry-run`` prints: the plan, then the estimates."""
    cfg = resolved.config
    K = len(resolved.rewinds)
    per_task = int(rewinds_per_task or 0) or K
    ks = list(resolved.rewinds)
    shown = ", ".join(map(str, ks)) if K <= 12 else f"{ks[0]}, {ks[1]}, ..., {ks[-1]} ({K} points)"
    lines = [
        f"study {cfg.study.name}: T={resolved.total_steps} steps, rewind points k = {shown}, "
        f"{cfg.study.replicas} replicas, levels 0..{resolved.levels[-1]}"
        + (f", controls {', '.join(cfg.study.controls)} at level"
           f"{'s' if len(resolved.control_levels) > 1 else ''} "
           f"{', '.join(map(str, resolved.control_levels))}" if resolved.control_levels else ""),
        (f"groups: {est.n_tasks} tasks (dense pretraining, then {len(resolved.levels)} levels x "
        f"{math.ceil(K / per_task)} groups of up to {per_task} rewind points); the widest trains "
        f"{est.largest_group} runs together"),
        f"runs: {est.n_runs} + the dense run; recorded steps per run: {est.n_record_steps}",
        f"model: {est.n_params} parameters, {est.n_buffers} buffer values",
        f"compute: {est.replica_steps} replica-steps",
        f"store: at most {human(est.store_bytes)} uncompressed",
        (f"memory: about {human(est.train_bytes)} for training (data {human(est.data_bytes)}), "
        f"{human(est.host_bytes)} of store buffers"),
    ]
    return lines
