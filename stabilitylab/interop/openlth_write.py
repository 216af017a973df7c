"""Writing an OpenLTH run's files into a store: metrics from its ``logger``, the runs at k and T."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from stabilitylab.interop.openlth_hparams import MAX_LOGGER_BYTES, read_capped


def read_logger(folder: Path) -> dict[tuple[str, int], float]:
    path = folder / "logger"
    out = {}
    if not path.is_file():
        return out
    for line in read_capped(path, MAX_LOGGER_BYTES).splitlines():
        parts = line.strip().split(",")
        if len(parts) == 3:
            try:
                out[(parts[0], int(parts[1]))] = float(parts[2])
            except ValueError:
                continue
    return out


def mask_density(mask: dict[str, torch.Tensor]) -> float:
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    return kept / total if total else 1.0


def metrics_from(logger: dict, T: int, n_log: int) -> dict:
    """The store's metric rows: log steps (only 0) unknown, eval steps (0, T) from the logger."""
    def at(name):
        return np.array([logger.get((name, 0), math.nan), logger.get((name, T), math.nan)],
                        np.float32)

    nan_log = np.full(n_log, np.nan, np.float32)
    return {"train_loss": nan_log, "train_acc": nan_log, "test_loss": at("test_loss"),
            "test_acc": at("test_accuracy"), "train_eval_loss": at("train_loss"),
            "train_eval_acc": at("train_accuracy")}


def finals(logger: dict, T: int) -> dict:
    return {"test_acc": logger.get(("test_accuracy", T), math.nan),
            "test_loss": logger.get(("test_loss", T), math.nan),
            "train_eval_acc": logger.get(("train_accuracy", T), math.nan),
            "train_eval_loss": logger.get(("train_loss", T), math.nan)}


def write_run(writer, key, entry, k: int, T: int) -> None:
    _, _, ((w_k, _), (w_T, b_T)), logger = entry
    writer.record([key], k, w_k.numpy()[None])
    if T != k:
        writer.record([key], T, w_T.numpy()[None])
    metrics = metrics_from(logger, T, writer.n_log)
    writer.write_metrics(key, **metrics)
    writer.write_final(key, buffers=b_T.numpy() if writer.n_buffers else None, **finals(logger, T))
    writer.finish_run(key, "complete")


def write_dense(writer, first, init_w, k: int, T: int) -> None:
    _, _, ((w_k, _), (w_T, b_T)), logger = first
    if k > 0:
        writer.record_dense(0, (init_w if init_w is not None else torch.full_like(w_k, math.nan)
                                ).numpy())
    writer.record_dense(k, w_k.numpy())
    writer.record_dense(T, w_T.numpy())
    writer.write_dense_metrics(**metrics_from(logger, T, writer.n_log))
    writer.write_dense_final(buffers=b_T.numpy() if writer.n_buffers else None, **finals(logger, T))
    writer.finish_dense("complete")
