"""Read ``state_dict`` checkpoints written by other code, safely, and fit them to a model.

- ``.pt`` / ``.pth`` / ``.bin``: ``torch.load(weights_only=True)``, so a file holding
  pickled Python objects (anything beyond tensors and plain containers) is refused;
- ``.safetensors``: the ``safetensors`` package (optional extra ``stabilitylab[safetensors]``).

:func:`fit_state_dict` checks the keys and shapes against a model and returns the
model's flat ``param`` vector (the store's layout) and its flat buffers. Every
failure is a :class:`~stabilitylab.core.errors.CheckpointError` with one line naming the
file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stabilitylab.core.errors import CheckpointError

__all__ = ["CheckpointError", "fit_state_dict", "load_state_dict", "strip_prefix"]


def load_state_dict(path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, by name (on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(f"{path}: reading .safetensors needs the safetensors package "
                                  "(pip install 'stabilitylab[safetensors]')") from None
        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - a damaged header or truncated file
            raise CheckpointError(f"{path}: not a readable safetensors file "
                                  f"({type(exc).__name__})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - refused pickles, or not a torch file at all
            if type(exc).__name__ == "UnpicklingError":  # weights_only refused an object
                raise CheckpointError(f"{path}: holds pickled Python objects; refused (only "
                                      "tensors and plain containers load with "
                                      "weights_only=True)") from None
            first = str(exc).splitlines()[0][:120] if str(exc) else ""
            raise CheckpointError(f"{path}: not a readable torch file ({type(exc).__name__}"
                                  + (f": {first})" if first else ")")) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: expected a state_dict (a mapping of names to tensors), "
                              f"got {type(state).__name__}")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entry {bad[0]!r} is not a named tensor")
    names = list(state)
    if all(n.startswith("module.") for n in names):  # saved from DataParallel
        state = {n[len("module."):]: t for n, t in state.items()}
    return state


def fit_state_dict(state: dict[str, torch.Tensor], stacked, label: str,
                   rename: dict[str, str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat params (P,), flat buffers (Q,)) of ``state`` in ``stacked``'s layout.

    ``rename`` maps the file's names to the model's. Integer buffers
    (``num_batches_tracked``) are optional and ignored.
    """
    if rename:
        state = {rename.get(k, k): v for k, v in state.items()}
    want = {s.name: s.shape for s in (*stacked.param_slots, *stacked.buffer_slots)}
    optional = {n for n, b in stacked.template.named_buffers() if not b.is_floating_point()}
    missing = [n for n in want if n not in state]
    if missing:
        raise CheckpointError(f"{label}: missing key {missing[0]!r} (the model has "
                              f"{len(want)} tensors, the file {len(state)})")
    unexpected = [n for n in state if n not in want and n not in optional]
    if unexpected:
        raise CheckpointError(f"{label}: unexpected key {unexpected[0]!r}, not in the model")
    for n, shape in want.items():
        if tuple(state[n].shape) != tuple(shape):
            raise CheckpointError(f"{label}: {n!r} has shape {tuple(state[n].shape)}, the model "
                                  f"expects {tuple(shape)}")
        if not state[n].is_floating_point():
            raise CheckpointError(f"{label}: {n!r} has dtype {state[n].dtype}, expected floats")
        check_finite(state[n], n, label)  # parameters and buffers (BN statistics) alike
    params = {s.name: state[s.name].float()[None] for s in stacked.param_slots}
    flat = stacked.flatten(params)[0]
    if stacked.buffer_slots:
        buffers = stacked.flatten_buffers({s.name: state[s.name].float()[None]
                                           for s in stacked.buffer_slots})[0]
    else:
        buffers = torch.zeros(0)
    return flat, buffers


def check_finite(tensor: torch.Tensor, name: str, label: str) -> None:
    """CheckpointError naming ``name`` unless every value of ``tensor`` is finite. A NaN
    BatchNorm statistic poisons every interpolated model (0 * NaN is NaN) and argmax over
    NaN logits still yields a finite-looking error, so inputs are refused, never measured."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise CheckpointError(f"{label}: tensor {name!r} holds {bad} non-finite value"
                              f"{'' if bad == 1 else 's'} (NaN or inf)")


def strip_prefix(state: dict, prefix: str | None, names: list[str], label: str) -> dict:
    """``state`` with ``prefix`` removed from its keys (only the keys with it are kept);
    without ``prefix``, one is detected when the model's names appear under a common
    prefix (e.g. Lightning's ``model.`` for a LightningModule's ``self.model``)."""
    if prefix:
        kept = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not kept:
            raise CheckpointError(f"{label}: no key starts with prefix {prefix!r}")
        return kept
    if all(n in state for n in names):
        return state
    first = names[0]
    for key in state:
        if key.endswith("." + first):
            cand = key[:-len(first)]
            if all(cand + n in state for n in names):
                return {k[len(cand):]: v for k, v in state.items() if k.startswith(cand)}
    return state  # fit_state_dict names the first missing key
