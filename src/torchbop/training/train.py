"""``train(config) -> dict``: one training run from a :class:`TrainConfig`, as the CLI and the experiments use it.

A run directory (``config.out``, default ``runs/<name>``) holds::

    config.yaml               the full configuration of the run
    checkpoints/last.ckpt     end of the latest epoch (or step, with checkpoint_every_n_steps): --resume continues it
    checkpoints/best.ckpt     lowest validation loss so far
    tb/version_0/             TensorBoard: losses, accuracies, pi_t and flips per layer per step, gamma per epoch
    csv/version_0/metrics.csv the same numbers as CSV: one table, continued across kills and resumes
    summary.json              what train() returns (strict JSON)

Which folder a run may write into (a resumed run continues in its own folder; a new run never takes over another
run's folder without ``overwrite``) is decided by :mod:`torchbop.training.run_folder`; everything the run depends
on (model arguments, optimizer hyperparameters, accelerator, data) is checked before that folder is created.

Resuming (``config.resume``: a checkpoint or a run directory) restores the model, Bop's ``m`` and Adam's moments, the
LR schedule, the loop counters, the global RNG states, the early-stopping counter and the training loader's position
(epoch and batch), so a killed run continues exactly where it stopped and ends with the weights an uninterrupted run
would have had. Checkpoints are written atomically (:class:`~torchbop.training.callbacks.AtomicCheckpointIO`).

Precision: ``precision: auto`` is resolved when the run starts (:func:`torchbop.training.precision.resolve_precision`:
bf16-mixed where the device computes in bf16 natively, 32 elsewhere), and the run continues with the resolved value:
``config.yaml`` (with a comment saying what ``auto`` became), the checkpoints' configuration (so ``--resume DIR``
keeps the precision the run started with, on any machine) and ``summary.json`` (``precision``, and
``precision_requested``) state what it used.

Memory format: the loaders produce batches in the memory format the model computes in (its ``memory_format``
attribute; ``torch.channels_last`` for the shipped convolution models, see :mod:`torchbop.models.memory_format`), so
no batch is converted on the way in.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from torchbop.data.paths import DatasetNotFoundError
from torchbop.errors import UserError, blame_user
from torchbop.models.memory_format import input_memory_format
from torchbop.training.callbacks import AtomicCheckpointIO, FlipEarlyStopping, RNGState, Throughput
from torchbop.training.checkpoints import RelocatableCheckpoint
from torchbop.training.config import TrainConfig
from torchbop.training.console import EpochLines
from torchbop.training.data import BinaryDataModule, Split
from torchbop.training.module import BinaryClassifier
from torchbop.training.precision import describe_resolution, resolve_precision
from torchbop.training.recalibration import BatchNormRecalibration
from torchbop.training.run_folder import clear_run_files, finished_summary, resolve_run_folder, write_summary
from torchbop.training.run_logs import ContinueLogs, run_loggers

__all__ = ["train", "check_config", "format_summary"]

#: TrainConfig.precision (once resolved, see torchbop.training.precision) -> Lightning's precision
PRECISION = {"32": "32-true", "bf16-mixed": "bf16-mixed"}


def check_config(config: TrainConfig, model: nn.Module | None = None) -> BinaryClassifier:
    """Build the run's module and optimizers once, so that every model argument and optimizer hyperparameter is
    checked before anything is written; return the module. Its failures are :class:`UserError` naming the key."""
    with blame_user(TypeError, ValueError, what=f"model {config.model!r} with model_kwargs {config.model_kwargs}"):
        module = BinaryClassifier(config, model=model)
    with blame_user(ValueError, RuntimeError, what="optimizer hyperparameters (gamma, threshold, sigma, alpha, lr, momentum)"):
        module.configure_optimizers()
    _check_accelerator(config.accelerator)
    return module


def _check_accelerator(name: str) -> None:
    """Refuse an accelerator this machine does not have (Lightning would, later, with a traceback)."""
    if name in ("auto", "cpu"):
        return
    kinds = ["cuda", "mps"] if name == "gpu" else [name]
    known = [k for k in kinds if k in AcceleratorRegistry]
    if not known:
        raise UserError(f"Invalid accelerator value: {name!r} (expected auto, cpu, gpu or one of "
                        f"{', '.join(AcceleratorRegistry)})")
    if not any(AcceleratorRegistry[k]["accelerator"].is_available() for k in known):
        raise UserError(f"accelerator {name!r}: this machine has no {name} device that torch can use. Use "
                        "--accelerator auto (the best available) or cpu.")


def train(
    config: TrainConfig,
    *,
    data: dict[str, Split] | None = None,
    model: nn.Module | None = None,
    callbacks: list[L.Callback] | tuple[L.Callback, ...] = (),
    loggers: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train, validate and test as ``config`` says; return the final metrics.

    Args:
        config: the run.
        data: in-memory ``{"train": (images, labels), "test": (images, labels)}`` instead of the dataset files.
        model: a network to train instead of ``create_model(config.model, ...)`` (e.g. a custom initialisation).
        callbacks: extra Lightning callbacks (experiments add their own recorders).
        loggers: write TensorBoard and CSV logs (off in tests, for speed).
        overwrite: start a new run in a folder that holds another run, removing that run's files first.

    Returns:
        ``test_acc``, ``test_loss`` with the ``protocol`` and ``test_weights`` they were measured under, the last
        validation metrics, ``best_val_loss``, checkpoint paths, ``epochs`` completed, ``global_step``,
        ``stopped_early``, ``wall_time_s``, ``train_images_per_s``, ``precision`` (the one used: ``"32"`` or
        ``"bf16-mixed"``) with ``precision_requested`` (``"auto"`` or the same), ``memory_format`` and ``out_dir``;
        with ``recalibrate_bn`` on, also ``recalibrate_bn``, ``bn_recalibrations`` (how many ran) and
        ``bn_recalibration_s`` (their seconds, :mod:`torchbop.training.recalibration`).
    """
    started = time.perf_counter()
    folder = resolve_run_folder(config, overwrite=overwrite, claim=rank_zero_only.rank == 0)
    if (summary := finished_summary(config, folder)) is not None:
        return {**summary, "already_finished": True}
    requested = config.precision
    precision_line = describe_resolution(requested, config.accelerator)
    config = config.replace(out=str(folder.path), precision=resolve_precision(requested, config.accelerator))
    out = folder.path
    ckpt_path = str(folder.checkpoint) if folder.checkpoint is not None else None

    L.seed_everything(config.seed, verbose=False)
    module = check_config(config, model)
    memory_format = input_memory_format(module.model)
    datamodule = BinaryDataModule(config, data=data, memory_format=memory_format)
    # The data is read (and checked) before the Trainer prints anything and before the run folder exists.
    with blame_user(DatasetNotFoundError, ValueError, OSError, what=f"data ({config.dataset})"):
        if rank_zero_only.rank == 0:
            datamodule.prepare_data()
        datamodule.setup("fit")
    datamodule.check_batches()

    evaluate = config.limit_eval_batches != 0
    ckpt_dir = out / "checkpoints"
    # best: lowest validation loss. Without validation there is no "best"; a second unmonitored checkpoint would
    # collide with "last" (Lightning keys checkpoint callbacks by monitor and frequency, not by file name).
    best = RelocatableCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor="val_loss", mode="min", save_top_k=1,
        save_on_train_epoch_end=True, enable_version_counter=False, auto_insert_metric_name=False,
    ) if evaluate else None
    last = [RelocatableCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
                            save_on_train_epoch_end=True, enable_version_counter=False)]
    if config.checkpoint_every_n_steps is not None:
        last.append(RelocatableCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                    every_n_train_steps=config.checkpoint_every_n_steps,
                                    enable_version_counter=False))
    extra: list[L.Callback] = [RNGState(), throughput := Throughput()]
    if not config.progress_bar:
        extra.append(EpochLines())  # before FlipEarlyStopping, whose stop message follows the epoch's line
    recalibration = None
    if config.recalibrate_bn != "off":  # before EpochLines' on_validation_end reads its logged cost
        extra.insert(0, recalibration := BatchNormRecalibration(config.recalibrate_bn, config.batch_size))
    early = None
    if config.early_stop_flip_epochs is not None:
        extra.append(early := FlipEarlyStopping(config.early_stop_flip_epochs))
    logger_list: list[Any] | bool = False
    if loggers:  # one CSV table and one TensorBoard folder per run, continued across resumes
        logger_list = run_loggers(out)
        extra.append(ContinueLogs())

    with blame_user(MisconfigurationException, ValueError, RuntimeError, what="accelerator/devices/strategy"):
        trainer = L.Trainer(
            max_epochs=config.epochs,
            accelerator=config.accelerator,
            devices=config.devices,
            num_nodes=config.num_nodes,
            strategy=config.strategy,
            precision=PRECISION[config.precision],
            logger=logger_list,
            callbacks=[*extra, *callbacks, *([best] if best is not None else []), *last],
            plugins=[AtomicCheckpointIO()],
            log_every_n_steps=config.log_every_n_steps,
            enable_progress_bar=config.progress_bar,
            enable_model_summary=config.progress_bar,
            num_sanity_val_steps=0,
            limit_train_batches=config.limit_train_batches,
            limit_val_batches=config.limit_eval_batches,
            limit_test_batches=config.limit_eval_batches,
            default_root_dir=out,
        )
    datamodule.check_batches(trainer.world_size)  # per process, now that the number of processes is known
    if trainer.is_global_zero:
        if overwrite and folder.checkpoint is None:
            clear_run_files(out)
        out.mkdir(parents=True, exist_ok=True)
        header = f"# {precision_line}\n" if requested != config.precision else ""
        (out / "config.yaml").write_text(header + yaml.safe_dump(config.to_dict(), sort_keys=False))

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
    epochs_done = trainer.current_epoch

    if config.test_weights == "best":
        if best is None or not best.best_model_path:
            raise RuntimeError("test_weights='best' but no best checkpoint was written (was validation disabled?)")
        test = trainer.test(module, datamodule=datamodule, ckpt_path=best.best_model_path, verbose=False)
    else:
        test = trainer.test(module, datamodule=datamodule, verbose=False)
    test_metrics = test[0] if test else {}

    last_path = ckpt_dir / "last.ckpt"
    result = {
        "name": config.name,
        "dataset": config.dataset,
        "protocol": config.protocol,
        "data": datamodule.describe(),
        "test_weights": config.test_weights,
        "test_acc": test_metrics.get("test_acc", float("nan")),
        "test_loss": test_metrics.get("test_loss", float("nan")),
        **fit_metrics,
        "best_val_loss": float(best.best_model_score) if best is not None and best.best_model_score is not None
        else None,
        "best_checkpoint": (best.best_model_path or None) if best is not None else None,
        "last_checkpoint": str(last_path.resolve()) if last_path.is_file() else None,
        "epochs": epochs_done,
        "global_step": trainer.global_step,
        "stopped_early": early is not None and early.stopped_epoch is not None,
        "wall_time_s": time.perf_counter() - started,
        "train_images_per_s": throughput.images_per_second,
        "train_images": throughput.images,
        "device": str(trainer.strategy.root_device),
        "world_size": trainer.world_size,
        "precision": config.precision,
        "precision_requested": requested,
        "memory_format": "channels_last" if memory_format == torch.channels_last else "contiguous",
        "out_dir": str(out),
    }
    if recalibration is not None:  # recalibrate_bn "end" / "eval": how often, and the seconds it took in all
        result.update(recalibrate_bn=config.recalibrate_bn, bn_recalibrations=recalibration.count,
                      bn_recalibration_s=recalibration.seconds)
    if trainer.is_global_zero:
        write_summary(out / "summary.json", result)
    return result


