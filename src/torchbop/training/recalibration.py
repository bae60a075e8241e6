r"""Batch-norm recalibration: recompute the running statistics over the training set with the weights evaluated.

**Why.** In training mode batch norm normalizes with the batch's own statistics and keeps exponential running
averages (torch momentum 0.01 in the Keras-style ``ShiftBatchNorm``: about the last hundred batches) for evaluation.
While Bop still flips thousands of binary weights per epoch, the statistics of the pre-activations move with them, and
the running averages describe the network of some hundred steps ago. Measured on the MNIST BNN after one epoch (batch
100, gamma 1e-3, issue 23): test accuracy with the running averages 0.55-0.96 over 5 seeds; the same networks with
the statistics recomputed over the training set reached 0.972-0.975. Larq's Keras model shows the same spread.

**What.** :func:`recalibrate_batch_norm` runs the model in training mode, without gradients, over the training
images in dataset order (no shuffle, no augmentation), in batches of the training batch size (the last, partial
batch dropped, as in training), after resetting every batch norm's running statistics and setting its momentum to
``None``: torch's cumulative average, so each running mean (variance) ends as the mean over the batches of the
batches' means (unbiased variances). That is :func:`torch.optim.swa_utils.update_bn`, which does the work; the
fixed order makes it deterministic. Weights, other buffers and the global RNG states are left as they were. Under DDP
every rank recalibrates over the whole training set, so the statistics are the same on every rank.

:class:`BatchNormRecalibration` applies it in a run (``TrainConfig.recalibrate_bn``):

* ``"end"``: once, before the test, with the weights tested (the last, or the best checkpoint's);
* ``"eval"``: also before every validation (the checkpoints written after it then hold the recalibrated statistics,
  and training goes on from them: batch norm trains on batch statistics, so the weights follow the same path as
  with ``"off"``).

Its cost is timed: :attr:`BatchNormRecalibration.seconds` (all recalibrations of the process), logged per
validation as ``bn_recalibration_s`` (shown on the epoch line), and returned by ``train`` as ``bn_recalibration_s``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import lightning as L
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from torchbop.data import DeviceLoader

__all__ = ["recalibrate_batch_norm", "BatchNormRecalibration", "WHEN"]

#: TrainConfig.recalibrate_bn values that recalibrate, and where
WHEN = ("end", "eval")


def recalibrate_batch_norm(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    *,
    device: str | torch.device = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format,
    forward_context: Callable[[], Any] = contextlib.nullcontext,
) -> float:
    """Recompute every batch norm's running statistics of ``model`` over ``(images, labels)``; return the seconds.

    Args:
        model: the network (its mode and the momenta of its batch norms are restored afterwards).
        images: uint8 ``[N, C, H, W]`` (or ``[N, H, W]``) training images, scaled as the training loader does.
        labels: their labels (unused by the statistics; the loader checks them).
        batch_size: images per forward pass; the training batch size gives the statistics training normalized with.
        device: where the batches are made and the model runs.
        memory_format: the batches' layout (the model's input memory format).
        forward_context: a context manager factory around the forward passes (the run's autocast, if any).

    Example:
        >>> torch.manual_seed(0) and None
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.BatchNorm1d(2))
        >>> images = torch.randint(0, 256, (8, 1, 2, 2), dtype=torch.uint8)
        >>> seconds = recalibrate_batch_norm(model, images, torch.zeros(8, dtype=torch.long), batch_size=8)
        >>> x = images.float().reshape(8, 4) / 127.5 - 1  # the loader's scaling to [-1, 1]
        >>> torch.allclose(model[2].running_mean, model[1](x).mean(0).detach())
        True
    """
    start = time.perf_counter()
    loader = DeviceLoader(images, labels, batch_size, shuffle=False, augment=False, device=device,
                          drop_last=len(labels) >= batch_size, memory_format=memory_format)
    device = torch.device(device)
    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), forward_context():  # a model with dropout draws nothing here
        update_bn(loader, model)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


class BatchNormRecalibration(L.Callback):
    """Recalibrate the module's ``model`` over the datamodule's ``train_set`` before the test (``"end"``) and also
    before every validation (``"eval"``); see the module docstring.

    Args:
        when: ``"end"`` or ``"eval"``.
        batch_size: images per forward pass (the run's training batch size).

    After the run: :attr:`seconds` (the total), :attr:`count` (how many recalibrations ran).
    """

    def __init__(self, when: str, batch_size: int) -> None:
        if when not in WHEN:
            raise ValueError(f"Invalid when value: {when!r} (expected one of {', '.join(map(repr, WHEN))})")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Invalid batch_size value: {batch_size!r} (expected a positive integer)")
        self.when = when
        self.batch_size = batch_size
        self.seconds = 0.0
        self.count = 0
        self._last_seconds: float | None = None
        self._done_at_step: int | None = None  # global step of the last recalibration before a validation

    def _recalibrate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        datamodule = trainer.datamodule
        if datamodule is None or getattr(datamodule, "train_set", None) is None:
            raise RuntimeError("recalibrate_bn needs the training set: train with torchbop's BinaryDataModule "
                               "(train(config) does), or set recalibrate_bn: off")
        images, labels = datamodule.train_set
        # the run's autocast (bf16-mixed) around the forward passes, as in training
        context = trainer.precision_plugin.forward_context
        with torch.inference_mode(False), torch.no_grad():  # buffers written here are trained on afterwards
            seconds = recalibrate_batch_norm(
                pl_module.model, images, labels, self.batch_size, device=pl_module.device,
                memory_format=getattr(datamodule, "memory_format", torch.contiguous_format), forward_context=context)
        self.seconds += seconds
        self.count += 1
        return seconds

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.when == "eval" and not trainer.sanity_checking:
            self._last_seconds = self._recalibrate(trainer, pl_module)
            self._done_at_step = trainer.global_step

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last_seconds is not None:  # once per validation, the same on every rank's line (max)
            pl_module.log("bn_recalibration_s", self._last_seconds, on_step=False, on_epoch=True, reduce_fx="max",
                          sync_dist=True, batch_size=1)
            self._last_seconds = None

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # "eval" with the last weights: the validation after the last step recalibrated these very weights already
        config = getattr(pl_module, "config", None)
        tests_last = config is None or getattr(config, "test_weights", "last") == "last"
        if self.when == "eval" and tests_last and self._done_at_step == trainer.global_step:
            return
        self._recalibrate(trainer, pl_module)
