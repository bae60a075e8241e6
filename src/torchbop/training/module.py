"""``BinaryClassifier``: a thin LightningModule around a plain ``nn.Module`` classifier (a BNN from torchbop.models).

The module owns the three things Lightning needs and the model does not:

* the loss and metrics, in one ``_shared_step`` for train/val/test (``train_loss_step``/``train_loss_epoch``,
  ``train_acc_step``/``train_acc_epoch``; ``val_loss``, ``val_acc``, ``test_loss``, ``test_acc``);
* the optimizer: Bop (or Bop2ndOrder) for the binary weights and Adam for everything else, joined into one
  ``CompositeOptimizer`` because Lightning's automatic optimization takes a single optimizer; in latent mode one
  Adam/SGD over all parameters, with the latent weights clipped to [-1, 1] after every step;
* the gamma schedule: a ``LambdaLR`` over the composite with one lambda per param group. Bop keeps gamma in its groups
  under ``"lr"``, so the staircase decays gamma while Adam's groups keep a constant factor 1. It steps once per epoch.
  (In latent mode it decays the learning rate of the one optimizer.)

Under ``precision="bf16-mixed"`` Lightning autocasts the forward pass; parameters, gradients and the optimizers' state
(Bop's ``m``, Adam's moments) stay float32.

Flips are counted by a :class:`torchbop.metrics.FlipCounter` around every optimizer step and logged per step
(``pi_t``, ``flips/<layer>``) and per epoch (``epoch_flips``, ``epoch_flips/<layer>``).

Epoch metrics survive a mid-epoch resume. Lightning's own ``on_epoch=True`` aggregation lives in memory only, so a run
resumed from a mid-epoch checkpoint would average the epoch's training loss over the batches after the resume, and it
skips ``on_train_epoch_start`` (where the epoch's gamma is read). So the module keeps the epoch's state itself and puts
it in every checkpoint (``on_save_checkpoint``), next to the flip counts:

* ``train_loss_epoch`` / ``train_acc_epoch``: running sums (loss x images, correct images, images) in float64 on the
  training device, added to at every step without a host sync; the means are computed once, summed over DDP ranks
  (so they are exact means over the whole epoch's data, not rank 0's shard), and logged at the epoch's last batch.
  (Logging them there rather than in ``on_train_epoch_end`` keeps them in ``trainer.callback_metrics`` for callbacks'
  ``on_train_epoch_end``, which Lightning calls before the module's.)
* ``gamma``/``threshold`` (``lr`` in latent mode): read at the epoch's start, before the epoch-end scheduler step,
  and logged at its end.

A resumed epoch therefore logs exactly what the uninterrupted run logs.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from torchbop.training.config import TrainConfig

__all__ = ["BinaryClassifier", "StepDecay", "build_model"]


class StepDecay:
    """Staircase factor ``factor ** (epoch // every)`` (constant 1 when ``every`` is None); a picklable lr_lambda.

    Example:
        >>> decay = StepDecay(0.1, every=100)
        >>> [decay(e) for e in (0, 99, 100, 199, 200)]
        [1.0, 1.0, 0.1, 0.1, 0.010000000000000002]
    """

    def __init__(self, factor: float = 1.0, every: int | None = None) -> None:
        self.factor = factor
        self.every = every

    def __call__(self, epoch: int) -> float:
        if self.every is None:
            return 1.0
        return self.factor ** (epoch // self.every)


def build_model(config: TrainConfig) -> nn.Module:
    """``create_model(config.model, mode=config.mode, **config.model_kwargs)``."""
    from torchbop.models import create_model

    return create_model(config.model, mode=config.mode, **config.model_kwargs)


class BinaryClassifier(L.LightningModule):
    """Cross-entropy classifier over ``model``'s logits, trained as ``config`` says.

    Args:
        config: the run's :class:`TrainConfig` (or its ``to_dict()``, as stored in checkpoints).
        model: the network; built from ``config`` when omitted. Pass one to train a custom model.
    """

    def __init__(self, config: TrainConfig | dict, model: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
        self.save_hyperparameters({"config": self.config.to_dict()})
        self.model = model if model is not None else build_model(self.config)
        self.flip_counter = None  # created with the optimizer (it reads Bop's per-step flip counts)
        self._flip_state_to_load = None
        # this epoch's [loss x images, correct images] (a device tensor), images and rates; see the module docstring
        self._epoch_sums: torch.Tensor | None = None
        self._epoch_images = 0
        self._epoch_rates: dict[str, float] = {}
        self._epoch_means_logged = False
        self._epoch_state_to_load: dict[str, Any] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ------------------------------------------------------------------------------------------------------------
    # steps
    # ------------------------------------------------------------------------------------------------------------
    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits.float(), labels)
        correct = logits.argmax(dim=1) == labels
        acc = correct.float().mean()
        if stage == "train":  # per step here; the epoch means come from _add_to_epoch (see the module docstring)
            self.log("train_loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(labels))
            self.log("train_acc_step", acc, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(labels))
            self._add_to_epoch(loss, correct)
            return loss
        # DDP: average validation/test metrics over ranks
        self.log(f"{stage}_loss", loss, on_epoch=True, prog_bar=True, batch_size=len(labels), sync_dist=True)
        self.log(f"{stage}_acc", acc, on_epoch=True, prog_bar=True, batch_size=len(labels), sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._shared_step(batch, "test")

    # ------------------------------------------------------------------------------------------------------------
    # optimizer, schedule, flips
    # ------------------------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        from torchbop.metrics import FlipCounter
        from torchbop.nn import named_binary_layers, split_binary_params
        from torchbop.optim import Bop, Bop2ndOrder, CompositeOptimizer

        cfg = self.config
        decay = StepDecay(cfg.gamma_decay, cfg.gamma_decay_every)
        binary, other = split_binary_params(self.model)
        if cfg.mode == "bop":
            if not binary:
                raise ValueError(f"{type(self.model).__name__} has no binary layer for Bop to train; train a "
                                 "real-valued model with mode 'latent' and optimizer 'adam' or 'sgd'")
            if cfg.optimizer == "bop":
                flipper = Bop(binary, gamma=cfg.gamma, threshold=cfg.threshold)
            else:
                flipper = Bop2ndOrder(binary, gamma=cfg.gamma, sigma=cfg.sigma, threshold=cfg.threshold)
            children = [flipper]
            if other:
                children.append(torch.optim.Adam(other, lr=cfg.lr))
            optimizer = CompositeOptimizer(*children, model=self.model)
            lambdas = [decay] * len(flipper.param_groups) + [StepDecay()] * (len(optimizer.param_groups)
                                                                                 - len(flipper.param_groups))
        else:
            params = [p for p in self.model.parameters() if p.requires_grad]
            if cfg.optimizer == "adam":
                optimizer = torch.optim.Adam(params, lr=cfg.lr)
            else:
                optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
            lambdas = [decay] * len(optimizer.param_groups)
        has_binary = any(True for _ in named_binary_layers(self.model))
        # Bop reports its flips; any other optimizer is left out of the counter, which then compares weight signs
        # (and does not probe - and so create - optimizer state for binary weights the optimizer does not train).
        reader = optimizer if cfg.mode == "bop" else None
        self.flip_counter = FlipCounter(self.model, reader) if has_binary else None  # None: a float model
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        # The closure (forward + backward) runs inside step(); it changes no weight, so the snapshot taken here is the
        # state right before the update.
        counter = self.flip_counter
        if counter is not None:
            counter.before_step()
        optimizer.step(closure=optimizer_closure)
        if self.config.mode == "latent":
            from torchbop.nn import clip_latent_weights_

            clip_latent_weights_(self.model)
        if counter is None:
            return
        flips = counter.after_step()
        self.log("pi_t", counter.last_pi_t.float(), on_step=True, on_epoch=False)
        self.log("flips", counter.last_total.float(), on_step=True, on_epoch=False)
        self.log_dict({f"flips/{name}": n.float() for name, n in flips.items()}, on_step=True, on_epoch=False)

    def on_train_start(self) -> None:
        # A run resumed mid-epoch goes on counting that epoch's flips, loss and accuracy, and logs the rates read at
        # the epoch's start (Lightning skips on_train_epoch_start then).
        pending, self._flip_state_to_load = self._flip_state_to_load, None
        if pending is not None and self.flip_counter is not None and pending["epoch"] == self.current_epoch:
            _restore_flip_counter(self.flip_counter, pending)
        state, self._epoch_state_to_load = self._epoch_state_to_load, None
        if state is not None and state["epoch"] == self.current_epoch:
            self._epoch_sums = state["sums"].to(self.device) if state["images"] else None
            self._epoch_images = state["images"]
            self._epoch_rates = dict(state["rates"])
            self._epoch_means_logged = False

    def on_train_epoch_start(self) -> None:
        if self.flip_counter is not None:
            self.flip_counter.reset_epoch()
        self._epoch_sums, self._epoch_images = None, 0
        self._epoch_rates = self._rates()  # before the epoch-end scheduler step, which precedes on_train_epoch_end
        self._epoch_means_logged = False

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx + 1 >= self.trainer.num_training_batches:
            self._log_epoch_means()

    def on_train_epoch_end(self) -> None:
        self._log_epoch_means()  # when the epoch ended before its last batch (should_stop); else already logged
        values = dict(self._epoch_rates)
        counter = self.flip_counter
        if counter is not None:
            values["epoch_flips"] = _as_float(counter.epoch_total)
            values.update({f"epoch_flips/{k}": _as_float(v) for k, v in counter.epoch_flips.items()})
        self._log_once_per_epoch(values)

    # ------------------------------------------------------------------------------------------------------------
    # epoch means of the training loss and accuracy
    # ------------------------------------------------------------------------------------------------------------
    def _add_to_epoch(self, loss: torch.Tensor, correct: torch.Tensor) -> None:
        """Add a training batch to the epoch's sums (on the device: no host sync)."""
        n = correct.numel()
        dtype = torch.float32 if correct.device.type == "mps" else torch.float64  # MPS has no float64
        batch = torch.stack((loss.detach().to(dtype) * n, correct.sum().to(dtype)))
        self._epoch_sums = batch if self._epoch_sums is None else self._epoch_sums + batch
        self._epoch_images += n

    def _log_epoch_means(self) -> None:
        """Log ``train_loss_epoch`` and ``train_acc_epoch`` once per epoch: the means over every rank's batches.

        Called on every rank at the same batch (a DDP all-reduce).
        """
        if self._epoch_means_logged or self._epoch_sums is None:
            return
        self._epoch_means_logged = True
        sums = torch.cat((self._epoch_sums, self._epoch_sums.new_tensor([self._epoch_images])))
        loss, correct, images = self.trainer.strategy.reduce(sums, reduce_op="sum").unbind()
        self._log_once_per_epoch({"train_loss_epoch": (loss / images).float(),
                                  "train_acc_epoch": (correct / images).float()}, prog_bar=True)

    def _log_once_per_epoch(self, values: dict[str, Any], prog_bar: bool = False) -> None:
        """Log values that are logged once per epoch and are the same on every DDP rank.

        ``reduce_fx="max"`` of one identical value per rank is that value, exactly, both over the epoch and over the
        ranks; ``sync_dist`` only tells Lightning the values are meant to be global (it warns otherwise under DDP).
        """
        self.log_dict(values, on_step=False, on_epoch=True, reduce_fx="max", sync_dist=True, batch_size=1,
                      prog_bar=prog_bar)

    def _rates(self) -> dict[str, float]:
        """gamma and tau of the first Bop group (or lr of the first latent-mode group), for the logs."""
        optimizers = self.optimizers(use_pl_optimizer=False)
        group = optimizers.param_groups[0]
        key = "gamma" if self.config.mode == "bop" else "lr"
        rates = {key: float(group["lr"])}
        if "threshold" in group:
            rates["threshold"] = float(group["threshold"])
        return rates

    # The current epoch's flip counts, loss and accuracy sums and rates travel with mid-epoch checkpoints (plain
    # tensors, floats and dicts: loadable with weights_only=True).
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.flip_counter is not None:
            counter = self.flip_counter
            checkpoint["flip_counter"] = {"epoch": self.current_epoch, "epoch_flips": dict(counter.epoch_flips),
                                          "epoch_total": counter.epoch_total, "epoch_steps": counter.epoch_steps}
        sums = self._epoch_sums if self._epoch_sums is not None else torch.zeros(2, dtype=torch.float64)
        checkpoint["epoch_metrics"] = {"epoch": self.current_epoch, "sums": sums.detach().cpu(),
                                       "images": self._epoch_images, "rates": dict(self._epoch_rates)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._flip_state_to_load = checkpoint.get("flip_counter")
        self._epoch_state_to_load = checkpoint.get("epoch_metrics")


def _as_float(value: Any) -> torch.Tensor | float:
    return value.float() if isinstance(value, torch.Tensor) else float(value)


def _restore_flip_counter(counter: Any, state: dict[str, Any]) -> None:
    counter.epoch_flips = {name: value.to(counter.device) for name, value in state["epoch_flips"].items()}
    counter.epoch_total = state["epoch_total"].to(counter.device)
    counter.epoch_steps = state["epoch_steps"]
