"""What the experiments share: data subsets, evaluation, a training run with its history, the stored form of a
``TrainConfig``, and small model helpers."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchbop.data import DeviceLoader, load_dataset
from torchbop.errors import UserError
from torchbop.experiments.spec import RunContext
from torchbop.nn import binary_parameters, named_binary_layers
from torchbop.training import TrainConfig, train
from torchbop.training.checkpoints import load_checkpoint, observer_state, stored_config
from torchbop.training.data import seeded_subset
from torchbop.training.history import History
from torchbop.training.optimizers import build_model
from torchbop.training.precision import resolve_precision

__all__ = [
    "load_data",
    "evaluate",
    "train_epochs_run",
    "percent",
    "number",
    "stored_train_config",
    "run_config",
    "seeded_model",
    "train_run",
    "resumable_checkpoint",
    "train_stored_run",
    "set_weight_quantizers",
    "freeze_binary_weights",
]

Split = tuple[torch.Tensor, torch.Tensor]

#: Fields of a TrainConfig that say where a run writes and reads and how it shows progress, not what it computes:
#: left out of a run's stored parameters (and so of its key), set again when the run executes.
LOCAL_FIELDS = ("out", "data_dir", "progress_bar")
#: TrainConfig fields added after the experiments' runs were first keyed, with the value every earlier run had: left
#: out of the stored parameters at that value, so that the keys (and the results stored under them) stay valid.
ADDED_FIELDS = {
    "compile": False,
    "other_lr": None,
    "decay_schedule": "step",
    "unbiased": False,
    "alpha": None,
    "gamma_end": None,
    "threshold_end": None,
    "sigma_end": None,
    "lr_end": None,
    "recalibrate_bn": "off",
}
#: What a run's result keeps of train()'s.
RESULT_KEYS = (
    "test_acc",
    "test_loss",
    "val_acc",
    "val_loss",
    "epochs",
    "global_step",
    "stopped_early",
    "protocol",
    "test_weights",
    "best_val_loss",
    "wall_time_s",
    "train_images_per_s",
)


def load_data(
    dataset: str, data_dir: str | None, subset: int | None = None, test_subset: int | None = None
) -> dict[str, Split]:
    """``{"train": (uint8 images [N, C, H, W], labels), "test": ...}``, each cut to ``seeded_subset(..., seed=0)``:
    the same images for every seed and configuration of an experiment."""
    return {
        "train": seeded_subset(load_dataset(dataset, data_dir, train=True), subset, seed=0),
        "test": seeded_subset(load_dataset(dataset, data_dir, train=False), test_subset, seed=0),
    }


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 1000) -> float:
    """Accuracy of ``model`` (in eval mode: batch norm uses its running statistics) on uint8 images."""
    was_training = model.training
    model.eval()
    correct = 0
    device = next(model.parameters()).device
    for x, y in DeviceLoader(split[0], split[1], batch_size, shuffle=False, device=device):
        correct += int((model(x).argmax(dim=1) == y).sum())
    model.train(was_training)
    return correct / len(split[1])


def set_weight_quantizers(model: nn.Module, make: Callable[[], nn.Module | None]) -> nn.Module:
    """Give every binary layer ``make()`` as its weight quantizer (``lambda: None``: use the real latent weights)."""
    for _, layer in named_binary_layers(model):
        layer.weight_quantizer = make()
    return model


def freeze_binary_weights(model: nn.Module) -> nn.Module:
    for w in binary_parameters(model):
        w.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------------------------------------------
# training runs
# ----------------------------------------------------------------------------------------------------------------
def stored_train_config(config: TrainConfig) -> dict[str, Any]:
    """``config`` as a run's parameters store it: every field but :data:`LOCAL_FIELDS`, and those of
    :data:`ADDED_FIELDS` at their old value."""
    return {
        k: v
        for k, v in config.to_dict().items()
        if k not in LOCAL_FIELDS and not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])
    }


def run_config(stored: dict[str, Any], out: Path) -> TrainConfig:
    """The stored config (:func:`stored_train_config`) of a run that is about to execute in ``out``."""
    return TrainConfig.from_dict({**stored, "out": str(out), "progress_bar": False})


def seeded_model(config: TrainConfig) -> nn.Module:
    """The config's model, initialized under the config's seed."""
    torch.manual_seed(config.seed)
    return build_model(config)


def train_run(
    config: TrainConfig,
    data: dict[str, Split],
    model: nn.Module,
    *,
    per_step: bool = False,
    log: Callable[[str], Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``torchbop.training.train`` on in-memory ``data`` without loggers, recording a
    :class:`~torchbop.training.history.History`; returns ``(result, history.as_dict())``.

    The run continues from its folder's last checkpoint (``config.out``: the run's scratch folder, one per run key)
    when an earlier attempt, killed, left one written under the same configuration (:func:`resumable_checkpoint`):
    the engine resumes bit-exactly, ``model`` ends with the weights and the History with the records of an
    uninterrupted run. Otherwise the run starts afresh, over whatever files an earlier attempt left there, except its
    checkpoints, which are moved beside the run's folder first (see :func:`_set_aside_checkpoints`).
    """
    history = History(per_step=per_step, log=log)
    folder = config.out_dir
    step = resumable_checkpoint(config)
    if step is None:
        _set_aside_checkpoints(folder, log)
        result = train(config, data=data, model=model, observers=[history], loggers=False, overwrite=True)
    else:
        if log is not None:
            log(f"resuming from step {step}: {folder / 'checkpoints' / 'last.ckpt'} (an interrupted attempt's)")
        # The run's stored record, not train()'s summary.json, says that a run is done. Without the summary, a
        # checkpoint that has finished training is restored (weights into ``model``, History) and tested again.
        (folder / "summary.json").unlink(missing_ok=True)
        result = train(config.replace(resume=str(folder)), data=data, model=model, observers=[history], loggers=False)
        # A run resumed after its last epoch validates nothing in this process: its last validation is the History's.
        validated = [row for row in history.epochs if "val_loss" in row]
        if validated:
            result = {**{k: validated[-1][k] for k in ("val_acc", "val_loss") if k in validated[-1]}, **result}
    return {k: v for k, v in result.items() if k in RESULT_KEYS}, history.as_dict()


