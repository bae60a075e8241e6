"""Reading checkpoints safely, and checkpoint callbacks whose run folder can be moved or copied.

* :func:`load_checkpoint` is the one way torchbop reads a checkpoint (the CLI's ``--resume``, Lightning's restore and
  test-time loading through :class:`~torchbop.training.callbacks.AtomicCheckpointIO`): ``torch.load`` with
  ``weights_only=True``, which unpickles tensors and plain containers only. A pickle that names any other global
  (``os.system``, a class) is refused before anything of it runs. A missing, truncated or garbage file is a
  :class:`~torchbop.errors.UserError` naming the file, and, where the folder holds one, the newest checkpoint that
  does load.
* :class:`RelocatableCheckpoint` is Lightning's ``ModelCheckpoint`` for a run folder that may have been copied or
  moved since the checkpoint was written. Lightning stores absolute paths in the callback state (``dirpath``,
  ``best_model_path``, ...); on a changed ``dirpath`` it drops the best score but keeps ``best_model_path``, so a
  resumed copy would test the *original* folder's best weights and, at its next improvement, delete the original's
  ``best.ckpt``. Here every stored path under the old ``dirpath`` is rebased onto the new one first.

Example:
    >>> rebase_paths({"dirpath": "/a/run/checkpoints", "best_model_path": "/a/run/checkpoints/best.ckpt",
    ...               "best_k_models": {"/a/run/checkpoints/best.ckpt": 0.5}}, "/b/copy/checkpoints")
    {'dirpath': '/b/copy/checkpoints', 'best_model_path': '/b/copy/checkpoints/best.ckpt', 'best_k_models': {'/b/copy/checkpoints/best.ckpt': 0.5}}
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from torchbop.errors import UserError

__all__ = ["load_checkpoint", "newest_intact_checkpoint", "epochs_completed", "RelocatableCheckpoint",
           "rebase_paths"]

# What torch.load raises for a file that is not a complete torch checkpoint (truncated zip, random bytes, ...).
_CORRUPT = (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, KeyError,
            IndexError, TypeError, AttributeError, UnicodeDecodeError)


def _load(path: Path, map_location: Any) -> dict[str, Any]:
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"expected a dict, found a {type(checkpoint).__name__}")
    return checkpoint


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a bad file raises :class:`UserError` naming it and the fix.

    Raises:
        UserError: the file does not exist; it holds objects other than tensors and plain data (refused, nothing
            of it ran); or it is truncated or not a checkpoint (the message offers the newest intact checkpoint of
            the same folder, if there is one).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file. Give a run folder (its checkpoints/last.ckpt is used) "
                        "or the path of a .ckpt file.")
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
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if isinstance(error, pickle.UnpicklingError) and "WeightsUnpickler error:" in str(error):
        # torch's message is a paragraph suggesting weights_only=False; keep only what it found in the file
        lines = [line.strip() for line in str(error).split("WeightsUnpickler error:", 1)[1].splitlines()
                 if line.strip()]
    detail = lines[0] if lines else type(error).__name__
    alternative = newest_intact_checkpoint(path.parent, exclude=path)
    if alternative is None:
        fix = "No other intact checkpoint is in that folder; start the run again (with --overwrite to reuse it)."
    else:
        other, step = alternative
        fix = f"The newest intact checkpoint there is {other} (step {step}): resume from it with --resume {other}"
    return UserError(f"{path}: truncated or not a torch checkpoint ({type(error).__name__}: {detail}). {fix}")


def newest_intact_checkpoint(folder: str | os.PathLike[str], exclude: str | os.PathLike[str] | None = None
                             ) -> tuple[Path, int] | None:
    """The ``*.ckpt`` in ``folder`` (other than ``exclude``) with the highest global step that loads, and that step."""
    best: tuple[Path, int] | None = None
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for candidate in sorted(folder.glob("*.ckpt")):
        if exclude is not None and candidate.resolve() == Path(exclude).resolve():
            continue
        try:
            step = int(_load(candidate, "cpu").get("global_step", -1))
        except (*_CORRUPT, pickle.UnpicklingError):
            continue
        if best is None or step > best[1]:
            best = (candidate, step)
    return best


def epochs_completed(checkpoint: dict[str, Any]) -> int:
    """How many epochs had finished training when ``checkpoint`` was written (mid-epoch checkpoints count the
    epochs before the current one)."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    # Lightning writes the end-of-epoch checkpoint after counting the epoch as processed, before "completed".
    return int(progress.get("processed", checkpoint.get("epoch", 0)))


def rebase_paths(state: dict[str, Any], dirpath: str) -> dict[str, Any]:
    """``state`` with every path under its ``dirpath`` moved under ``dirpath`` (other entries unchanged)."""
    old = state.get("dirpath")
    if not old or old == dirpath:
        return state

    def move(value: Any) -> Any:
        if isinstance(value, str) and (value == old or value.startswith(old.rstrip(os.sep) + os.sep)):
            return dirpath + value[len(old):]
        if isinstance(value, dict):
            return {move(k): move(v) for k, v in value.items()}
        return value

    return {key: move(value) for key, value in state.items()}


class RelocatableCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that rebases the stored paths onto its own folder when a run folder was copied or moved.

    Its state key is ``ModelCheckpoint``'s, so checkpoints written with either class restore into the other.
    """

    def _generate_state_key(self, **kwargs: Any) -> str:
        return f"ModelCheckpoint{kwargs!r}"

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(rebase_paths(state_dict, str(self.dirpath)))
