"""Where the unfinished runs of an experiment stand: read from their last checkpoints, for reports of long profiles.

A training run (``common.train_run``) checkpoints into ``runs/<key>/checkpoints/last.ckpt`` at every epoch end, with
its :class:`~torchbop.training.history.History` (the epochs so far) and its config (how many epochs it has to do).
:func:`runs_in_progress` turns the manifest's runs that have no stored record into one row each: training (epochs
done of the total, the last validation accuracy, the time spent on it so far by every invocation: its
:class:`~torchbop.experiments.run_clock.RunClock`) or not started. Checkpoints are read with ``weights_only=True``;
an unreadable one counts as not started (the run starts afresh the next time, see ``common.train_run``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchbop.errors import UserError
from torchbop.experiments.run_clock import time_spent
from torchbop.training.checkpoints import load_checkpoint, observer_state, stored_config

__all__ = ["runs_in_progress", "progress_table"]


def runs_in_progress(exp_dir: Path, manifest: dict[str, Any], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per planned run without a stored record: ``label``, ``epochs_done``, ``epochs`` (None when the
    run has no readable checkpoint), ``val_acc`` (the last epoch's, when it validated) and ``time_s`` (spent on the
    run so far, None when unknown)."""
    stored = {record["key"] for record in records}
    rows = []
    for run in manifest["runs"]:
        if run["key"] in stored:
            continue
        run_dir = Path(exp_dir) / "runs" / run["key"]
        row: dict[str, Any] = {
            "label": run["label"],
            "epochs_done": 0,
            "epochs": None,
            "val_acc": None,
            "time_s": time_spent(run_dir),
        }
        path = run_dir / "checkpoints" / "last.ckpt"
        if path.is_file():
            try:
                checkpoint = load_checkpoint(path)
            except UserError:
                checkpoint = {}
            history = observer_state(checkpoint, "History") or {}
            config = stored_config(checkpoint, path) if history else {}
            epochs = history.get("epochs", [])
            if epochs:
                row.update(epochs_done=len(epochs), epochs=config.get("epochs"), val_acc=epochs[-1].get("val_acc"))
        rows.append(row)
    return rows


def progress_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines for :func:`runs_in_progress`'s rows (none when every run is stored); the time left assumes
    the pace so far (the time so far over the epochs done), which counts killed attempts and sharing the cores."""
    if not rows:
        return []
    lines = [
        "Runs not stored yet (from their last checkpoints):",
        "",
        "| run | progress | last validation accuracy | time so far | time left at its pace so far |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        spent = "-" if row.get("time_s") is None else f"{row['time_s'] / 60:.1f} min"
        if row["epochs_done"]:
            total = f" of {row['epochs']}" if row["epochs"] else ""
            acc = "-" if row["val_acc"] is None else f"{row['val_acc']:.4f}"
            left = "-"
            if row["epochs"] and row.get("time_s") is not None:  # the time so far also counts killed attempts
                left = f"{row['time_s'] / row['epochs_done'] * (row['epochs'] - row['epochs_done']) / 60:.1f} min"
            progress = f"training: {row['epochs_done']}{total} epochs"
            lines.append(f"| {row['label']} | {progress} | {acc} | {spent} | {left} |")
        else:
            lines.append(f"| {row['label']} | not started (or no epoch finished) | - | {spent} | - |")
    return lines
