"""``train(config) -> dict``: one training run, as one explicit loop on Lightning Fabric, top to bottom.

Fabric brings the devices, the processes (DDP and other strategies; ``torchrun`` and SLURM launch) and the precision
(bf16 autocast); the loop is here: epochs, steps, the rate schedules, evaluation, the logging and checkpoint cadence,
early stopping on flips, the compiled step. A run directory (``config.out``, default ``runs/<name>``) holds::

    config.yaml               the full configuration of the run (precision resolved, see training/precision.py)
    checkpoints/last.ckpt     end of the latest epoch (or step, with checkpoint_every_n_steps): --resume continues it
    checkpoints/best.ckpt     lowest validation loss so far
    tb/version_0/             TensorBoard: losses, accuracies, pi_t and flips per layer per step, rates per epoch
    csv/version_0/metrics.csv the same numbers as CSV: one table, continued across kills and resumes
    summary.json              what train() returns (strict JSON)

**A step** (``run_epoch`` below): set the step's rates (``decay_schedule: interpolate``), forward and loss under the
run's autocast (compiled with ``compile: true``), backward, the optimizer step between the flip counter's two reads,
the latent-weight clip, the epoch sums (device tensors: no host sync per step), then the log row every
``log_every_n_steps`` steps and ``last.ckpt`` every ``checkpoint_every_n_steps``. **An epoch's end**: the epoch means
(summed over the processes), batch-norm recalibration and validation, the epoch's schedule step, early stopping, the
epoch's log row, then ``best.ckpt`` and ``last.ckpt``.

**Resuming** (``config.resume``: a checkpoint or a run directory) restores the model, the optimizer's state, the
schedule, the step and epoch counters, the loader's position (epoch and batches consumed), the RNG states, the epoch's
sums and flip counts so far, the early-stopping counter, the best validation loss and every observer's state (see
:mod:`torchbop.training.checkpoints`): a killed run ends with the weights, logs and records of an uninterrupted one.

**Multi-process**: every process holds the whole dataset on its device and reads its own shard of each epoch's
permutation; evaluation is not sharded (each process evaluates the whole split). The channels_last models' 4-D
weights are put in channels_last too, the layout their gradients arrive in, so DDP's buckets need no copy.

**compile** (``TrainConfig.compile``): :func:`loss_and_accuracy` is compiled with ``torch.compile``
(:data:`COMPILE_OPTIONS`; the backward follows through AOTAutograd); evaluation stays eager. Bop masks inf/NaN
gradient entries on the device instead of raising (a host sync per step), and the loop reads that count at logged
steps, epoch ends and before every checkpoint: a non-finite gradient stops the run there, and no checkpoint holds it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from lightning.fabric import Fabric, seed_everything
from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch import nn

from torchbop.data import DatasetNotFoundError, DeviceLoader
from torchbop.errors import blame_user
from torchbop.metrics import latent_at_clip
from torchbop.models.memory_format import input_memory_format
from torchbop.nn import clip_latent_weights_
from torchbop.training.checkpoints import FORMAT, check_resumable, load_checkpoint, save_checkpoint
from torchbop.training.config import TrainConfig
from torchbop.training.data import load_split, make_splits, recalibrate_batch_norm
from torchbop.training.history import Observer
from torchbop.training.optimizers import Optimization, build_model, build_optimizer
from torchbop.training.precision import describe_resolution, resolve_precision
from torchbop.training.run_folder import (
    clear_run_files,
    finished_summary,
    format_summary,
    resolve_run_folder,
    write_summary,
)
from torchbop.training.run_logs import RunLogs

__all__ = ["train", "check_config", "format_summary", "loss_and_accuracy", "Run", "COMPILE_OPTIONS"]

#: TrainConfig.precision (resolved) -> Fabric's precision
PRECISION = {"32": "32-true", "bf16-mixed": "bf16-mixed"}
#: keyword arguments of ``torch.compile`` with ``compile: true`` (benchmarks and tests set them)
COMPILE_OPTIONS: dict[str, Any] = {}


def loss_and_accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, sums_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training batch's forward pass: ``(loss, accuracy, [loss x images, correct images])``, the last in
    ``sums_dtype`` (float64; float32 on MPS): the batch's share of the epoch means."""
    logits = model(images)
    loss = F.cross_entropy(logits.float(), labels)
    correct = logits.argmax(dim=1) == labels
    sums = torch.stack((loss.detach().to(sums_dtype) * labels.numel(), correct.sum().to(sums_dtype)))
    return loss, correct.float().mean(), sums


