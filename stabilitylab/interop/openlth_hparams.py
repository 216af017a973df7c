"""OpenLTH's ``hparams.log``, read by field names, and its model names mapped to ours.

OpenLTH writes ``hparams.log`` as sections of ``    * field => value`` lines under a
title line. The titles vary between versions and code paths: the pruning section of a
``lottery`` run is titled "Pruning Hyperparameters" in its logs, while its source also
knows "Hyperparameters for Sparse Global Pruning". So a section's role is read from the
fields it holds, not from its title:

- dataset: ``dataset_name`` and ``batch_size``;
- model: ``model_name``;
- training: ``optimizer_name`` and ``training_steps``;
- pruning: ``pruning_strategy``.

Only the pretraining copies of the dataset and training sections are told apart by
their title (it contains "pretrain"; their fields are the same).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from stabilitylab.core.errors import CheckpointError, ConfigError

# OpenLTH's text files are small (hparams.log ~2 KB; a logger ~100 KB for 160 epochs):
# a bigger one is not OpenLTH's, and reading it whole would cost seconds and gigabytes.
MAX_HPARAMS_BYTES = 1 << 20
MAX_LOGGER_BYTES = 64 << 20


def read_capped(path: Path, limit: int) -> str:
    """The text of ``path``; one-line CheckpointError when it is larger than ``limit`` bytes."""
    size = path.stat().st_size
    if size > limit:
        raise CheckpointError(f"{path}: {size} bytes, more than the {limit} an OpenLTH "
                              f"{path.name} can have; refused")
    with path.open("rb") as f:
        return f.read(limit + 1)[:limit].decode("utf-8", errors="replace")


ROLES = {"dataset": ("dataset_name", "batch_size"), "model": ("model_name",),
         "training": ("optimizer_name", "training_steps"), "pruning": ("pruning_strategy",)}
REQUIRED = ("dataset", "model", "training", "pruning")


def parse_hparams(text: str) -> dict[str, dict[str, str]]:
    """``hparams.log`` as ``{section title: {field: value}}`` (values as written)."""
    sections: dict[str, dict[str, str]] = {}
    current = None
    for line in text.splitlines():
        if not line.strip():
            continue
        m = re.match(r"^\s+\*\s+(\w+)\s+=>\s*(.*)$", line)
        if m and current is not None:
            sections[current][m.group(1)] = m.group(2).strip()
        elif not line.startswith(" "):
            current = line.strip()
            sections[current] = {}
    return sections


def sections_by_role(sections: dict[str, dict[str, str]], where: str) -> dict[str, dict[str, str]]:
    """``{role: fields}`` for the roles of the module doc, plus ``pretrain_dataset`` and
    ``pretrain_training`` when present. A missing required role is a one-line error."""
    out: dict[str, dict[str, str]] = {}
    for title, fields in sections.items():
        pre = "pretrain" in title.lower()
        for role, needs in ROLES.items():
            if all(f in fields for f in needs):
                key = f"pretrain_{role}" if pre and role in ("dataset", "training") else role
                out.setdefault(key, fields)
    for role in REQUIRED:
        if role not in out:
            raise CheckpointError(f"{where}: hparams.log has no section with the field(s) "
                                  f"{', '.join(ROLES[role])} (the {role} hyperparameters)")
    return out


def iterations_per_epoch(n_train: int, dataset: dict[str, str], where: str) -> int:
    """OpenLTH's iterations per epoch: ceil(N / batch), N after ``subsample_fraction``
    (OpenLTH keeps ceil(N · fraction) examples)."""
    batch = int(dataset.get("batch_size", "0") or 0)
    if batch < 1:
        raise CheckpointError(f"{where}: no batch_size")
    fraction = dataset.get("subsample_fraction")
    if fraction and fraction != "None":
        n_train = math.ceil(n_train * float(fraction))
    return math.ceil(n_train / batch)


def steps(text: str, ipe: int, field_name: str, where: str) -> int:
    """An OpenLTH step string (``160ep``, ``2000it``, ``2ep10it``) in iterations."""
    m = re.fullmatch(r"(?:(\d+)ep)?(?:(\d+)it)?", text.strip())
    if not text.strip() or m is None or (m.group(1) is None and m.group(2) is None):
        raise CheckpointError(f"{where}: {field_name} {text!r} is not a step like 160ep or 2000it")
    return int(m.group(1) or 0) * ipe + int(m.group(2) or 0)


def model_mapping(openlth_name: str) -> tuple[str, dict, dict[str, str]]:
    """(our model.name, model.options, rename OpenLTH key -> ours) for an OpenLTH model name.

    ``mnist_lenet_300_100`` -> ``lenet_300_100`` (other ``mnist_lenet_*`` -> ``mlp``),
    ``cifar_resnet_D[_W]`` -> ``resnetD`` (width W/16), ``cifar_vgg_D`` -> ``vggD``.
    """
    parts = openlth_name.split("_")
    if openlth_name.startswith("mnist_lenet_") and all(p.isdigit() for p in parts[2:]):
        widths = [int(p) for p in parts[2:]]
        rename = {f"fc_layers.{i}.{t}": f"hidden.{i}.{t}" for i in range(len(widths))
                  for t in ("weight", "bias")}
        if widths == [300, 100]:
            return "lenet_300_100", {}, rename
        return "mlp", {"hidden": widths}, rename
    if openlth_name.startswith("cifar_resnet_") and all(p.isdigit() for p in parts[2:]) \
            and len(parts) in (3, 4) and int(parts[2]) in (20, 32, 56):
        width = int(parts[3]) if len(parts) == 4 else 16
        if width % 16:
            raise ConfigError(f"model {openlth_name}: width {width} is not a multiple of 16")
        return f"resnet{parts[2]}", ({"width": width // 16} if width != 16 else {}), {}
    if openlth_name.startswith("cifar_vgg_") and len(parts) == 3 and parts[2] in ("11", "13", "16", "19"):
        return f"vgg{parts[2]}", {}, {}
    raise ConfigError(f"OpenLTH model {openlth_name!r} has no stabilitylab counterpart; "
                      "supported: mnist_lenet_*, cifar_resnet_20/32/56[_W], cifar_vgg_11/13/16/19")
