"""Executing one planned run of an experiment under its lock: what every worker, job and the runner itself do.

:func:`claim_and_execute` follows :class:`~torchbop.experiments.run_lock.RunLock`'s protocol: take the run's lock,
look for its record (stored meanwhile by another process: use it), else execute the run in its scratch folder and
write its record atomically, then remove the lock. The caller gets one of four outcomes:

* ``"done"``: executed here, with its record;
* ``"elsewhere"``: another process stored it while this one waited for the lock, with that record;
* ``"failed"``: the experiment's ``execute`` raised, with the traceback (one failed run never takes the others down);
* ``"busy"``: locked by another process, only when not asked to wait for it.

The same function runs in the invocation's own process (``--jobs 1``), in spawned worker processes (``--jobs N``)
and in cluster jobs (:class:`~torchbop.experiments.cluster_job.RunJob`), so a run is locked, resumed and stored the
same way wherever it executes.
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from torchbop.experiments.run_clock import RunClock
from torchbop.experiments.run_lock import RunLock
from torchbop.experiments.spec import RunContext
from torchbop.experiments.store import environment, jsonable, read_json, time_stamp, write_json

__all__ = ["claim_and_execute", "execute_run", "init_worker", "quiet_lightning"]

Outcome = tuple[str, "dict[str, Any] | None", "str | None"]


def quiet_lightning() -> None:
    """Keep Lightning's loggers to errors in a process that executes many runs (the training loop on Fabric prints no
    banner of its own; a strategy or plugin that logs at INFO stays quiet too)."""
    for name in (
        "lightning.pytorch",
        "lightning.fabric",
        "lightning",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)


def init_worker(threads: int) -> None:
    """Set up a process that executes runs: ``threads`` torch threads, Lightning quiet."""
    torch.set_num_threads(threads)
    quiet_lightning()


def claim_and_execute(task: dict[str, Any], wait: bool) -> Outcome:
    """Execute ``task`` under its run's lock: ``(outcome, record, traceback)``, the outcome being ``"done"`` (run
    here), ``"elsewhere"`` (another process stored it meanwhile), ``"failed"`` or ``"busy"`` (locked by another
    process; only without ``wait``). ``task`` holds :func:`execute_run`'s keyword arguments."""
    record_path = Path(task["record_path"])
    with RunLock(record_path.with_suffix(".lock")) as lock:
        if not lock.acquire(wait=wait):
            return "busy", None, None
        if record_path.is_file():
            lock.done()
            return "elsewhere", read_json(record_path), None
        try:
            record = execute_run(**task)
        except Exception:  # one failed run must not take the others down
            return "failed", None, traceback.format_exc()
        lock.done()
        return "done", record, None


def execute_run(
    *,
    execute: Callable[[dict[str, Any], RunContext], dict[str, Any]],
    keep_run_dir: bool,
    experiment: str,
    label: str,
    params: dict,
    key: str,
    version: int,
    run_dir: str,
    record_path: str,
    data_dir: str | None,
    verbose: bool,
) -> dict[str, Any]:
    """Run ``execute(params, ctx)`` in ``run_dir`` (timed by its :class:`RunClock` across invocations), write the
    record to ``record_path`` and remove ``run_dir`` unless ``keep_run_dir``; returns the record."""
    ctx = RunContext(run_dir=Path(run_dir), data_dir=data_dir, verbose=verbose, label=label)
    if verbose:
        print(f"  [{label}] started", flush=True)
    started = time.perf_counter()
    with RunClock(Path(run_dir)) as clock:  # counts the time of earlier, killed invocations of this run too
        result = execute(params, ctx)
    record = {
        "experiment": experiment,
        "label": label,
        "key": key,
        "version": version,
        "params": jsonable(params),
        "result": jsonable(result),
        "wall_time_s": time.perf_counter() - started,
        "compute_time_s": clock.elapsed_s(),
        "cpu_time_s": clock.cpu_s(),
        "started_at": clock.started_at,
        "finished_at": time_stamp(),
        "environment": environment(),
    }
    write_json(Path(record_path), record)
    if not keep_run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints of finished runs are not needed
    return record
