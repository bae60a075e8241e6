"""``History``: what a training run did, epoch by epoch (and step by step), as plain numbers.

Pass one to :func:`torchbop.training.train` and read it afterwards; nothing else about Lightning or
:class:`~torchbop.training.module.BinaryClassifier` needs to be known::

    history = History(per_step=True)
    train(config, callbacks=[history], loggers=False)
    history.epochs[-1]["val_acc"], history.epochs[-1]["flips"], history.steps["pi_t"][:3]

``epochs``: one dict per epoch with ``epoch`` (from 1), ``steps`` (optimizer steps in it), ``train_loss`` and
``train_acc`` (the epoch's means), ``val_loss`` and ``val_acc`` (when it validated), ``flips`` (binary weights that
changed sign in the epoch) and ``flip_ratio`` (``flips / (binary weights x steps)``, the mean fraction of weights
flipped per step) for a model with binary layers, ``latent_at_clip`` (the fraction of latent weights at the clip,
``|w| >= 1``, at the epoch's end: :func:`torchbop.metrics.latent_at_clip`) for latent-weight training, and
``rate``: gamma (Bop; the learning rate in latent mode) during the epoch, before the epoch-end schedule step.

``steps`` (with ``per_step=True``): per optimizer step, ``pi_t`` (eq. 7 of the reproducibility report; NaN for a
model without binary layers), ``train_acc`` and ``train_loss`` of the training batch.

The numbers are the ones the module logs (``train_*_epoch``, ``train_*_step``, ``val_*``) and its flip counter.
Records are kept on every process; under DDP they are rank 0's view of the epoch means and counts, which the module
makes global.

A History travels with the run's checkpoints (Lightning's callback ``state_dict``): a run resumed from a checkpoint,
also one written in the middle of an epoch, ends with the records an uninterrupted run has, the epochs and steps
before the resume included.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L

from torchbop.metrics import latent_at_clip

__all__ = ["History"]


class History(L.Callback):
    """Records a run's curves (see the module docstring).

    Args:
        per_step: also record ``pi_t`` and the training-batch accuracy and loss of every optimizer step.
        log: called with one line per finished epoch (``epoch 2/4: train_acc 0.8752, ...``), if given.
    """

    def __init__(self, per_step: bool = False, log: Callable[[str], Any] | None = None) -> None:
        self.per_step = per_step
        self.epochs: list[dict[str, float]] = []
        self.steps: dict[str, list[float]] = {"pi_t": [], "train_acc": [], "train_loss": []}
        self._log = log
        self._val: dict[str, float] = {}
        self._epoch = -1  # the epoch being trained (Lightning's current_epoch)
        self._steps_in_epoch = 0
        self._rate = math.nan
        self._resumed_epoch: int | None = None  # the epoch a checkpoint interrupted, until it starts again

    def as_dict(self) -> dict[str, Any]:
        """``{"epochs": [...]}``, plus ``"steps"`` with ``per_step``: JSON-able."""
        return {"epochs": self.epochs, **({"steps": self.steps} if self.per_step else {})}

    def state_dict(self) -> dict[str, Any]:
        """Everything recorded so far and the current epoch's counts: plain data, saved in every checkpoint."""
        return {"epochs": [dict(row) for row in self.epochs], "steps": {k: list(v) for k, v in self.steps.items()},
                "val": dict(self._val), "epoch": self._epoch, "steps_in_epoch": self._steps_in_epoch,
                "rate": self._rate}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = [dict(row) for row in state_dict["epochs"]]
        self.steps = {k: list(v) for k, v in state_dict["steps"].items()}
        self._val = dict(state_dict["val"])
        self._epoch = self._resumed_epoch = state_dict["epoch"]
        self._steps_in_epoch = state_dict["steps_in_epoch"]
        self._rate = state_dict["rate"]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        resumed, self._resumed_epoch = self._resumed_epoch, None
        if resumed == trainer.current_epoch:
            return  # resumed in the middle of this epoch: its steps and rate so far come from the checkpoint
        self._epoch = trainer.current_epoch
        self._steps_in_epoch = 0
        self._rate = float(trainer.optimizers[0].param_groups[0]["lr"])  # Bop keeps gamma as its groups' "lr"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._steps_in_epoch += 1
        if self.per_step:
            logged = trainer.callback_metrics
            counter = pl_module.flip_counter
            self.steps["pi_t"].append(float(counter.last_pi_t) if counter is not None else math.nan)
            self.steps["train_acc"].append(float(logged.get("train_acc_step", math.nan)))
            self.steps["train_loss"].append(float(logged.get("train_loss_step", math.nan)))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            logged = trainer.callback_metrics
            self._val = {k: float(logged[k]) for k in ("val_acc", "val_loss") if k in logged}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logged = trainer.callback_metrics
        row: dict[str, float] = {"epoch": trainer.current_epoch + 1, "steps": self._steps_in_epoch}
        for key in ("train_acc_epoch", "train_loss_epoch"):
            if key in logged:
                row[key.removesuffix("_epoch")] = float(logged[key])
        row.update(self._val)
        self._val = {}
        counter = pl_module.flip_counter
        if counter is not None:
            row["flips"] = int(counter.epoch_total)
            row["flip_ratio"] = row["flips"] / max(1, counter.total_binary_params * self._steps_in_epoch)
        at_clip = latent_at_clip(pl_module.model)
        if not math.isnan(at_clip):  # latent weights: the fraction at the clip, |w| >= 1, at the epoch's end
            row["latent_at_clip"] = at_clip
        row["rate"] = self._rate
        self.epochs.append(row)
        if self._log is not None:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "steps"))
            self._log(f"epoch {row['epoch']}/{trainer.max_epochs}: {shown}")
