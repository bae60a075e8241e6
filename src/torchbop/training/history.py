"""Watching a run: :class:`Observer` (the hooks :func:`torchbop.training.train` calls), :class:`History` (what a run
did, epoch by epoch and step by step, as plain numbers) and :class:`WallClockBudget` (a time box).

Pass observers to ``train(config, observers=[...])``. Each hook gets the run's :class:`~torchbop.training.loop.Run`
(``config``, ``model``, ``optimizer``, ``counter``: the flip counter or None, ``epoch`` from 0, ``step``: optimizer
steps done, ``batch``: the batch of the epoch, ``batches``: per epoch, ``step_metrics``, ``should_stop``). An observer
with ``state_dict()`` and ``load_state_dict()`` has its state saved in every checkpoint and restored on resume::

    history = History(per_step=True)
    train(config, observers=[history], loggers=False)
    history.epochs[-1]["val_acc"], history.epochs[-1]["flips"], history.steps["pi_t"][:3]

``History.epochs``: one dict per epoch with ``epoch`` (from 1), ``steps``, ``train_loss`` and ``train_acc`` (the
epoch's means over every process), ``val_loss`` and ``val_acc`` (when it validated), ``flips`` and ``flip_ratio``
(``flips / (binary weights x steps)``) for a model with binary layers, ``latent_at_clip``
(:func:`torchbop.metrics.latent_at_clip`) for latent weights, and ``rate``: the first group's ``lr`` (Bop's gamma;
latent mode: the learning rate) at the epoch's start. ``History.steps`` (``per_step=True``): per optimizer step
``pi_t`` (eq. 7 of the reproducibility report; NaN without binary layers), ``train_acc`` and ``train_loss``. A run
resumed from any checkpoint, also one written mid-epoch, ends with the records of an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

__all__ = ["Observer", "History", "WallClockBudget"]


class Observer:
    """The hooks of a run, in the order the loop calls them; each does nothing unless overridden."""

    def on_train_start(self, run: Any) -> None: ...
    def on_epoch_start(self, run: Any) -> None: ...  # not called for an epoch resumed in its middle
    def on_batch_start(self, run: Any, batch: Any) -> None: ...
    def on_before_step(self, run: Any) -> None: ...  # gradients computed, rates of this step set
    def on_batch_end(self, run: Any) -> None: ...
    def on_epoch_end(self, run: Any, metrics: dict[str, float]) -> None: ...  # before the epoch's checkpoint
    def on_train_end(self, run: Any) -> None: ...


class History(Observer):
    """Records a run's curves (see the module docstring).

    Args:
        per_step: also record ``pi_t`` and the training-batch accuracy and loss of every optimizer step (a host sync
            per step).
        log: called with one line per finished epoch (``epoch 2/4: train_acc 0.8752, ...``), if given.
    """

    def __init__(self, per_step: bool = False, log: Callable[[str], Any] | None = None) -> None:
        self.per_step = per_step
        self.epochs: list[dict[str, float]] = []
        self.steps: dict[str, list[float]] = {"pi_t": [], "train_acc": [], "train_loss": []}
        self._log = log
        self._steps_in_epoch = 0
        self._rate = math.nan

    def as_dict(self) -> dict[str, Any]:
        """``{"epochs": [...]}``, plus ``"steps"`` with ``per_step``: JSON-able."""
        return {"epochs": self.epochs, **({"steps": self.steps} if self.per_step else {})}

    def state_dict(self) -> dict[str, Any]:
        return {
            "epochs": [dict(row) for row in self.epochs],
            "steps": {k: list(v) for k, v in self.steps.items()},
            "steps_in_epoch": self._steps_in_epoch,
            "rate": self._rate,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs = [dict(row) for row in state["epochs"]]
        self.steps = {k: list(v) for k, v in state["steps"].items()}
        self._steps_in_epoch, self._rate = state["steps_in_epoch"], state["rate"]

    def on_epoch_start(self, run: Any) -> None:
        self._steps_in_epoch = 0
        self._rate = float(run.optimizer.param_groups[0]["lr"])  # Bop keeps gamma as its groups' "lr"

    def on_batch_end(self, run: Any) -> None:
        self._steps_in_epoch += 1
        if self.per_step:
            self.steps["pi_t"].append(float(run.counter.last_pi_t) if run.counter is not None else math.nan)
            self.steps["train_acc"].append(float(run.step_metrics["train_acc_step"]))
            self.steps["train_loss"].append(float(run.step_metrics["train_loss_step"]))

    def on_epoch_end(self, run: Any, metrics: dict[str, float]) -> None:
        row: dict[str, float] = {"epoch": run.epoch + 1, "steps": self._steps_in_epoch}
        for key in ("train_acc", "train_loss", "val_acc", "val_loss"):
            if (value := metrics.get(key, metrics.get(f"{key}_epoch"))) is not None:
                row[key] = value
        if run.counter is not None:
            row["flips"] = int(metrics["epoch_flips"])
            row["flip_ratio"] = row["flips"] / max(1, run.counter.total_binary_params * self._steps_in_epoch)
        if "latent_at_clip" in metrics:
            row["latent_at_clip"] = metrics["latent_at_clip"]
        row["rate"] = self._rate
        self.epochs.append(row)
        if self._log is not None:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "steps"))
            self._log(f"epoch {row['epoch']}/{run.config.epochs}: {shown}")


class WallClockBudget(Observer):
    """Stop training once ``seconds`` have passed since training started (validation and checkpoints count).

    With ``whole_epochs`` (default) it stops at an epoch's end when another epoch, as long as the longest so far,
    would end after the budget; in any case after the first training batch that ends past it. After the run:
    :attr:`epochs_completed`, :attr:`elapsed` (seconds from the start to the stop, or to the end) and :attr:`stopped`
    (``None``, ``"epoch"`` or ``"mid-epoch"``). Not saved in checkpoints: a resumed run gets a new budget.

    Args:
        seconds: the budget (> 0).
        whole_epochs: stop at an epoch's end when the next epoch would not fit.
        clock: returns seconds (``time.perf_counter``; tests pass a fake one).
    """

    def __init__(
        self, seconds: float, whole_epochs: bool = True, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        if not seconds > 0:
            raise ValueError(f"Invalid seconds value: {seconds} (expected a positive number)")
        self.seconds, self.whole_epochs, self._clock = float(seconds), whole_epochs, clock
        self.epochs_completed, self.elapsed, self.stopped = 0, 0.0, None
        self._start = self._epoch_start = 0.0
        self._longest_epoch = 0.0

    def on_train_start(self, run: Any) -> None:
        self._start = self._epoch_start = self._clock()

    def on_epoch_start(self, run: Any) -> None:
        self._epoch_start = self._clock()

    def on_batch_end(self, run: Any) -> None:
        if not run.should_stop and self._clock() - self._start >= self.seconds:
            run.should_stop = True
            self.stopped = "mid-epoch" if run.batch < run.batches else "epoch"

    def on_epoch_end(self, run: Any, metrics: dict[str, float]) -> None:
        if self.stopped != "mid-epoch":
            self.epochs_completed += 1
        self._longest_epoch = max(self._longest_epoch, self._clock() - self._epoch_start)
        if (
            self.stopped is None
            and self.whole_epochs
            and not run.should_stop
            and self._clock() - self._start + self._longest_epoch > self.seconds
        ):
            run.should_stop, self.stopped = True, "epoch"

    def on_train_end(self, run: Any) -> None:
        self.elapsed = self._clock() - self._start
