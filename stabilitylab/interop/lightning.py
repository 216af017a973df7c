"""A PyTorch Lightning callback that records training into a study store.

    pip install 'stabilitylab[lightning]'

    rec = stabilitylab.Recorder("runs/mine.zarr", net, study={...})
    for r in range(2):
        trainer = lightning.Trainer(max_steps=200, callbacks=[StabilityLabCallback(rec, replica=r)])
        trainer.fit(LitModel(copy.deepcopy(net), seed=r), loader_r)
    rec.close()

The callback logs the LightningModule's weights at step 0 (train start) and after
every optimizer step (``trainer.global_step``); :class:`~stabilitylab.Recorder` keeps
the steps of ``study.record`` and skips the rest. At the end of training it marks the
copy complete. The module's attribute prefix (``model.`` for ``self.model``) is
stripped when the recorder's model names appear under it (or pass ``prefix=``).
"""

from __future__ import annotations

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - the older package name
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError:
        raise ImportError("the Lightning callback needs PyTorch Lightning: "
                          "pip install 'stabilitylab[lightning]'") from None

__all__ = ["StabilityLabCallback"]


class StabilityLabCallback(Callback):
    """Logs one copy (``replica`` of ``kind`` at ``level``, rewind ``rewind``) into ``recorder``."""

    def __init__(self, recorder, *, replica: int = 0, kind: str = "imp", level: int = 0,
                 rewind: int | None = None, prefix: str | None = None, finish: bool = True):
        self.recorder = recorder
        self.at = {"replica": replica, "kind": kind, "level": level, "rewind": rewind}
        self.prefix = prefix
        self.finish = finish
        self._last = -1

    def _log(self, trainer, pl_module) -> None:
        step = trainer.global_step
        if trainer.is_global_zero and step != self._last:  # (accumulating batches: same step)
            self.recorder.log(step, pl_module.state_dict(), prefix=self.prefix, **self.at)
            self._last = step

    def on_train_start(self, trainer, pl_module) -> None:
        self._log(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._log(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.finish and trainer.is_global_zero:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                       if k in ("test_acc", "test_loss") and v.numel() == 1}
            self.recorder.finish(**self.at, **metrics)
