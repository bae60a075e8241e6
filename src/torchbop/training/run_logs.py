"""A run folder's metric logs, one continuous record across kills and resumes.

* ``csv/version_0/metrics.csv`` (:class:`RunCSVLogger`): one row per logged step or epoch (the columns sorted,
  ``step`` and ``epoch`` included), appended as rows come and fsynced before every checkpoint, so every row logged
  before a checkpoint is on disk once the checkpoint is. New columns rewrite the file atomically; a trailing line cut
  short by a kill is dropped.
* ``tb/version_0/`` (:class:`RunLogs`): TensorBoard's events, one file per process.

**Resuming.** A process starts logging at step ``S``, the ``global_step`` of the checkpoint it resumes from (0 for a
fresh run), and everything it logs has ``step >= S`` (a step's row is logged at ``step = global_step - 1`` after the
optimizer step; an epoch's row at the step of its last batch). Rows with ``step >= S`` already in the table were
logged by a killed process after that checkpoint, for work the resumed run redoes; they are dropped once, so the table
equals the uninterrupted run's. TensorBoard gets ``SummaryWriter(purge_step=S)``: its new file starts with a
session-start marker at ``S``, and TensorBoard hides the older files' events at steps ``>= S``.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from torchbop.atomic_file import atomic_write

__all__ = ["RunCSVLogger", "RunLogs", "read_metrics"]

VERSION = "version_0"


class RunCSVLogger:
    """Metrics as one CSV table per run folder, ``<root>/<name>/version_0/metrics.csv``."""

    def __init__(self, root: str | os.PathLike[str], name: str = "csv") -> None:
        self.path = Path(root) / name / VERSION / "metrics.csv"
        self._keys: list[str] = []  # the header of the file on disk
        self._pending: list[dict[str, Any]] = []
        self._start_step: int | None = None
        self._continued = False  # the table on disk has been cut back to the start step

    def start_at(self, step: int) -> None:
        """This process logs from ``step`` on: rows with ``step >= step`` are dropped (no effect once it wrote)."""
        if not self._continued:
            self._start_step = int(step)

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        self._pending.append({**{k: _scalar(v) for k, v in metrics.items()}, "step": int(step)})

    def save(self) -> None:
        """Write the pending rows (appended; the whole file is rewritten, atomically, when columns are new)."""
        if not self._pending:
            return
        if not self._continued:
            self._cut(self._start_step if self._start_step is not None else min(r["step"] for r in self._pending))
        rows, self._pending = self._pending, []
        new_keys = set().union(*rows) - set(self._keys)
        if new_keys or not self.path.is_file():
            old = _read_rows(self.path) if self.path.is_file() else []
            self._keys = sorted(set(self._keys) | new_keys)
            self._rewrite(old + rows)
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._keys).writerows(rows)

    def sync(self) -> None:
        """Write the pending rows and make them durable (before a checkpoint)."""
        self.save()
        if self.path.is_file():
            with open(self.path, "ab") as f:
                os.fsync(f.fileno())

    def finalize(self, status: str = "success") -> None:
        self.save()

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


class RunLogs:
    """The CSV table and the TensorBoard events of the run folder ``root``, from step ``start`` on (rank 0 only)."""

    def __init__(self, root: str | os.PathLike[str], start: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.csv = RunCSVLogger(root)
        self.csv.start_at(start)
        self.tb = SummaryWriter(str(Path(root) / "tb" / VERSION), purge_step=start if start > 0 else None)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """One row of numbers (tensors are read here, a host sync) at ``step``."""
        row = {k: _scalar(v) for k, v in metrics.items()}
        self.csv.log_metrics(row, step)
        self.csv.save()  # appended as it comes (durable at the next checkpoint)
        for key, value in row.items():
            if key != "epoch":
                self.tb.add_scalar(key, value, step)

    def sync(self) -> None:
        self.csv.sync()
        self.tb.flush()

    def close(self) -> None:
        self.csv.finalize()
        self.tb.close()


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
