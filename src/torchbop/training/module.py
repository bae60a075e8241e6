"""``BinaryClassifier``: a thin LightningModule around a plain ``nn.Module`` classifier (a BNN from torchbop.models).

The module owns the three things Lightning needs and the model does not:

* the loss and metrics, in one ``_shared_step`` for train/val/test (``{stage}_loss``, ``{stage}_acc``);
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ------------------------------------------------------------------------------------------------------------
    # steps
    # ------------------------------------------------------------------------------------------------------------
    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits.float(), labels)
        acc = (logits.argmax(dim=1) == labels).float().mean()
        on_step = stage == "train"
        sync = stage != "train"  # DDP: average validation/test metrics over ranks
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(labels),
                 sync_dist=sync)
        self.log(f"{stage}_acc", acc, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(labels),
                 sync_dist=sync)
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
        # A run resumed mid-epoch goes on counting that epoch's flips (Lightning skips on_train_epoch_start then).
        pending, self._flip_state_to_load = self._flip_state_to_load, None
        if pending is not None and self.flip_counter is not None and pending["epoch"] == self.current_epoch:
            _restore_flip_counter(self.flip_counter, pending)

    def on_train_epoch_start(self) -> None:
        if self.flip_counter is not None:
            self.flip_counter.reset_epoch()
        self.log_dict(self._rates(), on_step=False, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        counter = self.flip_counter
        if counter is None:
            return
        self.log("epoch_flips", _as_float(counter.epoch_total), on_step=False, on_epoch=True)
        self.log_dict({f"epoch_flips/{k}": _as_float(v) for k, v in counter.epoch_flips.items()},
                      on_step=False, on_epoch=True)

    def _rates(self) -> dict[str, float]:
        """gamma and tau of the first Bop group (or lr of the first latent-mode group), for the logs."""
        optimizers = self.optimizers(use_pl_optimizer=False)
        group = optimizers.param_groups[0]
        key = "gamma" if self.config.mode == "bop" else "lr"
        rates = {key: float(group["lr"])}
        if "threshold" in group:
            rates["threshold"] = float(group["threshold"])
        return rates

    # The current epoch's flip counts travel with mid-epoch checkpoints.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.flip_counter is not None:
            counter = self.flip_counter
            checkpoint["flip_counter"] = {"epoch": self.current_epoch, "epoch_flips": dict(counter.epoch_flips),
                                          "epoch_total": counter.epoch_total, "epoch_steps": counter.epoch_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._flip_state_to_load = checkpoint.get("flip_counter")


def _as_float(value: Any) -> torch.Tensor | float:
    return value.float() if isinstance(value, torch.Tensor) else float(value)


def _restore_flip_counter(counter: Any, state: dict[str, Any]) -> None:
    counter.epoch_flips = {name: value.to(counter.device) for name, value in state["epoch_flips"].items()}
    counter.epoch_total = state["epoch_total"].to(counter.device)
    counter.epoch_steps = state["epoch_steps"]
