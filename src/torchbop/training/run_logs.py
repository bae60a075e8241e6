"""A run folder's metric logs: one continuous record across kills and resumes.

Lightning's ``CSVLogger`` and ``TensorBoardLogger`` start a new ``version_N`` folder in every process, so a killed and
resumed run leaves its metrics split over several tables, with the steps the killed process logged after its last
checkpoint recorded twice (once by it, once by the resumed run that replays them). Here a run folder has one of each:

* ``csv/version_0/metrics.csv`` (:class:`RunCSVLogger`): Lightning's table (one row per ``log_metrics`` call, the
  columns sorted, ``step`` and ``epoch`` included), appended to as rows come (Lightning saves its loggers after every
  ``log_metrics``) and fsynced whenever a checkpoint is written, so every row logged before a checkpoint is on disk
  once the checkpoint is. New columns rewrite the file atomically (temp file + ``os.replace``), so a kill never leaves
  a half-written table; a trailing line cut short by a kill is dropped on resume.
* ``tb/version_0/`` (:class:`RunTensorBoardLogger`): every process adds its own events file to the same folder
  (Lightning's logger also opens a new one for ``trainer.test`` after ``fit``).

**Resuming.** A process starts logging at step ``S``: the ``global_step`` of the checkpoint it resumes from (0 for a
fresh run). Everything it logs has ``step >= S`` (Lightning logs a step's metrics at ``step = global_step - 1`` after
the optimizer step, and the epoch's rows at the step of its last batch). Rows with ``step >= S`` already in the table
were logged by a killed process after that checkpoint, for work the resumed run redoes; they are dropped (once, before
the first row is written), so the table equals the uninterrupted run's: same rows, same steps, same values, since
training resumes bit-exactly (and the module keeps its epoch metrics in the checkpoint,
see :mod:`torchbop.training.module`). TensorBoard gets what ``SummaryWriter(purge_step=S)`` writes: the new events file
starts with a session-start marker at step ``S``, and TensorBoard (its default ``purge_orphaned_data``) hides the older
files' events at steps ``>= S``, so it shows the uninterrupted run's curves. The events files themselves are not
rewritten: other readers see the killed process's events too.

:class:`ContinueLogs` tells the loggers ``S``: 0 at ``setup`` of a fit, then the checkpoint's ``global_step`` in
``on_load_checkpoint`` (Lightning restores callbacks before the loggers write anything). Without it, the CSV logger
takes ``S`` from the first row it is given.

Limits: rows are lost only when a process dies between writing a checkpoint and logging the rows of that same batch
(the step row and, at an epoch's end, the epoch's row come right after the checkpoint write). A log written by
another process into the same folder at the same time is not guarded against (the run folder rules forbid it).
"""

from __future__ import annotations

import csv
import io
import os
import time
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from torchbop.atomic_file import atomic_write

__all__ = ["RunCSVLogger", "RunTensorBoardLogger", "ContinueLogs", "run_loggers", "read_metrics"]

VERSION = "version_0"


class RunCSVLogger(Logger):
    """Metrics as one CSV table per run folder, ``<root>/<name>/version_0/metrics.csv`` (see the module docstring).

    Args:
        root: the run folder.
        name: the subfolder (``csv``).
    """

    FILE = "metrics.csv"

    def __init__(self, root: str | os.PathLike[str], name: str = "csv") -> None:
        super().__init__()
        self._root = Path(root)
        self._name = name
        self.path = self._root / name / VERSION / self.FILE
        self._keys: list[str] = []  # the header of the file on disk
        self._pending: list[dict[str, Any]] = []
        self._start_step: int | None = None
        self._continued = False  # the table on disk has been cut back to the start step
        self._last_step = 0

    # ------------------------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return VERSION

    @property
    def root_dir(self) -> str:
        return str(self._root / self._name)

    @property
    def save_dir(self) -> str:
        return str(self._root)

    @property
    def log_dir(self) -> str:
        return str(self.path.parent)

    # ------------------------------------------------------------------------------------------------------------
    def start_at(self, step: int) -> None:
        """This process logs from ``step`` on: rows of the table with ``step >= step`` are to be dropped.

        Has no effect once this logger has written (a later ``trainer.test`` does not cut the table again).
        """
        if not self._continued:
            self._start_step = int(step)

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Nothing: the run folder's ``config.yaml`` holds the configuration."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        step = self._last_step if step is None else int(step)
        self._last_step = step
        row = {key: _scalar(value) for key, value in metrics.items()}
        row["step"] = step
        self._pending.append(row)

    @rank_zero_only
    def save(self) -> None:
        """Write the pending rows (appended; the whole file is rewritten, atomically, when columns are new)."""
        if not self._pending:
            return
        if not self._continued:
            start = self._start_step if self._start_step is not None else min(r["step"] for r in self._pending)
            self._cut(start)
        rows, self._pending = self._pending, []
        new_keys = set().union(*rows) - set(self._keys)
        if new_keys or not self.path.is_file():
            old = _read_rows(self.path) if self.path.is_file() else []
            self._keys = sorted(set(self._keys) | new_keys)
            self._rewrite(old + rows)
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._keys).writerows(rows)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """A checkpoint was written: make every row logged so far durable too."""
        self.save()
        if self.path.is_file():
            with open(self.path, "ab") as f:
                os.fsync(f.fileno())

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()

    # ------------------------------------------------------------------------------------------------------------
    def _cut(self, start: int) -> None:
        """Keep the complete rows with ``step < start`` of the table on disk (once per process)."""
        self._continued = True
        if not self.path.is_file():
            return
        kept = [row for row in _read_rows(self.path) if _step(row) is not None and _step(row) < start]
        self._keys = sorted({key for row in kept for key, value in row.items() if value not in (None, "")})
        if kept:
            self._rewrite(kept)
        else:
            self.path.unlink()

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        with atomic_write(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._keys)
            writer.writeheader()
            writer.writerows({key: row.get(key, "") for key in self._keys} for row in rows)


