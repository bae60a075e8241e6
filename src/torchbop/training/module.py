"""``BinaryClassifier``: a thin LightningModule around a plain ``nn.Module`` classifier (a BNN from torchbop.models).

The module owns the three things Lightning needs and the model does not:

* the loss and metrics, in one ``_shared_step`` for train/val/test (``train_loss_step``/``train_loss_epoch``,
  ``train_acc_step``/``train_acc_epoch``; ``val_loss``, ``val_acc``, ``test_loss``, ``test_acc``);
* the optimizer: Bop (or Bop2ndOrder, or CEMA) for the binary weights and Adam for everything else, joined into one
  ``CompositeOptimizer`` because Lightning's automatic optimization takes a single optimizer; in latent mode one
  Adam/SGD over all parameters (with ``other_lr``, two param groups: batch norm at its own rate), with the latent
  weights clipped to [-1, 1] after every step;
* the gamma schedule: a ``LambdaLR`` over the composite with one lambda per param group. Bop keeps gamma in its groups
  under ``"lr"``, so the staircase decays gamma while Adam's groups keep a constant factor 1. It steps once per epoch.
  (In latent mode it decays the learning rate of the one optimizer; with CEMA, whose group ``"lr"`` is alpha, it
  decays alpha, as the CEMA authors do.) ``decay_schedule: "interpolate"`` has no scheduler: before every optimizer
  step the module sets gamma, tau, sigma and Adam's lr (those with an ``*_end``) to
  :class:`~torchbop.training.schedules.LinearInterpolation` of ``trainer.global_step`` (the steps done, Keras'
  ``iterations``) over ``trainer.estimated_stepping_batches`` steps, so a resumed run, whose step counter is
  restored, sets the same values.

Under ``precision="bf16-mixed"`` Lightning autocasts the forward pass; parameters, gradients and the optimizers' state
(Bop's ``m``, Adam's moments) stay float32.

Flips are counted by a :class:`torchbop.metrics.FlipCounter` around every optimizer step, on the device, and logged
at the steps Lightning writes its logs (every ``log_every_n_steps``: ``pi_t``, ``flips``, ``flips/<layer>``, the
values of that step) and per epoch (``epoch_flips``, ``epoch_flips/<layer>``).

**No host sync per step.** A training step reads no device value on the host, so on a GPU the CPU queues step after
step while the GPU works: the counts and the epoch's loss and accuracy sums stay device tensors; ``train_loss_step``
and ``train_acc_step`` go to the progress bar only when there is one (Lightning turns every progress-bar value into a
Python number after every batch, even with the bar off); the flip metrics are logged only at the steps Lightning
writes, which is also where it turns them into numbers. What remains is outside this module: the progress bar itself
(``progress_bar: false`` / ``--no-progress`` removes it) and Bop's default gradient check (``nonfinite="raise"``,
one sync per step), which ``compile: true`` replaces by a check every ``log_every_n_steps`` steps (below).

**Lightning's cost per step.** Each ``self.log`` call costs Lightning's bookkeeping (a pass over the metric's state;
measured at roughly a millisecond on a loaded 2-core CPU, most of Lightning's own per-step cost, see
``benchmarks/lightning_overhead.py``). Eagerly, ``train_loss_step`` and ``train_acc_step`` are logged at every step
(callbacks read every step's values from ``trainer.callback_metrics``); with ``compile: true`` they too are logged at
the logged steps only, and every step's values are in :attr:`BinaryClassifier.last_step_metrics`.

**compile** (``TrainConfig.compile``): the training forward pass and loss (:func:`loss_and_accuracy`: model, cross
entropy, the batch's accuracy and its epoch sums) are compiled with ``torch.compile`` (the backward follows through
AOTAutograd); validation and test stay eager (a few large batches per epoch). On CUDA, Bop runs its fused kernel
(``fused=True``) and Adam its fused one. Bop is built with ``nonfinite="mask"`` (an inf/NaN gradient entry keeps its
``m`` and weight, counted on the device) instead of ``"raise"`` (a host sync per step), and the module reads that
count every ``log_every_n_steps`` steps, at every epoch end and before every checkpoint is written: a non-finite
gradient stops the run there, with a message naming the steps, and no checkpoint holds its effect. The compiled step
computes the eager step's function; it is not bit-identical to it, since the compiler fuses and reorders floating
point operations (see ``tests/training/test_compiled_step.py`` for the tolerance and why it holds).
``BinaryClassifier.compile_options`` (a class attribute, default ``{}``) is passed to ``torch.compile``: benchmarks
and tests set it (``{"mode": "reduce-overhead"}`` for CUDA graphs, ``{"backend": "eager"}`` for TorchDynamo's capture
run by eager kernels, which the tests compare bit for bit).

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

from torchbop.metrics import FlipCounter, latent_at_clip
from torchbop.models import create_model
from torchbop.nn import clip_latent_weights_, named_binary_layers, split_binary_params
from torchbop.optim import CEMA, Bop, Bop2ndOrder, CompositeOptimizer
from torchbop.training.config import INTERPOLATED, TrainConfig
from torchbop.training.schedules import LinearDecay, LinearInterpolation, StepDecay

__all__ = ["BinaryClassifier", "StepDecay", "LinearDecay", "build_model", "loss_and_accuracy"]


def loss_and_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, sums_dtype: torch.dtype
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training batch's forward pass: ``(loss, accuracy, sums)``, where ``sums`` is ``[loss x images, correct
    images]`` in ``sums_dtype`` (float64; float32 on MPS), the batch's share of the epoch means.

    The function :class:`BinaryClassifier` runs eagerly, or compiles whole with ``compile: true``.
    """
    logits = model(images)
    loss = F.cross_entropy(logits.float(), labels)
    correct = logits.argmax(dim=1) == labels
    sums = torch.stack((loss.detach().to(sums_dtype) * labels.numel(), correct.sum().to(sums_dtype)))
    return loss, correct.float().mean(), sums


