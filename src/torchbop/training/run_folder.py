"""The run folder: which folder a run writes into, when it may write there, and its summary.

Rules (they protect one run's results from another run):

* A new run writes into ``config.out`` (default ``runs/<name>``). If that folder already holds a run
  (``config.yaml``, ``summary.json`` or ``checkpoints/``), the run is refused: continue it with ``--resume``, choose
  another ``--out``, or pass ``--overwrite``, which removes that run's files (only those: :data:`RUN_FILES`) first.
* A resumed run continues in the folder it is resumed from: ``--resume DIR`` writes into ``DIR``, and
  ``--resume DIR/checkpoints/X.ckpt`` into ``DIR``, wherever the run was first started and whatever the current
  working directory. ``--out`` beside ``--resume`` must name that same folder. A loose checkpoint file (not inside a
  run's ``checkpoints/``) continues in ``--out``, which must not hold another run.
* A run that has finished (every epoch trained, or stopped early) and has its ``summary.json`` is not run again by
  ``--resume``: nothing is written, and :func:`finished_summary` returns its summary.
* ``summary.json`` is strict JSON (a missing number is ``null``, never ``NaN``), written atomically.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchbop.atomic_file import atomic_write
from torchbop.errors import UserError
from torchbop.training.checkpoints import checkpoint_of, load_checkpoint
from torchbop.training.config import TrainConfig

__all__ = [
    "RUN_FILES",
    "RunFolder",
    "checkpoint_of",
    "clear_run_files",
    "resolve_run_folder",
    "finished_summary",
    "write_summary",
    "strict_json",
    "format_summary",
]

#: What a run writes into its folder; ``--overwrite`` removes exactly these.
RUN_FILES = ("config.yaml", "summary.json", "checkpoints", "csv", "tb")


@dataclass(frozen=True)
class RunFolder:
    """Where a run writes (``path``) and, when it is resumed, the checkpoint it continues from."""

    path: Path
    checkpoint: Path | None = None

    def holds_a_run(self) -> bool:
        """True when the folder has the files of a run (a config, a summary or checkpoints)."""
        return any((self.path / name).exists() for name in ("config.yaml", "summary.json", "checkpoints"))


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def resolve_run_folder(config: TrainConfig, *, overwrite: bool = False, claim: bool = True) -> RunFolder:
    """The folder ``config``'s run writes into, checked against the rules of the module docstring.

    Touches nothing on disk. Raises :class:`UserError` when the run would write into another run's folder, when
    ``--out`` and ``--resume`` disagree, or when the checkpoint to resume from does not exist. ``claim=False`` skips
    the check that a new run's folder is free: the other processes of a multi-process run, which start after the
    first one has claimed the folder and written its config there.
    """
    if config.resume is None:
        folder = RunFolder(config.out_dir)
        if claim and folder.holds_a_run() and not overwrite:
            raise UserError(
                f"{folder.path} already holds a run ({', '.join(n for n in RUN_FILES if (folder.path / n).exists())})."
                f" Continue it with --resume {folder.path}, choose another folder with --out, or pass --overwrite "
                "to replace it."
            )
        return folder
    checkpoint, home = checkpoint_of(config.resume)
    if not checkpoint.is_file():
        raise UserError(
            f"{checkpoint}: no checkpoint to resume from. Give a run folder that holds "
            "checkpoints/last.ckpt, or the path of a .ckpt file."
        )
    if home is not None:
        if config.out is not None and not _same(Path(config.out), home):
            raise UserError(
                f"--out {config.out} differs from the folder being resumed ({home}): a resumed run "
                f"continues in its own folder. Drop --out, or copy {home} to {config.out} and resume "
                "the copy."
            )
        return RunFolder(home, checkpoint)
    if config.out is None:
        raise UserError(
            f"{checkpoint} is not inside a run folder's checkpoints/: give --out, the folder the "
            "continued run writes into."
        )
    folder = RunFolder(Path(config.out), checkpoint)
    if folder.holds_a_run():
        raise UserError(f"{folder.path} already holds a run; give --out a new folder to continue {checkpoint} in.")
    return folder


def clear_run_files(folder: Path) -> None:
    """Remove what a previous run wrote into ``folder`` (:data:`RUN_FILES`), nothing else."""
    for name in RUN_FILES:
        target = folder / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def finished_summary(config: TrainConfig, folder: RunFolder) -> dict[str, Any] | None:
    """The stored summary of a resumed run that has nothing left to do, else None.

    Finished means: its ``summary.json`` exists, and the checkpoint has trained ``config.epochs`` epochs or stopped
    early (and early stopping is still on).
    """
    if folder.checkpoint is None or not (folder.path / "summary.json").is_file():
        return None
    checkpoint = load_checkpoint(folder.checkpoint)
    stopped = bool(checkpoint.get("stopped_early")) and config.early_stop_flip_epochs is not None
    done = int(checkpoint.get("epochs_completed", 0)) >= config.epochs or stopped
    if not done:
        return None
    try:
        summary = json.loads((folder.path / "summary.json").read_text())
    except (OSError, ValueError) as error:
        raise UserError(
            f"{folder.path / 'summary.json'}: unreadable ({error}); the run has finished training. "
            "Delete the file and resume again to recompute it."
        ) from error
    if summary.get("global_step") != checkpoint.get("global_step"):
        return None  # the summary belongs to an earlier stage of the run
    return summary


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None and tuples by lists, as strict JSON requires.

    Example:
        >>> strict_json({"acc": float("nan"), "steps": (1, 2.5), "inf": float("inf")})
        {'acc': None, 'steps': [1, 2.5], 'inf': None}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_summary(path: Path, result: dict[str, Any]) -> None:
    """Write ``result`` as strict JSON to ``path`` atomically (a temporary file renamed over it)."""
    text = json.dumps(strict_json(result), indent=2, allow_nan=False) + "\n"
    with atomic_write(path, "w") as f:
        f.write(text)


def format_summary(result: dict[str, Any]) -> str:
    """A few human-readable lines about a finished run."""
    where = "the test set" if result["protocol"] == "original" else "a held-out validation split"
    weights = "last weights" if result["test_weights"] == "last" else "lowest-validation-loss weights"
    note = ""
    if "precision" in result:  # absent from summaries written before it was recorded
        note = f", precision {result['precision']}" + (" (auto)" if result.get("precision_requested") == "auto" else "")
        note += f", {result['memory_format']}" if result.get("memory_format") == "channels_last" else ""
    return "\n".join(
        [
            f"{result['name']}: test accuracy {result['test_acc']:.4f} (loss {result['test_loss']:.4f}) on "
            f"{result['dataset']}, protocol {result['protocol']} (validated on {where}; tested with the {weights})",
            f"  data: {result['data']}",
            f"  {result['epochs']} epochs, {result['global_step']} steps"
            + (" (stopped early: no flips)" if result["stopped_early"] else "")
            + f", {result['wall_time_s']:.1f} s wall, {result['train_images_per_s']:.0f} training images/s"
            f" on {result['device']} x{result['world_size']}"
            + note
            + (
                f", batch norm recalibrated {result['bn_recalibrations']}x ({result['bn_recalibration_s']:.1f} s)"
                if result.get("bn_recalibrations")
                else ""
            ),
            f"  checkpoints: {result['last_checkpoint']} (last), {result['best_checkpoint']} (best)",
        ]
    )