def check_config(config: TrainConfig, model: nn.Module | None = None) -> nn.Module:
    """Build the run's model and optimizer once, so that every model argument and optimizer hyperparameter is checked
    before anything is written; return the model. Its failures are :class:`UserError` naming the key."""
    with blame_user(TypeError, ValueError, what=f"model {config.model!r} with model_kwargs {config.model_kwargs}"):
        model = model if model is not None else build_model(config)
    with blame_user(
        ValueError, RuntimeError, what="optimizer hyperparameters (gamma, threshold, sigma, alpha, lr, momentum)"
    ):
        build_optimizer(config, model)
    return model


@dataclass
class Run:
    """The state of a run the loop carries from step to step (what observers read)."""

    config: TrainConfig
    fabric: Fabric
    model: nn.Module
    opt: Optimization
    batches: int  # training batches per epoch
    epoch: int = 0
    step: int = 0  # optimizer steps done
    batch: int = 0  # batches of the current epoch consumed
    should_stop: bool = False
    step_metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    # this epoch's [loss x images, correct images] (device tensor), images and rates at its start
    sums: torch.Tensor | None = None
    images: int = 0
    rates: dict[str, float] = field(default_factory=dict)
    epochs_without_flips: int = 0
    stopped_epoch: int | None = None
    best_val_loss: float | None = None
    checked_step: int = 0  # compile path: the last step checked for non-finite gradients

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.opt.optimizer

    @property
    def counter(self) -> Any:
        return self.opt.counter