def build_model(config: TrainConfig) -> nn.Module:
    """``create_model(config.model, mode=config.mode, **config.model_kwargs)``."""
    return create_model(config.model, mode=config.mode, **config.model_kwargs)


class BinaryClassifier(L.LightningModule):
    """Cross-entropy classifier over ``model``'s logits, trained as ``config`` says.

    Args:
        config: the run's :class:`TrainConfig` (or its ``to_dict()``, as stored in checkpoints).
        model: the network; built from ``config`` when omitted. Pass one to train a custom model.
    """

    #: keyword arguments of ``torch.compile`` when ``config.compile`` is set (see the module docstring)
    compile_options: dict[str, Any] = {}

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
        self._compiled_forward: Any = None  # torch.compile(loss_and_accuracy), made at the first training step
        self._flipper: Any = None  # the Bop (or Bop2ndOrder) of the binary weights
        self._checked_step = 0  # global step of the last non-finite check (compile path)
        self._interpolations: dict[str, LinearInterpolation] | None = None  # decay_schedule "interpolate"
        #: the last training step's ``train_loss_step`` and ``train_acc_step`` (device tensors), for callbacks that
        #: want every step's values: with ``compile: true`` they are logged (and so in ``trainer.callback_metrics``)
        #: at the logged steps only
        self.last_step_metrics: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ------------------------------------------------------------------------------------------------------------
    # steps
    # ------------------------------------------------------------------------------------------------------------
    def train_forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """:func:`loss_and_accuracy` of a training batch, compiled when ``config.compile`` is set."""
        dtype = torch.float32 if images.device.type == "mps" else torch.float64  # MPS has no float64
        forward = loss_and_accuracy
        if self.config.compile:
            if self._compiled_forward is None:
                self._compiled_forward = torch.compile(loss_and_accuracy, **self.compile_options)
            forward = self._compiled_forward
        return forward(self.model, images, labels, dtype)

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, labels = batch
        if stage == "train":  # per step here; the epoch means come from _add_to_epoch (see the module docstring)
            loss, acc, sums = self.train_forward(images, labels)
            self.last_step_metrics = {"train_loss_step": loss.detach(), "train_acc_step": acc}
            if not self.config.compile:  # compile: logged at the logged steps only, in on_train_batch_end
                self._log_step_metrics()
            self._add_to_epoch(sums, len(labels))
            return loss
        logits = self.model(images)
        loss = F.cross_entropy(logits.float(), labels)
        acc = (logits.argmax(dim=1) == labels).float().mean()
        # DDP: average validation/test metrics over ranks
        self.log(f"{stage}_loss", loss, on_epoch=True, prog_bar=True, batch_size=len(labels), sync_dist=True)
        self.log(f"{stage}_acc", acc, on_epoch=True, prog_bar=True, batch_size=len(labels), sync_dist=True)
        return loss

    def _log_step_metrics(self) -> None:
        # on the progress bar only when there is one: Lightning converts its values to numbers after every batch
        for name, value in self.last_step_metrics.items():
            self.log(name, value, on_step=True, on_epoch=False, prog_bar=self.config.progress_bar, batch_size=1)

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
        cfg = self.config
        decay = (LinearDecay(cfg.epochs) if cfg.decay_schedule == "linear"
                 else StepDecay(cfg.gamma_decay, cfg.gamma_decay_every))
        binary, other = split_binary_params(self.model)
        # compile: no host sync in Bop's step (inf/NaN checked every log_every_n_steps steps, see the module
        # docstring) and, on CUDA, the fused kernels of Bop and Adam (a few launches per step instead of dozens)
        fast = {"nonfinite": "mask"} if cfg.compile else {}
        fused = cfg.compile and self.device.type == "cuda"
        if cfg.mode == "bop":
            if not binary:
                raise ValueError(f"{type(self.model).__name__} has no binary layer for Bop to train; train a "
                                 "real-valued model with mode 'latent' and optimizer 'adam' or 'sgd'")
            if fused:
                fast["fused"] = True
            if cfg.optimizer == "bop":
                flipper = Bop(binary, gamma=cfg.gamma, threshold=cfg.threshold, **fast)
            elif cfg.optimizer == "bop2nd":
                flipper = Bop2ndOrder(binary, gamma=cfg.gamma, sigma=cfg.sigma, threshold=cfg.threshold,
                                      unbiased=cfg.unbiased, **fast)
            else:  # CEMA has no fused kernel and no "mask" policy: eager, a gradient check at every step
                flipper = CEMA(binary, gamma=cfg.gamma, alpha=cfg.alpha)
            self._flipper = flipper
            children = [flipper]
            if other:
                children.append(torch.optim.Adam(other, lr=cfg.lr, **({"fused": True} if fused else {})))
            optimizer = CompositeOptimizer(*children, model=self.model)
            lambdas = [decay] * len(flipper.param_groups) + [StepDecay()] * (len(optimizer.param_groups)
                                                                                 - len(flipper.param_groups))
        else:
            self._flipper = None
            params = [p for p in self.model.parameters() if p.requires_grad]
            if cfg.other_lr is not None:  # two groups: the latent weights at lr, the rest at other_lr
                latent, rest = split_binary_params(self.model, modes=("latent",))
                params = [{"params": latent}, {"params": rest, "lr": cfg.other_lr}]
            if cfg.optimizer == "adam":
                optimizer = torch.optim.Adam(params, lr=cfg.lr, **({"fused": True} if fused else {}))
            else:
                optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
            lambdas = [decay] * len(optimizer.param_groups)
        has_binary = any(True for _ in named_binary_layers(self.model))
        # Bop reports its flips; any other optimizer is left out of the counter, which then compares weight signs
        # (and does not probe - and so create - optimizer state for binary weights the optimizer does not train).
        reader = optimizer if cfg.mode == "bop" else None
        self.flip_counter = FlipCounter(self.model, reader) if has_binary else None  # None: a float model
        if cfg.decay_schedule == "interpolate":  # set before every step, from the step count (optimizer_step)
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def interpolated_rates(self, step: int) -> dict[str, float]:
        """``decay_schedule: "interpolate"``: the rates with an ``*_end`` at optimizer step ``step`` (steps done)."""
        if self._interpolations is None:
            cfg, total = self.config, int(self.trainer.estimated_stepping_batches)
            self._interpolations = {key: LinearInterpolation(getattr(cfg, key), getattr(cfg, f"{key}_end"), total)
                                    for key in INTERPOLATED if getattr(cfg, f"{key}_end") is not None}
        return {key: schedule(step) for key, schedule in self._interpolations.items()}

    def _set_interpolated_rates(self, step: int) -> None:
        """Write :meth:`interpolated_rates` of ``step`` into the param groups: gamma (as ``"lr"``), tau and sigma
        into the Bop groups, lr into the others (Adam's; in latent mode every group)."""
        if self.config.decay_schedule != "interpolate":
            return
        rates = self.interpolated_rates(step)
        flipper_groups = {id(g) for g in self._flipper.param_groups} if self._flipper is not None else set()
        for group in self.optimizers(use_pl_optimizer=False).param_groups:
            if id(group) in flipper_groups:
                for key, name in (("gamma", "lr"), ("threshold", "threshold"), ("sigma", "sigma")):
                    if key in rates:
                        group[name] = rates[key]
            elif "lr" in rates:
                group["lr"] = rates["lr"]

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        # The closure (forward + backward) runs inside step(); it changes no weight, so the snapshot taken here is the
        # state right before the update.
        # "interpolate": this step's rates (global_step: the steps done so far), and after it the next step's, so
        # that between steps the groups hold the rates the next step will use (what callbacks and logs read)
        self._set_interpolated_rates(self.trainer.global_step)
        counter = self.flip_counter
        if counter is not None:
            counter.before_step()
        optimizer.step(closure=optimizer_closure)
        self._set_interpolated_rates(self.trainer.global_step + 1)
        if self.config.mode == "latent":
            clip_latent_weights_(self.model)
        if counter is not None:
            counter.after_step()  # device tensors only; logged in on_train_batch_end at the steps Lightning writes

    def on_train_start(self) -> None:
        self._set_interpolated_rates(self.trainer.global_step)  # "interpolate": the first step's rates (or resumed)
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
        # Called after the callbacks' on_train_batch_end (which may set should_stop, making this a logged step) and
        # before Lightning writes the step's logs.
        if self._is_logged_step():
            self._check_nonfinite()
            if self.config.compile:
                self._log_step_metrics()
            counter = self.flip_counter
            if counter is not None:
                self.log("pi_t", counter.last_pi_t.float(), on_step=True, on_epoch=False)
                self.log("flips", counter.last_total.float(), on_step=True, on_epoch=False)
                self.log_dict({f"flips/{name}": n.float() for name, n in counter.last_flips.items()},
                              on_step=True, on_epoch=False)
        if batch_idx + 1 >= self.trainer.num_training_batches:
            self._log_epoch_means()

    def _is_logged_step(self) -> bool:
        """Whether Lightning writes this training step's metrics (every ``log_every_n_steps``, or a stopping step).

        Step metrics logged at any other step are never written, so they are not logged there at all.
        """
        connector = getattr(self.trainer, "_logger_connector", None)
        flag = getattr(connector, "should_update_logs", None)
        return True if flag is None else bool(flag)

    def _check_nonfinite(self) -> None:
        """compile path: refuse to go on once Bop has masked an inf/NaN gradient entry (one host sync per call).

        Bop with ``nonfinite="mask"`` keeps such an entry's ``m`` and weight and counts it on the device; this reads
        the counts of every binary weight. Runs at logged steps, epoch ends and before every checkpoint.
        """
        flipper = self._flipper
        if flipper is None:
            return
        counts = []
        for group in flipper.param_groups:
            if group.get("nonfinite") != "mask":
                continue
            for p in group["params"]:
                state = flipper.state.get(p)
                if state and "nonfinite_entries" in state:
                    counts.append(state["nonfinite_entries"].to(self.device))
        if not counts:
            return
        first, self._checked_step = self._checked_step, self.trainer.global_step
        entries = int(torch.stack(counts).sum())
        if entries:
            raise RuntimeError(
                f"non-finite gradients (inf or NaN) in {entries} binary-weight entries, in one of the optimizer "
                f"steps {first + 1} to {self.trainer.global_step} (counted from 1). With compile: true the gradients "
                "are checked every log_every_n_steps steps, at epoch ends and before checkpoints rather than at every "
                "step; Bop kept "
                "those entries' m and weights, but the other parameters may have taken the non-finite values. No "
                "checkpoint was written after the check; resume from the last checkpoint (with compile: false to "
                "stop at the exact step), or lower gamma/lr."
            )

    def on_train_epoch_end(self) -> None:
        self._log_epoch_means()  # when the epoch ended before its last batch (should_stop); else already logged
        self._check_nonfinite()
        values = dict(self._epoch_rates)
        counter = self.flip_counter
        if counter is not None:
            values["epoch_flips"] = _as_float(counter.epoch_total)
            values.update({f"epoch_flips/{k}": _as_float(v) for k, v in counter.epoch_flips.items()})
            if self.config.mode == "latent":
                values["latent_at_clip"] = latent_at_clip(self.model)
        self._log_once_per_epoch(values)

    # ------------------------------------------------------------------------------------------------------------
    # epoch means of the training loss and accuracy
    # ------------------------------------------------------------------------------------------------------------
    def _add_to_epoch(self, sums: torch.Tensor, images: int) -> None:
        """Add a training batch's ``[loss x images, correct images]`` to the epoch's sums (on the device: no host
        sync)."""
        self._epoch_sums = sums if self._epoch_sums is None else self._epoch_sums + sums
        self._epoch_images += images

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
        """gamma and tau of the first Bop group (or lr of the first latent-mode group; CEMA's alpha and gamma), for
        the logs; under ``"interpolate"`` also sigma and Adam's lr where they move."""
        optimizers = self.optimizers(use_pl_optimizer=False)
        group = optimizers.param_groups[0]
        if self.config.optimizer == "cema":
            return {"alpha": float(group["lr"]), "gamma": float(group["gamma"])}
        key = "gamma" if self.config.mode == "bop" else "lr"
        rates = {key: float(group["lr"])}
        if "threshold" in group:
            rates["threshold"] = float(group["threshold"])
        if self.config.sigma_end is not None:
            rates["sigma"] = float(group["sigma"])
        if self.config.lr_end is not None and self.config.mode == "bop" and len(optimizers.param_groups) > 1:
            rates["lr"] = float(optimizers.param_groups[-1]["lr"])
        return rates

    # The current epoch's flip counts, loss and accuracy sums and rates travel with mid-epoch checkpoints (plain
    # tensors, floats and dicts: loadable with weights_only=True).
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_nonfinite()  # compile path: no checkpoint holds the effect of a non-finite gradient
        if self.flip_counter is not None:
            counter = self.flip_counter
            checkpoint["flip_counter"] = {"epoch": self.current_epoch,
                                          "epoch_flips": {k: v.clone() for k, v in counter.epoch_flips.items()},
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
    counter.epoch_flips = state["epoch_flips"]  # the epoch total is their sum
    counter.epoch_steps = state["epoch_steps"]
