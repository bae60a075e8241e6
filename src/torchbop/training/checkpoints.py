"""Checkpoints: one plain dict, written atomically, read with ``torch.load(weights_only=True)``; and
:func:`load_model`, the one way back from a run to its trained network.

A checkpoint (written by :mod:`torchbop.training.train`) holds ``format`` (:data:`FORMAT`), ``config`` (the run's
``TrainConfig.to_dict()``), ``model`` (the network's ``state_dict``), ``optimizer`` (the optimizer's own
``state_dict``), ``scheduler``, ``epoch`` and ``batch`` (the epoch under way and the batches of it consumed: the
loader's position), ``global_step``, ``epochs_completed``, ``rng`` (python, numpy, torch and CUDA states),
``epoch_state`` (the epoch's loss and accuracy sums, rates and flip counts so far), ``early_stop``,
``best_val_loss`` and ``observers`` (the state of each observer, e.g. a
:class:`~torchbop.training.history.History`). It names no path, so a run folder can be moved or copied and resumed.

:func:`load_checkpoint` refuses a pickle that names any other global (``os.system``, a class) before anything of it
runs; a missing, truncated or garbage file is a :class:`~torchbop.errors.UserError` naming the file and, where the
folder holds one, the newest checkpoint that does load. Checkpoints of torchbop's earlier Lightning engine (up to
0.x with lightning 2.6) load in :func:`load_model`; resuming one is refused in one line (:func:`check_resumable`).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchbop.atomic_file import atomic_write
from torchbop.errors import UserError

__all__ = [
    "FORMAT",
    "load_checkpoint",
    "save_checkpoint",
    "newest_intact_checkpoint",
    "checkpoint_of",
    "stored_config",
    "observer_state",
    "check_resumable",
    "load_model",
]

#: the ``format`` entry of every checkpoint this engine writes
FORMAT = "torchbop-checkpoint-2"

# What torch.load raises for a file that is not a complete torch checkpoint (truncated zip, random bytes, ...).
_CORRUPT = (
    RuntimeError,
    EOFError,
    ValueError,
    OSError,
    zipfile.BadZipFile,
    pickle.UnpicklingError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    UnicodeDecodeError,
)


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save(checkpoint, path)`` such that ``path`` holds its old content or the complete new one, durably
    (a temporary file in the same folder, fsynced, renamed over ``path``)."""
    with atomic_write(path, "wb", durable=True) as f:
        torch.save(checkpoint, f)


def _load(path: Path, map_location: Any) -> dict[str, Any]:
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"expected a dict, found a {type(checkpoint).__name__}")
    return checkpoint


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a bad file raises :class:`UserError` naming it and the fix."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path}: no such checkpoint file. Give a run folder (its checkpoints/last.ckpt is used) "
            "or the path of a .ckpt file."
        )
    try:
        return _load(path, map_location)
    except pickle.UnpicklingError as error:
        if "global" in str(error).lower():  # a reference to a function or class: what code execution needs
            raise UserError(
                f"{path}: refused to load: the file contains Python objects other than tensors and plain data, and "
                "loading them could run arbitrary code. torchbop reads checkpoints with torch.load(weights_only=True) "
                "only; a checkpoint written by torchbop always loads that way. Use a checkpoint from a source you "
                "trust, written by torchbop."
            ) from error
        raise _corrupt(path, error) from error
    except _CORRUPT as error:
        raise _corrupt(path, error) from error


def _corrupt(path: Path, error: BaseException) -> UserError:
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) and "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]  # torch's paragraph suggesting weights_only=False
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = lines[0] if lines else type(error).__name__
    alternative = newest_intact_checkpoint(path.parent, exclude=path)
    if alternative is None:
        fix = "No other intact checkpoint is in that folder; start the run again (with --overwrite to reuse it)."
    else:
        fix = (
            f"The newest intact checkpoint there is {alternative[0]} (step {alternative[1]}): resume from it "
            f"with --resume {alternative[0]}"
        )
    return UserError(f"{path}: truncated or not a torch checkpoint ({type(error).__name__}: {detail}). {fix}")


def newest_intact_checkpoint(
    folder: str | os.PathLike[str], exclude: str | os.PathLike[str] | None = None
) -> tuple[Path, int] | None:
    """The ``*.ckpt`` in ``folder`` (other than ``exclude``) with the highest global step that loads, and that step."""
    best: tuple[Path, int] | None = None
    folder = Path(folder)
    for candidate in sorted(folder.glob("*.ckpt")) if folder.is_dir() else []:
        if exclude is not None and candidate.resolve() == Path(exclude).resolve():
            continue
        try:
            step = int(_load(candidate, "cpu").get("global_step", -1))
        except _CORRUPT:
            continue
        if best is None or step > best[1]:
            best = (candidate, step)
    return best


def checkpoint_of(source: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """``(checkpoint file, run folder it belongs to or None)`` of a run folder or a checkpoint path."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path / "checkpoints" / "last.ckpt", path
    return path, (path.parent.parent if path.parent.name == "checkpoints" else None)


def _is_legacy(checkpoint: dict[str, Any]) -> bool:
    return checkpoint.get("format") != FORMAT and "hyper_parameters" in checkpoint and "state_dict" in checkpoint


def stored_config(checkpoint: dict[str, Any], path: Any) -> dict[str, Any]:
    """The ``TrainConfig`` fields a checkpoint was written under (also an earlier engine's checkpoint)."""
    config = (
        checkpoint.get("hyper_parameters", {}).get("config") if _is_legacy(checkpoint) else checkpoint.get("config")
    )
    if not isinstance(config, dict):
        raise UserError(f"{path}: not a torchbop training checkpoint (no stored configuration)")
    return config


def observer_state(checkpoint: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The saved state of the observer named ``name`` (its class name, e.g. ``"History"``), or None."""
    return checkpoint.get("observers", {}).get(name) if checkpoint.get("format") == FORMAT else None


def check_resumable(checkpoint: dict[str, Any], path: Any) -> None:
    """Refuse, in one line, to resume a checkpoint of another format (the earlier Lightning engine's)."""
    if checkpoint.get("format") != FORMAT:
        what = (
            "written by torchbop's earlier Lightning engine"
            if _is_legacy(checkpoint)
            else "not a torchbop training checkpoint"
        )
        raise UserError(
            f"{path}: {what}; this version cannot resume it (torchbop.load_model and `torchbop "
            "export` still read its weights). Start the run again, from its config.yaml."
        )


def load_model(source: str | os.PathLike[str]) -> nn.Module:
    """The trained network of a run folder (its ``checkpoints/last.ckpt``) or of a checkpoint file, in eval mode.

    The model is rebuilt from the checkpoint's configuration (``create_model(model, mode=..., **model_kwargs)``)
    and given the stored weights, on the CPU. Checkpoints of the earlier Lightning engine load too.

    Raises:
        UserError: no such file, not a torchbop checkpoint, or weights that do not fit the stored model.
    """
    from torchbop.training.config import TrainConfig
    from torchbop.training.optimizers import build_model

    path, _ = checkpoint_of(source)
    checkpoint = load_checkpoint(path)
    try:
        config = TrainConfig.from_dict({**stored_config(checkpoint, path), "out": None})
        model = build_model(config)
    except (TypeError, ValueError) as error:
        raise UserError(f"{path}: the stored configuration does not build a model ({error})") from error
    if _is_legacy(checkpoint):
        state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    else:
        state = checkpoint["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise UserError(f"{path}: the stored weights do not fit {config.model} ({first})") from error
    return model.eval()