class RunTensorBoardLogger(TensorBoardLogger):
    """Lightning's ``TensorBoardLogger`` writing every process into ``<root>/<name>/version_0`` (see the module
    docstring): a resumed process marks, before its first scalar, the step from which TensorBoard is to forget the
    older files' events.

    The marker is what ``SummaryWriter(purge_step=S)`` writes (a ``SessionLog.START`` event at step ``S``). Lightning
    creates the writer before any callback hook runs, so the marker is written here, at the first write after
    :meth:`start_at`, instead.
    """

    def __init__(self, root: str | os.PathLike[str], name: str = "tb") -> None:
        super().__init__(save_dir=root, name=name, version=VERSION)
        self._start_step: int | None = None
        self._marked = False

    def start_at(self, step: int) -> None:
        """This process logs from ``step`` on (no effect once it has written)."""
        if not self._marked:
            self._start_step = int(step)

    def _mark_start(self) -> None:
        if self._marked or self._start_step is None:
            return
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        self._marked = True
        self.experiment._get_file_writer().add_event(
            Event(wall_time=time.time(), step=self._start_step, session_log=SessionLog(status=SessionLog.START)))

    @rank_zero_only
    def log_hyperparams(self, params: Any, metrics: Any = None, step: int | None = None) -> None:
        self._mark_start()
        super().log_hyperparams(params, metrics, step)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._mark_start()
        super().log_metrics(metrics, step)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        super().after_save_checkpoint(checkpoint_callback)
        if self._experiment is not None:
            self._experiment.flush()


class ContinueLogs(L.Callback):
    """Tells the run loggers the step this process starts logging at (0, or the resumed checkpoint's global step)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._start(trainer, 0)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._start(trainer, int(checkpoint["global_step"]))

    @staticmethod
    def _start(trainer: L.Trainer, step: int) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, (RunCSVLogger, RunTensorBoardLogger)):
                logger.start_at(step)


def run_loggers(root: str | os.PathLike[str]) -> list[Logger]:
    """TensorBoard and CSV loggers of the run folder ``root``; pass :class:`ContinueLogs` among the callbacks."""
    return [RunTensorBoardLogger(root), RunCSVLogger(root)]


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a metrics CSV as dicts of strings, empty cells left out.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "metrics.csv"
        >>> _ = p.write_text("epoch,loss,step\\r\\n0,0.5,0\\r\\n0,,1\\r\\n")
        >>> read_metrics(p)
        [{'epoch': '0', 'loss': '0.5', 'step': '0'}, {'epoch': '0', 'step': '1'}]
    """
    return [{k: v for k, v in row.items() if v not in (None, "")} for row in _read_rows(Path(path))]


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The complete rows of a CSV file (a last line without its line end, cut short by a kill, is left out)."""
    with open(path, newline="") as f:
        text = f.read()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return list(csv.DictReader(io.StringIO(text, newline="")))


def _step(row: dict[str, Any]) -> int | None:
    try:
        return int(row["step"])
    except (KeyError, TypeError, ValueError):
        return None


def _scalar(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
