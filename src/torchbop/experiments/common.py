"""What the experiments share: data subsets, evaluation, a training-history recorder, and small model helpers."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn

__all__ = ["load_data", "evaluate", "History", "set_weight_quantizers", "freeze_binary_weights",
           "binary_weights", "train_run"]

Split = tuple[torch.Tensor, torch.Tensor]


def load_data(dataset: str, data_dir: str | None, subset: int | None = None,
              test_subset: int | None = None) -> dict[str, Split]:
    """``{"train": (uint8 images, labels), "test": ...}``, each cut to the first N images of a fixed random order.

    The order is a permutation drawn with seed 0, the same for every run, so that all seeds and configurations of an
    experiment see the same images.
    """
    from torchbop.data import load_cifar10, load_mnist

    if dataset == "cifar10":
        train, test = load_cifar10(data_dir, train=True), load_cifar10(data_dir, train=False)
    elif dataset in ("mnist", "fashion-mnist"):
        train = load_mnist(data_dir, train=True, variant=dataset)
        test = load_mnist(data_dir, train=False, variant=dataset)
    else:
        raise ValueError(f"Invalid dataset: {dataset!r} (expected 'mnist', 'fashion-mnist' or 'cifar10')")
    return {"train": _first(train, subset), "test": _first(test, test_subset)}


def _first(split: Split, n: int | None) -> Split:
    images, labels = split
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if n is None or n >= len(labels):
        return images, labels
    keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:n]
    return images[keep], labels[keep]


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 1000) -> float:
    """Accuracy of ``model`` (in eval mode: batch norm uses its running statistics) on uint8 images."""
    from torchbop.data import DeviceLoader

    was_training = model.training
    model.eval()
    correct = 0
    device = next(model.parameters()).device
    for x, y in DeviceLoader(split[0], split[1], batch_size, shuffle=False, device=device):
        correct += int((model(x).argmax(dim=1) == y).sum())
    model.train(was_training)
    return correct / len(split[1])


def binary_weights(model: nn.Module) -> list[nn.Parameter]:
    from torchbop.nn import named_binary_layers

    return [layer.weight for _, layer in named_binary_layers(model)]


def set_weight_quantizers(model: nn.Module, make: Any) -> nn.Module:
    """Give every binary layer ``make()`` as its weight quantizer (``lambda: None``: use the real latent weights)."""
    from torchbop.nn import named_binary_layers

    for _, layer in named_binary_layers(model):
        layer.weight_quantizer = make()
    return model


def freeze_binary_weights(model: nn.Module) -> nn.Module:
    for w in binary_weights(model):
        w.requires_grad_(False)
    return model


class History(L.Callback):
    """Records a run's curves: per epoch (train/validation accuracy and loss, flips, gamma or lr) and, with
    ``per_step``, per optimizer step (``pi_t``, training-batch accuracy and loss).

    Flip ratio of an epoch: the epoch's flips over (binary weights x steps), i.e. the mean per-step fraction of
    weights that changed sign.
    """

    def __init__(self, per_step: bool = False, log: Any = None) -> None:
        self.per_step = per_step
        self.steps: dict[str, list[float]] = {"pi_t": [], "train_acc": [], "train_loss": []}
        self.epochs: list[dict[str, float]] = []
        self._val: dict[str, float] = {}
        self._steps_in_epoch = 0
        self._rate = math.nan
        self._log = log

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._steps_in_epoch = 0
        self._rate = float(trainer.optimizers[0].param_groups[0]["lr"])  # before the epoch-end scheduler step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._steps_in_epoch += 1
        if self.per_step:
            metrics = trainer.callback_metrics
            counter = pl_module.flip_counter
            self.steps["pi_t"].append(float(counter.last_pi_t) if counter is not None else math.nan)
            self.steps["train_acc"].append(float(metrics.get("train_acc_step", math.nan)))
            self.steps["train_loss"].append(float(metrics.get("train_loss_step", math.nan)))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            metrics = trainer.callback_metrics
            self._val = {k: float(metrics[k]) for k in ("val_acc", "val_loss") if k in metrics}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        row: dict[str, float] = {"epoch": trainer.current_epoch + 1, "steps": self._steps_in_epoch}
        for key in ("train_acc_epoch", "train_loss_epoch"):
            if key in metrics:
                row[key.removesuffix("_epoch")] = float(metrics[key])
        row.update(self._val)
        self._val = {}
        counter = pl_module.flip_counter
        if counter is not None:
            flips = int(counter.epoch_total)
            row["flips"] = flips
            row["flip_ratio"] = flips / max(1, counter.total_binary_params * self._steps_in_epoch)
        row["rate"] = self._rate  # gamma (Bop) or the learning rate (latent mode) during this epoch
        self.epochs.append(row)
        if self._log is not None:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "steps"))
            self._log(f"epoch {row['epoch']}/{trainer.max_epochs}: {shown}")

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"epochs": self.epochs}
        if self.per_step:
            out["steps"] = self.steps
        return out


def train_run(config: Any, data: dict[str, Split], model: nn.Module, *, per_step: bool = False,
              log: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``torchbop.training.train`` without loggers, with a :class:`History`; returns ``(result, history)``."""
    from torchbop.training import train

    history = History(per_step=per_step, log=log)
    # A run that is not stored yet starts afresh, also over the files of an earlier attempt that was killed.
    result = train(config, data=data, model=model, callbacks=[history], loggers=False, overwrite=True)
    result = {k: v for k, v in result.items() if k in ("test_acc", "test_loss", "val_acc", "val_loss", "epochs",
                                                     "global_step", "stopped_early", "protocol", "test_weights",
                                                     "best_val_loss", "wall_time_s", "train_images_per_s")}
    return result, history.as_dict()


def train_cifar10_run(params: dict[str, Any], ctx: Any, *, per_step: bool = False) -> tuple[dict, dict, dict]:
    """One BinaryNet/CIFAR-10 run of a stored spec (``params["train"]`` is a ``TrainConfig`` dict): loads the data
    subset, builds the model under the run's seed, trains; returns ``(result, history, data)``."""
    from torchbop.training import TrainConfig
    from torchbop.training.module import build_model

    data = load_data("cifar10", ctx.data_dir, params["subset"], params["test_subset"])
    config = TrainConfig.from_dict({**params["train"], "out": str(ctx.run_dir), "progress_bar": False})
    torch.manual_seed(config.seed)
    model = build_model(config)
    result, history = train_run(config, data, model, per_step=per_step, log=ctx.log)
    return result, history, data
