"""What a training run prints: one line per epoch without a progress bar, and not Lightning's noise.

**Noise.** Every run used to print, besides Lightning's device lines (``GPU available: ...``, kept):

* ``💡 Tip: For seamless cloud logging ... litlogger ...`` (and, in some setups, the same for ``litmodels``): an
  advertisement, logged at INFO by ``lightning.pytorch.utilities.rank_zero`` whenever a Trainer is built. A
  ``logging.Filter`` on that logger drops records starting with ``💡 Tip:``; every other Lightning message passes.
* ``_pytree.py:21: `isinstance(treespec, LeafSpec)` is deprecated ...``: a ``FutureWarning`` that torch raises when
  Lightning's own ``_tree_flatten`` builds a ``LeafSpec`` (Lightning 2.6 with torch 2.13). Nothing a user can change;
  ignored for that message from that module only.
* ``fit_loop.py:321: The number of training batches (5) is smaller than the logging interval
  Trainer(log_every_n_steps=50) ...``: Lightning's interval counts global steps across epochs, so step metrics are
  still logged every ``log_every_n_steps`` steps; an epoch shorter than that (a ``--subset`` run) is not a mistake.
  Ignored for that message from that module only; ``log_every_n_steps`` is what the config says.
* ``model_checkpoint.py:881: Checkpoint directory .../checkpoints exists and is not empty.``, on every resume:
  ``train`` refuses a new run in a folder that holds a run (unless ``--overwrite``, which clears it first, see
  :mod:`torchbop.training.run_folder`), so a non-empty checkpoint folder is the resumed run's own. Ignored for that
  message from ``ModelCheckpoint``'s module only.

:func:`quiet_lightning` installs the four filters; importing this module (``train`` does) calls it. The warnings
filters are process-wide entries of ``warnings.filters`` matching one message each; any other warning, from Lightning
or elsewhere, is shown as before.

**Epoch lines.** With the progress bar off (``--no-progress``) nothing showed until the end of the run.
:class:`EpochLines` prints, on global rank 0, one line per epoch when it ends::

    epoch 2/10: train loss 0.4321 acc 0.8750, val loss 0.5012 acc 0.8300, 1234 flips, 3.2 s

(the epoch's mean training loss and accuracy, the validation metrics when there was a validation, the binary
weights flipped in the epoch, and the seconds from the epoch's start, or from the resume, to its end, validation
included).
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any, Callable

import lightning as L
import lightning_utilities.core.rank_zero as _rank_zero
from lightning.fabric.utilities.warnings import PossibleUserWarning

__all__ = ["EpochLines", "format_epoch_line", "quiet_lightning"]

ADVERTISEMENT = "💡 Tip:"


class _NoAdvertisement(logging.Filter):
    """Drops Lightning's ``💡 Tip: ...`` advertisements."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(ADVERTISEMENT)


def quiet_lightning() -> None:
    """Install the targeted filters of the module docstring (idempotent)."""
    import lightning.pytorch.utilities.rank_zero  # noqa: F401  (sets the logger that rank_zero_info uses)

    for logger in {_rank_zero.log, logging.getLogger("lightning.pytorch.utilities.rank_zero")}:
        if not any(isinstance(f, _NoAdvertisement) for f in logger.filters):
            logger.addFilter(_NoAdvertisement())
    # filterwarnings replaces an identical entry, so repeated calls do not grow warnings.filters
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging "
                            r"interval", category=PossibleUserWarning, module=r"lightning\.pytorch\.loops\.fit_loop")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty", category=UserWarning,
                            module=r"lightning\.pytorch\.callbacks\.model_checkpoint")


quiet_lightning()


def format_epoch_line(epoch: int, epochs: int, metrics: dict[str, float], flips: int | None, seconds: float) -> str:
    """One epoch's line; ``epoch`` counts from 1, ``metrics`` may hold ``train_loss``, ``train_acc``, ``val_loss``,
    ``val_acc``; ``flips`` is None for a model without binary weights.

    Example:
        >>> format_epoch_line(2, 10, {"train_loss": 0.43214, "train_acc": 0.875, "val_loss": 0.5012, "val_acc": 0.83},
        ...                   1234, 3.24)
        'epoch 2/10: train loss 0.4321 acc 0.8750, val loss 0.5012 acc 0.8300, 1234 flips, 3.2 s'
        >>> format_epoch_line(1, 1, {"train_loss": 2.3, "train_acc": 0.1}, None, 0.5)
        'epoch 1/1: train loss 2.3000 acc 0.1000, 0.5 s'
    """
    parts = []
    for stage in ("train", "val"):
        if f"{stage}_loss" in metrics:
            text = f"{stage} loss {metrics[f'{stage}_loss']:.4f}"
            if f"{stage}_acc" in metrics:
                text += f" acc {metrics[f'{stage}_acc']:.4f}"
            parts.append(text)
    if flips is not None:
        parts.append(f"{flips} flips")
    parts.append(f"{seconds:.1f} s")
    if "bn_recalibration_s" in metrics:  # TrainConfig.recalibrate_bn "eval": included in the epoch's seconds
        parts[-1] += f" (batch norm recalibration {metrics['bn_recalibration_s']:.1f} s)"
    return f"epoch {epoch}/{epochs}: " + ", ".join(parts)


class EpochLines(L.Callback):
    """Print :func:`format_epoch_line` at the end of every training epoch, on global rank 0.

    Reads the epoch means the module logged (``train_loss_epoch``, ``train_acc_epoch``, in ``callback_metrics`` by
    then), the validation metrics of the validation that ran in this epoch (kept at ``on_validation_end``, so an epoch
    without one shows none rather than the previous one's) and the module's ``flip_counter``.

    Args:
        print_fn: where the lines go (``print`` with ``flush=True`` by default).
    """

    def __init__(self, print_fn: Callable[[str], Any] | None = None) -> None:
        self._print = print_fn if print_fn is not None else (lambda line: print(line, flush=True))
        self._started = 0.0
        self._val: dict[str, float] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()  # a run resumed mid-epoch has no on_train_epoch_start for that epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()
        self._val = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            metrics = trainer.callback_metrics
            self._val = {k: float(metrics[k]) for k in ("val_loss", "val_acc", "bn_recalibration_s") if k in metrics}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Every rank reads callback_metrics: computing a metric logged with sync_dist is a collective.
        logged = trainer.callback_metrics
        metrics = {k.removesuffix("_epoch"): float(logged[k]) for k in ("train_loss_epoch", "train_acc_epoch")
                   if k in logged}
        metrics.update(self._val)
        counter = getattr(pl_module, "flip_counter", None)
        flips = int(counter.epoch_total) if counter is not None else None
        if trainer.is_global_zero:
            self._print(format_epoch_line(trainer.current_epoch + 1, trainer.max_epochs, metrics, flips,
                                          time.perf_counter() - self._started))