def format_summary(result: dict[str, Any]) -> str:
    """A few human-readable lines about a finished run."""
    where = "the test set" if result["protocol"] == "original" else "a held-out validation split"
    weights = "last weights" if result["test_weights"] == "last" else "lowest-validation-loss weights"
    lines = [
        f"{result['name']}: test accuracy {result['test_acc']:.4f} (loss {result['test_loss']:.4f}) on "
        f"{result['dataset']}, protocol {result['protocol']} (validated on {where}; tested with the {weights})",
        f"  data: {result['data']}",
        f"  {result['epochs']} epochs, {result['global_step']} steps"
        + (" (stopped early: no flips)" if result["stopped_early"] else "")
        + f", {result['wall_time_s']:.1f} s wall, {result['train_images_per_s']:.0f} training images/s"
        f" on {result['device']} x{result['world_size']}" + _precision_note(result)
        + (f", batch norm recalibrated {result['bn_recalibrations']}x ({result['bn_recalibration_s']:.1f} s)"
           if result.get("bn_recalibrations") else ""),
        f"  checkpoints: {result['last_checkpoint']} (last), {result['best_checkpoint']} (best)",
    ]
    return "\n".join(lines)


def _precision_note(result: dict[str, Any]) -> str:
    """``", precision 32 (auto), channels_last"``; empty for a summary written before these were recorded."""
    if "precision" not in result:
        return ""
    requested = result.get("precision_requested")
    note = f", precision {result['precision']}" + (" (auto)" if requested == "auto" else "")
    return note + (f", {result['memory_format']}" if result.get("memory_format") == "channels_last" else "")