def train(
    config: TrainConfig,
    *,
    data: dict[str, Any] | None = None,
    model: nn.Module | None = None,
    observers: Iterable[Observer] = (),
    loggers: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train, validate and test as ``config`` says; return the final metrics.

    Args:
        config: the run.
        data: in-memory ``{"train": (images, labels), "test": (images, labels)}`` instead of the dataset files.
        model: a network to train instead of ``create_model(config.model, ...)`` (e.g. a custom initialisation).
        observers: :class:`~torchbop.training.history.Observer` objects (a History, a WallClockBudget, ...).
        loggers: write TensorBoard and CSV logs (off in tests, for speed).
        overwrite: start a new run in a folder that holds another run, removing that run's files first.

    Returns:
        ``test_acc``, ``test_loss`` with the ``protocol`` and ``test_weights`` they were measured under, the last
        validation metrics, ``best_val_loss``, checkpoint paths, ``epochs`` completed, ``global_step``,
        ``stopped_early``, ``wall_time_s``, ``train_images_per_s``, ``precision`` (``"32"`` or ``"bf16-mixed"``) with
        ``precision_requested``, ``memory_format``, ``device``, ``world_size`` and ``out_dir``; with
        ``recalibrate_bn`` on, also ``bn_recalibrations`` and ``bn_recalibration_s``.
    """
    started = time.perf_counter()
    observers = list(observers)
    # --- the run folder, the configuration, the data: all checked before anything is written -------------------
    folder = resolve_run_folder(config, overwrite=overwrite, claim=rank_zero_only.rank == 0)
    if (summary := finished_summary(config, folder)) is not None:
        return {**summary, "already_finished": True}
    requested = config.precision
    precision_line = describe_resolution(requested, config.accelerator)
    config = config.replace(out=str(folder.path), precision=resolve_precision(requested, config.accelerator))
    out, ckpt_dir = folder.path, folder.path / "checkpoints"
    checkpoint = None
    if folder.checkpoint is not None:
        checkpoint = load_checkpoint(folder.checkpoint)
        check_resumable(checkpoint, folder.checkpoint)
    seed_everything(config.seed, verbose=False)
    model = check_config(config, model)
    with blame_user(DatasetNotFoundError, ValueError, OSError, what=f"data ({config.dataset})"):
        if data is None and config.download and rank_zero_only.rank == 0:
            load_split(config, train=True, download=True), load_split(config, train=False, download=True)
        splits = make_splits(config, data)
    splits.check_batches(config.batch_size)
    with blame_user(ValueError, RuntimeError, TypeError, what="accelerator/devices/num_nodes/strategy"):
        fabric = Fabric(
            accelerator=config.accelerator,
            devices=config.devices,
            num_nodes=config.num_nodes,
            strategy=config.strategy,
            precision=PRECISION[config.precision],
        )
        fabric.launch()  # several processes: here they start (DDP's launcher runs the same command again)
    splits.check_batches(config.batch_size, fabric.world_size)
    if fabric.is_global_zero:
        if overwrite and folder.checkpoint is None:
            clear_run_files(out)
        out.mkdir(parents=True, exist_ok=True)
        header = f"# {precision_line}\n" if requested != config.precision else ""
        (out / "config.yaml").write_text(header + yaml.safe_dump(config.to_dict(), sort_keys=False))

    # --- model, optimizer, loaders on the device --------------------------------------------------------------
    memory_format = input_memory_format(model)
    model.to(fabric.device)
    if fabric.world_size > 1 and memory_format == torch.channels_last:
        model.to(memory_format=torch.channels_last)  # weights in their gradients' layout: DDP's buckets match
    loader = DeviceLoader(
        *splits.train,
        config.batch_size,
        shuffle=True,
        augment=config.augment,
        seed=config.seed,
        device=fabric.device,
        drop_last=True,
        memory_format=memory_format,
        rank=fabric.global_rank,
        world_size=fabric.world_size,
    )
    batches = _limit(config.limit_train_batches, len(loader))
    opt = build_optimizer(config, model, total_steps=max(1, config.epochs * batches))
    net, optimizer = fabric.setup(model, opt.optimizer)  # net: the model as Fabric runs it (DDP under ddp)
    step_fn = torch.compile(loss_and_accuracy, **COMPILE_OPTIONS) if config.compile else loss_and_accuracy
    forward_net = net if fabric.world_size > 1 else model  # one process: no wrapper in the hot path
    sums_dtype = torch.float32 if fabric.device.type == "mps" else torch.float64  # MPS has no float64
    # mode latent: the clip of the latent weights, the model's own where it declares one (QuickNet: Larq Zoo's 1.25)
    latent_bound = float(getattr(model, "latent_weight_bound", 1.0))
    run = Run(config, fabric, model, opt, batches)
    if checkpoint is not None:
        _restore(run, checkpoint, observers)
    logs = RunLogs(out, run.step) if loggers and fabric.is_global_zero else None
    bar = config.progress_bar and fabric.is_global_zero
    recalibrations = {"count": 0, "seconds": 0.0, "step": -1}  # "step": of the last one

    def evaluate(split: tuple[torch.Tensor, torch.Tensor], stage: str) -> dict[str, float]:
        limit = _limit(config.limit_eval_batches, -(-len(split[1]) // config.eval_batch_size))
        if limit == 0:
            return {}
        eval_loader = DeviceLoader(
            *split, config.eval_batch_size, shuffle=False, device=fabric.device, memory_format=memory_format
        )
        total = torch.zeros(3, dtype=sums_dtype, device=fabric.device)
        model.eval()
        with torch.no_grad(), fabric.autocast():
            for _, (x, y) in zip(range(limit), eval_loader):
                logits = forward_net(x)  # under DDP: batch norm's statistics broadcast from rank 0 first
                total += torch.stack(
                    (
                        F.cross_entropy(logits.float(), y, reduction="sum").to(sums_dtype),
                        (logits.argmax(1) == y).sum().to(sums_dtype),
                        total.new_tensor(len(y)),
                    )
                )
        model.train()
        loss, correct, images = total.tolist()
        return {f"{stage}_loss": loss / images, f"{stage}_acc": correct / images}

    def recalibrate() -> float:
        seconds = recalibrate_batch_norm(
            model,
            *splits.train,
            config.batch_size,
            device=fabric.device,
            memory_format=memory_format,
            forward_context=fabric.autocast,
        )
        recalibrations.update(
            count=recalibrations["count"] + 1, seconds=recalibrations["seconds"] + seconds, step=run.step
        )
        return seconds

    def check_nonfinite() -> None:
        """compile path: stop once Bop has masked an inf/NaN gradient entry (one host sync per call)."""
        if not config.compile or run.opt.flipper is None:
            return
        first, run.checked_step = run.checked_step, run.step
        if entries := run.opt.nonfinite_entries():
            raise RuntimeError(
                f"non-finite gradients (inf or NaN) in {entries} binary-weight entries, in one of the optimizer "
                f"steps {first + 1} to {run.step} (counted from 1). With compile: true the gradients are checked "
                "every log_every_n_steps steps, at epoch ends and before checkpoints rather than at every step; Bop "
                "kept those entries' m and weights, but the other parameters may have taken the non-finite values. No "
                "checkpoint was written after the check; resume from the last checkpoint (with compile: false to stop "
                "at the exact step), or lower gamma/lr."
            )

    def save(name: str) -> None:
        check_nonfinite()
        if logs is not None:
            logs.sync()  # every row logged before the checkpoint is on disk once the checkpoint is
        if fabric.is_global_zero:
            save_checkpoint(_checkpoint(run, observers), ckpt_dir / name)

    # --- the loop ----------------------------------------------------------------------------------------------
    model.train()
    if opt.interpolations:
        opt.set_interpolated_rates(run.step)  # the first (or the resumed) step's rates
    for o in observers:
        o.on_train_start(run)
    train_seconds, train_images, val_metrics = 0.0, 0, {}
    for epoch in range(run.epoch, config.epochs):
        if run.should_stop:
            break
        run.epoch = epoch
        if run.batch == 0:  # a new epoch (not one resumed in its middle)
            run.sums, run.images, run.rates = None, 0, opt.rates(config)
            if run.counter is not None:
                run.counter.reset_epoch()
            for o in observers:
                o.on_epoch_start(run)
        epoch_started = time.perf_counter()
        loader.set_epoch(epoch)
        batch_iter = iter(loader)
        for _ in range(run.batch):  # resumed mid-epoch: the batches already trained (their draws replayed)
            next(batch_iter)
        progress = _progress_bar(bar, batches, run.batch, f"epoch {epoch + 1}/{config.epochs}")
        _sync(fabric.device)
        clock, first_batch = time.perf_counter(), run.batch
        for _, (x, y) in zip(range(batches - run.batch), batch_iter):
            for o in observers:
                o.on_batch_start(run, (x, y))
            # forward, loss and backward (autocast under bf16-mixed), then the step between the flip counts
            with fabric.autocast():
                loss, acc, sums = step_fn(forward_net, x, y, sums_dtype)
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            for o in observers:
                o.on_before_step(run)
            if run.counter is not None:
                run.counter.before_step()
            optimizer.step()
            run.step += 1
            if opt.interpolations:  # between steps the groups hold the next step's rates
                opt.set_interpolated_rates(run.step)
            if config.mode == "latent":
                clip_latent_weights_(model, bound=latent_bound)
            if run.counter is not None:
                run.counter.after_step()
            run.sums = sums if run.sums is None else run.sums + sums
            run.images += len(y)
            run.step_metrics = {"train_loss_step": loss.detach(), "train_acc_step": acc}
            run.batch += 1
            for o in observers:
                o.on_batch_end(run)
            if progress is not None:
                progress.update()
            # the logging cadence: the step's numbers every log_every_n_steps steps (the only host sync)
            if run.step % config.log_every_n_steps == 0 or run.should_stop:
                check_nonfinite()
                if logs is not None:
                    row = dict(run.step_metrics)
                    if run.counter is not None:
                        row.update(
                            pi_t=run.counter.last_pi_t,
                            flips=run.counter.last_total,
                            **{f"flips/{k}": v for k, v in run.counter.last_flips.items()},
                        )
                    logs.log({**row, "epoch": epoch}, run.step - 1)
            # the checkpoint cadence within an epoch (its end writes last.ckpt anyway)
            every = config.checkpoint_every_n_steps
            if every is not None and run.step % every == 0 and run.batch < batches:
                save("last.ckpt")
            if run.should_stop:
                break
        _sync(fabric.device)
        train_seconds += time.perf_counter() - clock
        train_images += (run.batch - first_batch) * config.batch_size * fabric.world_size
        if progress is not None:
            progress.close()

        # --- the epoch's end: means, validation, schedule, early stopping, logs, checkpoints -----------------
        check_nonfinite()
        metrics: dict[str, float] = {}
        if run.sums is not None:  # over every process's batches
            loss_sum, correct, images = fabric.all_reduce(
                torch.cat((run.sums, run.sums.new_tensor([run.images]))), reduce_op="sum"
            ).tolist()
            metrics.update(train_loss_epoch=loss_sum / images, train_acc_epoch=correct / images)
        metrics.update(run.rates)
        if run.counter is not None:
            metrics["epoch_flips"] = int(run.counter.epoch_total)
            metrics.update({f"epoch_flips/{k}": int(v) for k, v in run.counter.epoch_flips.items()})
            if config.mode == "latent":
                metrics["latent_at_clip"] = latent_at_clip(model, latent_bound)
        if config.limit_eval_batches != 0:
            if config.recalibrate_bn == "eval":
                metrics["bn_recalibration_s"] = recalibrate()
            val_metrics = evaluate(splits.val, "val")
            metrics.update(val_metrics)
        finished = run.batch >= batches
        if finished and opt.scheduler is not None:
            opt.scheduler.step()
        if finished and config.early_stop_flip_epochs is not None and run.counter is not None:
            run.epochs_without_flips = 0 if metrics["epoch_flips"] > 0 else run.epochs_without_flips + 1
            if run.epochs_without_flips >= config.early_stop_flip_epochs:
                run.should_stop, run.stopped_epoch = True, epoch
        for o in observers:
            o.on_epoch_end(run, metrics)
        if logs is not None:
            logs.log({**metrics, "epoch": epoch}, run.step - 1)
        if fabric.is_global_zero and not config.progress_bar:
            print(
                format_epoch_line(
                    epoch + 1, config.epochs, metrics, metrics.get("epoch_flips"), time.perf_counter() - epoch_started
                ),
                flush=True,
            )
        if run.stopped_epoch == epoch and fabric.is_global_zero:
            print(
                f"FlipEarlyStopping: no weight flipped in {run.epochs_without_flips} consecutive epochs; "
                f"stopping after epoch {epoch}",
                flush=True,
            )
        if finished:  # the checkpoints of a finished epoch continue with the next one
            run.epoch, run.batch = epoch + 1, 0
        if "val_loss" in metrics and (run.best_val_loss is None or metrics["val_loss"] < run.best_val_loss):
            run.best_val_loss = metrics["val_loss"]
            save("best.ckpt")
        save("last.ckpt")
    for o in observers:
        o.on_train_end(run)

    # --- the test ----------------------------------------------------------------------------------------------
    best_path = ckpt_dir / "best.ckpt"
    if config.test_weights == "best":
        if run.best_val_loss is None or not best_path.is_file():
            raise RuntimeError("test_weights='best' but no best checkpoint was written (was validation disabled?)")
        model.load_state_dict(load_checkpoint(best_path)["model"])
    # "eval" with the last weights: the validation after the last step recalibrated these very weights already
    if config.recalibrate_bn != "off" and not (config.test_weights == "last" and recalibrations["step"] == run.step):
        recalibrate()
    test_metrics = evaluate(splits.test, "test")
    if logs is not None:
        logs.log({**test_metrics, "epoch": run.epoch}, run.step)
        logs.close()

    last_path = ckpt_dir / "last.ckpt"
    result = {
        "name": config.name,
        "dataset": config.dataset,
        "protocol": config.protocol,
        "data": splits.describe(config),
        "test_weights": config.test_weights,
        "test_acc": test_metrics.get("test_acc", float("nan")),
        "test_loss": test_metrics.get("test_loss", float("nan")),
        **val_metrics,
        "best_val_loss": run.best_val_loss,
        "best_checkpoint": str(best_path.resolve()) if run.best_val_loss is not None else None,
        "last_checkpoint": str(last_path.resolve()) if last_path.is_file() else None,
        "epochs": run.epoch,
        "global_step": run.step,
        "stopped_early": run.stopped_epoch is not None,
        "wall_time_s": time.perf_counter() - started,
        "train_images_per_s": train_images / train_seconds if train_seconds > 0 else float("nan"),
        "train_images": train_images,
        "device": str(fabric.device),
        "world_size": fabric.world_size,
        "precision": config.precision,
        "precision_requested": requested,
        "memory_format": "channels_last" if memory_format == torch.channels_last else "contiguous",
        "out_dir": str(out),
    }
    if config.recalibrate_bn != "off":
        result.update(
            recalibrate_bn=config.recalibrate_bn,
            bn_recalibrations=recalibrations["count"],
            bn_recalibration_s=recalibrations["seconds"],
        )
    if fabric.is_global_zero:
        write_summary(out / "summary.json", result)
    return result


# ----------------------------------------------------------------------------------------------------------------
# checkpoints: what a run is, as one dict (see torchbop.training.checkpoints)
# ----------------------------------------------------------------------------------------------------------------
def _checkpoint(run: Run, observers: list[Observer]) -> dict[str, Any]:
    counter = run.counter
    np_state = np.random.get_state()
    return {
        "format": FORMAT,
        "config": run.config.to_dict(),
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.opt.scheduler.state_dict() if run.opt.scheduler is not None else None,
        "epoch": run.epoch,
        "batch": run.batch,
        "global_step": run.step,
        "epochs_completed": run.epoch,
        "stopped_early": run.stopped_epoch is not None,
        "rng": {
            "python": random.getstate(),
            "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
            **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_initialized() else {}),
        },
        "epoch_state": {
            "sums": run.sums.detach().cpu() if run.sums is not None else None,
            "images": run.images,
            "rates": dict(run.rates),
            "flips": {k: v.cpu() for k, v in counter.epoch_flips.items()} if counter is not None else None,
            "flip_steps": counter.epoch_steps if counter is not None else 0,
        },
        "early_stop": {"epochs_without_flips": run.epochs_without_flips, "stopped_epoch": run.stopped_epoch},
        "best_val_loss": run.best_val_loss,
        "observers": {
            _key(o, i, observers): o.state_dict() for i, o in enumerate(observers) if hasattr(o, "state_dict")
        },
    }


def _restore(run: Run, checkpoint: dict[str, Any], observers: list[Observer]) -> None:
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    if run.opt.scheduler is not None and checkpoint["scheduler"] is not None:
        run.opt.scheduler.load_state_dict(checkpoint["scheduler"])
    run.epoch, run.batch, run.step = checkpoint["epoch"], checkpoint["batch"], checkpoint["global_step"]
    run.checked_step = run.step
    state = checkpoint["epoch_state"]
    if run.batch > 0:  # mid-epoch: the epoch's sums, rates and flips so far
        device = run.fabric.device
        run.sums = state["sums"].to(device) if state["sums"] is not None else None
        run.images, run.rates = state["images"], dict(state["rates"])
        if run.counter is not None:
            run.counter.epoch_flips = state["flips"]
            run.counter.epoch_steps = state["flip_steps"]
    run.epochs_without_flips = checkpoint["early_stop"]["epochs_without_flips"]
    run.stopped_epoch = checkpoint["early_stop"]["stopped_epoch"]
    run.should_stop = run.stopped_epoch is not None and run.config.early_stop_flip_epochs is not None
    run.best_val_loss = checkpoint["best_val_loss"]
    for i, o in enumerate(observers):
        if hasattr(o, "load_state_dict") and (key := _key(o, i, observers)) in checkpoint["observers"]:
            o.load_state_dict(checkpoint["observers"][key])
    rng = checkpoint["rng"]
    random.setstate(_as_tuple(rng["python"]))
    torch.set_rng_state(rng["torch"])
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(rest[0]), int(rest[1]), rest[2]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _key(observer: Observer, index: int, observers: list[Observer]) -> str:
    """An observer's name in checkpoints: its class name (with its position when the class is there twice)."""
    name = type(observer).__name__
    return name if sum(type(o).__name__ == name for o in observers) == 1 else f"{name}#{index}"


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# ----------------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------------
def _limit(limit: int | float | None, available: int) -> int:
    """Batches to run of ``available``: all (None), ``limit`` (int) or a fraction (float)."""
    if limit is None:
        return available
    return min(available, limit if isinstance(limit, int) else int(available * limit))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _progress_bar(enabled: bool, total: int, done: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=desc, leave=True, dynamic_ncols=True)


def format_epoch_line(epoch: int, epochs: int, metrics: dict[str, float], flips: int | None, seconds: float) -> str:
    """One epoch's line (printed without a progress bar); ``epoch`` counts from 1.

    Example:
        >>> format_epoch_line(2, 10, {"train_loss_epoch": 0.43214, "train_acc_epoch": 0.875, "val_loss": 0.5012,
        ...                   "val_acc": 0.83}, 1234, 3.24)
        'epoch 2/10: train loss 0.4321 acc 0.8750, val loss 0.5012 acc 0.8300, 1234 flips, 3.2 s'
    """
    parts = []
    for stage, suffix in (("train", "_epoch"), ("val", "")):
        if f"{stage}_loss{suffix}" in metrics:
            loss, acc = metrics[f"{stage}_loss{suffix}"], metrics[f"{stage}_acc{suffix}"]
            parts.append(f"{stage} loss {loss:.4f} acc {acc:.4f}")
    if flips is not None:
        parts.append(f"{int(flips)} flips")
    parts.append(f"{seconds:.1f} s")
    if "bn_recalibration_s" in metrics:  # recalibrate_bn "eval": included in the epoch's seconds
        parts[-1] += f" (batch norm recalibration {metrics['bn_recalibration_s']:.1f} s)"
    return f"epoch {epoch}/{epochs}: " + ", ".join(parts)