def _set_aside_checkpoints(folder: Path, log: Callable[[str], Any] | None) -> None:
    """Move ``folder``'s ``checkpoints/`` that cannot be resumed to ``<folder>.stale-<time>/checkpoints`` (beside
    the run's scratch folder, which the runner deletes once the run is stored), so that starting afresh destroys no
    hours of training a code change made unresumable."""
    old = folder / "checkpoints"
    if not (old / "last.ckpt").is_file():
        return
    kept = folder.parent / f"{folder.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}"
    kept.mkdir(parents=True, exist_ok=True)
    shutil.move(str(old), str(kept / "checkpoints"))
    if log is not None:
        log(
            f"not resuming {old / 'last.ckpt'} (another configuration, no History, or unreadable): starting afresh; "
            f"the old checkpoints are kept in {kept}"
        )


def resumable_checkpoint(config: TrainConfig) -> int | None:
    """The global step of ``config.out``'s ``checkpoints/last.ckpt`` when it is intact, was written by a run of
    ``config`` (the same fields but :data:`LOCAL_FIELDS` and ``resume``, with ``precision`` as it resolves on this
    machine; a field the checkpoint's config lacks, added to :class:`TrainConfig` since, counts at its default) and
    holds a :class:`History` (the epochs before it), else None."""
    path = config.out_dir / "checkpoints" / "last.ckpt"
    if not path.is_file():
        return None
    try:
        checkpoint = load_checkpoint(path)
    except UserError:  # truncated or not a checkpoint: start afresh
        return None
    try:
        stored = stored_config(checkpoint, path)
    except UserError:
        return None
    if isinstance(stored, dict):
        stored = {**TrainConfig().to_dict(), **stored}
    expected = config.replace(precision=resolve_precision(config.precision, config.accelerator)).to_dict()
    ignored = (*LOCAL_FIELDS, "resume")
    if not isinstance(stored, dict) or (
        {k: v for k, v in stored.items() if k not in ignored} != {k: v for k, v in expected.items() if k not in ignored}
    ):
        return None
    if observer_state(checkpoint, "History") is None:
        return None  # written without a History (or by the Lightning engine): resumed, it would lose its epochs
    return int(checkpoint.get("global_step", 0))


def train_stored_run(
    params: dict[str, Any], ctx: RunContext, dataset: str, *, per_step: bool = False
) -> tuple[dict, dict, dict]:
    """A run whose ``params`` hold ``subset``, ``test_subset`` and the stored ``train`` config: loads the data and
    trains the config's model in the run's folder (continuing a killed attempt, see :func:`train_run`); returns
    ``(result, history, data)``."""
    data = load_data(dataset, ctx.data_dir, params["subset"], params["test_subset"])
    config = run_config(params["train"], ctx.run_dir)
    result, history = train_run(config, data, seeded_model(config), per_step=per_step, log=ctx.log)
    return result, history, data


def train_epochs_run(params: dict[str, Any], ctx: RunContext, dataset: str) -> dict[str, Any]:
    """:func:`train_stored_run`'s result with the per-epoch history and the numbers of training and test images: what
    the experiments that compare whole runs store."""
    result, history, data = train_stored_run(params, ctx, dataset)
    return {
        **result,
        "history": history["epochs"],
        "train_images": len(data["train"][1]),
        "test_images": len(data["test"][1]),
    }


def percent(value: float | None) -> str:
    """A fraction as a table cell: ``0.4467 -> '44.67%'``, None -> ``'-'``."""
    return "-" if value is None else f"{value:.2%}"


def number(value: float | None, fmt: str = ",.0f") -> str:
    """A number as a table cell in ``fmt`` (thousands separated by default), None -> ``'-'``."""
    return "-" if value is None else format(value, fmt)
