"""The optimizers of ``training.optimizer``: one file each, registering itself.

Every module of this package other than :mod:`~stabilitylab.train.optimizers.base` is
imported here and calls :func:`~stabilitylab.train.optimizers.base.register` with its
:class:`~stabilitylab.train.optimizers.base.Optimizer`: its state names, its one update
rule (run eagerly and compiled), the ``torch.optim`` class it must match, its scalar
columns and the ``training.*`` fields it reads. Adding an optimizer is adding a file here.
"""

from __future__ import annotations

import importlib
import pkgutil

from stabilitylab.train.optimizers.base import (
    OPTIMIZERS,
    SCALAR_COLUMNS,
    Optimizer,
    register,
    state_names,
    step_scalars,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["OPTIMIZERS", "SCALAR_COLUMNS", "Optimizer", "register", "state_names",
           "step_scalars"]
