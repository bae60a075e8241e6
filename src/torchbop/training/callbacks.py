"""Callbacks and checkpoint I/O for training BNNs with Lightning.

* :class:`FlipEarlyStopping`: stop when no binary weight flipped for ``patience_epochs`` consecutive epochs
  (the reproducibility report's criterion, with 10 epochs).
* :class:`AtomicCheckpointIO`: checkpoints are written to a temporary file in the destination's folder, flushed to disk,
  then renamed over the destination (``os.replace``), so a crash or a failed write leaves the previous checkpoint
  intact. Lightning's own ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lives in the
  system temp dir and is *moved* into place, which is a copy (not atomic) when ``/tmp`` is another file system.
* :class:`RNGState`: puts the global RNG states (python, torch CPU and CUDA) into every checkpoint and restores them
  on resume; Lightning does not.
* :class:`Throughput`: training images per second, timed over the training batches only (validation excluded).
* :class:`WallClockBudget`: stops training when a wall-clock budget is spent, at an epoch's end when the next epoch
  would not fit (a time-boxed run that ends on whole epochs), or mid-epoch once the budget is gone.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from torchbop.atomic_file import atomic_write
from torchbop.training.checkpoints import load_checkpoint

__all__ = ["FlipEarlyStopping", "AtomicCheckpointIO", "RNGState", "Throughput", "WallClockBudget"]


class FlipEarlyStopping(L.Callback):
    """Stop training after ``patience_epochs`` consecutive epochs in which no binary weight flipped.

    Reads the epoch's total from the module's ``flip_counter`` at the end of every training epoch. The count of
    flip-free epochs is saved in checkpoints, so a resumed run stops when the uninterrupted one would.
    """

    def __init__(self, patience_epochs: int) -> None:
        if patience_epochs < 1:
            raise ValueError(f"Invalid patience_epochs value: {patience_epochs} (expected a positive integer)")
        self.patience_epochs = patience_epochs
        self.epochs_without_flips = 0
        self.stopped_epoch: int | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        flips = int(pl_module.flip_counter.epoch_total)
        self.epochs_without_flips = 0 if flips > 0 else self.epochs_without_flips + 1
        if self.epochs_without_flips >= self.patience_epochs:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch
            if trainer.is_global_zero:
                print(f"FlipEarlyStopping: no weight flipped in {self.epochs_without_flips} consecutive epochs; "
                      f"stopping after epoch {trainer.current_epoch}")

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_without_flips": self.epochs_without_flips, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs_without_flips = state_dict["epochs_without_flips"]
        self.stopped_epoch = state_dict["stopped_epoch"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` for local paths that replaces the destination atomically (temp file + ``os.replace``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not take storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        """Every checkpoint Lightning reads (resume, testing the best weights) is read with ``weights_only=True``
        (:func:`~torchbop.training.checkpoints.load_checkpoint`), whatever ``weights_only`` Lightning passes."""
        return load_checkpoint(path, map_location=map_location or "cpu")


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` such that ``path`` holds either its old content or the complete new one, durably."""
    with atomic_write(path, "wb", durable=True) as f:
        torch.save(obj, f)


class RNGState(L.Callback):
    """Save the global RNG states in checkpoints and restore them on resume."""

    def state_dict(self) -> dict[str, Any]:
        state = {"python": random.getstate(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class Throughput(L.Callback):
    """Training images per second, timed from each epoch's first training batch to its last.

    Validation (which Lightning runs after the last batch) is excluded; the device is synchronized only at those two
    points, so the measurement does not stall the asynchronous CUDA queue.
    """

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._start: float | None = None
        self._epoch_images = 0

    @staticmethod
    def _sync(pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._start is None:
            self._sync(pl_module)
            self._start = time.perf_counter()
            self._epoch_images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._epoch_images += len(batch[1]) * trainer.world_size
        if batch_idx + 1 >= trainer.num_training_batches or trainer.should_stop:
            self._stop(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop(pl_module)

    def _stop(self, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            self._sync(pl_module)
            self.seconds += time.perf_counter() - self._start
            self.images += self._epoch_images
            self._start = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


class WallClockBudget(L.Callback):
    """Stop training once ``seconds`` of wall-clock time have passed since training started (``on_train_start``:
    after setup and data loading; compilation, validation and checkpoints count).

    With ``whole_epochs`` (default) training stops at the end of an epoch when another epoch, as long as the longest
    one so far, would end after the budget; so a time-boxed run normally ends on a whole number of epochs, and its
    last validation and checkpoint are those of a finished epoch. In any case it stops after the first training
    batch that ends past the budget (mid-epoch when an epoch is longer than the budget). The clock is read with
    ``time.perf_counter`` only: no device sync.

    After the run: :attr:`epochs_completed` (whole epochs trained while the callback watched), :attr:`elapsed`
    (seconds from the start of training to the stop, or to the end of training when it ended on its own),
    :attr:`stopped` (``None``, ``"epoch"`` or ``"mid-epoch"``). Not saved in checkpoints: a resumed run gets a new
    budget.

    Args:
        seconds: the budget (> 0).
        whole_epochs: stop at an epoch's end when the next epoch would not fit.
        clock: returns seconds (``time.perf_counter``; tests pass a fake one).
    """

    def __init__(self, seconds: float, whole_epochs: bool = True, clock: Any = time.perf_counter) -> None:
        if not seconds > 0:
            raise ValueError(f"Invalid seconds value: {seconds} (expected a positive number)")
        self.seconds = float(seconds)
        self.whole_epochs = whole_epochs
        self._clock = clock
        self.epochs_completed = 0
        self.elapsed = 0.0
        self.stopped: str | None = None
        self._start: float | None = None
        self._epoch_start = 0.0
        self._longest_epoch = 0.0

    def _now(self) -> float:
        assert self._start is not None
        return self._clock() - self._start

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._clock()
        self._epoch_start = self._start

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is not None and not trainer.should_stop and self._now() >= self.seconds:
            trainer.should_stop = True
            self.stopped = "mid-epoch" if batch_idx + 1 < trainer.num_training_batches else "epoch"

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is None:
            return
        if self.stopped != "mid-epoch":
            self.epochs_completed += 1
        self._longest_epoch = max(self._longest_epoch, self._clock() - self._epoch_start)
        if (self.stopped is None and self.whole_epochs and not trainer.should_stop
                and self._now() + self._longest_epoch > self.seconds):
            trainer.should_stop = True
            self.stopped = "epoch"

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            self.elapsed = self._now()
