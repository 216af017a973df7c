"""The study configuration: frozen dataclasses, one per concern.

Every field carries its help text in ``metadata["help"]``. Values are checked by
:func:`stabilitylab.config.checks.check_config` (types, ranges, choices) and, against the
registries and the dataset sizes, by :func:`stabilitylab.study.resolve.resolve_study`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _f(default, help: str):
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults (configs are frozen)")
    return field(default=default, metadata={"help": help})


# ``options`` tables are dicts: a Config is frozen but not hashable.


@dataclass(frozen=True)
class DataConfig:
    name: str = _f("mnist1d", "dataset: a shipped name (`stabilitylab datasets` lists them),"
                   " package.module:function or an entry point")
    root: str = _f("", "record only: data root for torchvision sets and the mnist1d cache "
                   "('' = $STABILITYLAB_DATA or ~/.cache/stabilitylab/datasets)")
    num_samples: int = _f(5000, "examples generated in all, for a dataset that reads it (mnist1d:"
                           " 80% train, 20% test)")
    train_eval_size: int = _f(1000, "size of the fixed train subset used for train-set error")
    augment: bool = _f(False, "random flip + crop-with-padding-4 (CIFAR recipes), batched on device")
    options: dict = field(default_factory=dict, metadata={
        "help": "keyword arguments of a plugin dataset's loader (a free table)"})


@dataclass(frozen=True)
class ModelConfig:
    name: str = _f("conv1d", "model: a shipped name (`stabilitylab models` lists them),"
                   " package.module:function or an entry point")
    dropout: float = _f(0.0, "dropout probability before each hidden linear layer (0 = off)")
    options: dict = field(default_factory=dict, metadata={
        "help": "keyword arguments of the model's builder (a free table; `stabilitylab models`"
                " gives each builder's options)"})


@dataclass(frozen=True)
class TrainingConfig:
    optimizer: str = _f("sgd", "sgd, adam, adamw or radam")
    lookahead: bool = _f(False, "wrap the optimizer in Lookahead (radam + lookahead = Ranger)")
    lookahead_steps: int = _f(5, "Lookahead: fast steps per slow update (k)")
    lookahead_alpha: float = _f(0.5, "Lookahead: slow-weight step size (alpha)")
    lr: float = _f(0.1, "peak learning rate")
    momentum: float = _f(0.9, "sgd momentum (0 = plain SGD)")
    nesterov: bool = _f(False, "sgd: Nesterov momentum")
    beta1: float = _f(0.9, "adam-family first-moment decay")
    beta2: float = _f(0.999, "adam-family second-moment decay")
    eps: float = _f(1e-8, "adam-family epsilon")
    weight_decay: float = _f(0.0, "L2 weight decay (decoupled for adamw)")
    batch_size: int = _f(100, "examples per step, per replica")
    steps: str = _f("1500it", "training length T, e.g. '3000it', '160ep', '1ep50it'")
    warmup: str = _f("0it", "linear learning-rate warmup length (0it = none)")
    milestones: tuple[str, ...] = _f((), "steps at which the learning rate is multiplied by gamma")
    gamma: float = _f(0.1, "learning-rate factor at each milestone")
    eval_every: str = _f("500it", "test/train-subset evaluation period (also at the end)")
    log_every: str = _f("10it", "period of the recorded train loss/accuracy")
    restore_optimizer: bool = _f(
        True,
        "on rewind, restore the optimizer state at k (True) or start it fresh as OpenLTH does",
    )
    precision: str = _f("fp32", "fp32 (exact, default) or bf16 (CUDA autocast)")
    compile: str = _f(
        "auto",
        "the training step: 'on' (torch.compile'd fused step), 'off' (eager reference) or"
        " 'auto' (compiled for groups large enough to repay the compilation)",
    )


@dataclass(frozen=True)
class PruningConfig:
    strategy: str = _f("global", "global or layerwise magnitude pruning")
    fraction: float = _f(0.5, "fraction of the remaining prunable weights removed per level")
    levels: int = _f(2, "IMP levels L (0 = dense copies only: the cheap rewind-point study)")
    ignore: tuple[str, ...] = _f((), "layer names never pruned; 'output' means the last layer")
    pai_from: str = _f("init", "pruning-at-init controls score W_0 ('init') or W_k ('rewind')")


@dataclass(frozen=True)
class StudyConfig:
    name: str = _f("mnist1d-default", "a label for the study")
    rewinds: tuple[str, ...] = _f(
        ("0it", "25it", "50it", "100it", "200it", "400it"), "rewind points k"
    )
    replicas: int = _f(3, "data-order replicas R per (level, rewind), >= 2")
    seed: int = _f(0, "master seed: init, masks and data orders all derive from it")
    controls: tuple[str, ...] = _f(
        ("random_prune", "reinit"),
        "control kinds trained beside IMP at the control levels (`stabilitylab kinds` lists"
        " them)",
    )
    control_levels: tuple[int, ...] = _f((), "levels with controls (empty = the last level)")
    noise: tuple[str, ...] = _f(
        ("data_order",),
        "what differs between copies: data_order (each copy its own data order) and the"
        " noise kinds (`stabilitylab kinds` lists them); each noise kind beyond data_order"
        " trains its own copies",
    )
    noise_levels: tuple[int, ...] = _f((), "levels with the noise copies beyond data_order"
                                     " (empty = every level)")
    perturbation: str = _f("gaussian", "perturb copies: 'gaussian' (‖δ‖ = epsilon·‖W_k‖),"
                           " 'bit_flip' (one ulp of one weight), 'init_scale' (per weight"
                           " epsilon·σ_layer·N(0,1), σ_layer its layer's init std),"
                           " 'single_weight' (one weight ± epsilon·σ_layer) or 'batch' (a step"
                           " along one batch's gradient, as large as init_scale noise)")
    epsilon: float = _f(1e-6, "size of the perturbation: ‖δ‖/‖W_k‖ (gaussian), or relative to"
                        " each layer's init scale (init_scale, single_weight, batch)")
    perturb_fraction: float = _f(1.0, "init_scale and batch: perturb a seeded random fraction"
                                 " of the surviving weights (1 = all)")
    perturb_modules: tuple[str, ...] = _f((), "perturb only these modules or parameters"
                                          " (e.g. 'conv1', 'fc.bias'); empty = all")
    perturb_reference: bool = _f(False, "replica 0 of the perturbed kinds starts at W_k itself,"
                                 " so pairs (0, j) compare a perturbed copy with the unperturbed")
    record: str = _f(
        "dense_early",
        "recorded steps: 'dense_early', 'every:N', 'list:0,10,...' or 'endpoints'"
        " (0, the rewind points and T are always recorded)",
    )
    record_points: int = _f(100, "dense_early: points from the last rewind point to T")
    device: str = _f("auto", "auto, cpu or cuda")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    study: StudyConfig = field(default_factory=StudyConfig)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "pruning": PruningConfig,
    "study": StudyConfig,
}
